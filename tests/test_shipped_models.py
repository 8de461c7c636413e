"""Golden: ``compress`` of every shipped model gives the committed ``.pruned.onnx``.

The commands are the last lines of ``models/build.sh``. Same parameters and MACs, and
outputs within 1e-6 of the committed pruned model on the whole calibration set — so a
change to the pass that changes what it removes, or how it rewrites, shows up here and
the shipped files (and the README's figures) are regenerated with it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dsp_deploy.compress import compress
from dsp_deploy.cost import model_cost
from dsp_deploy.inference import run_model
from dsp_deploy.io import load_calibration, load_model

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = {
    "lite_gunpoint": "lite_gunpoint",
    "inception_gunpoint": "inception_gunpoint",
    "litetime_gunpoint": "litetime_gunpoint",
    "inceptiontime_gunpoint": "inception_gunpoint",
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_compress_reproduces_the_committed_pruned_model(name: str) -> None:
    model = load_model(ROOT / "models" / f"{name}.onnx")
    committed = load_model(ROOT / "models" / f"{name}.pruned.onnx")
    calibration = load_calibration(ROOT / "calibration" / f"{SHIPPED[name]}.npz", model)
    result = compress(model, calibration)
    assert result.verified
    length = next(iter(calibration.inputs.values())).shape[-1]
    ours, theirs = model_cost(result.model, length=length), model_cost(committed, length=length)
    assert (ours.params, ours.macs) == (theirs.params, theirs.macs)
    for a, b in zip(
        run_model(result.model, calibration.inputs),
        run_model(committed, calibration.inputs),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)

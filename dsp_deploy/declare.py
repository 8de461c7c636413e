"""What a user sees and sets of a model's metadata: ``describe`` and ``declare``.

``describe(path)`` is what every tool will do with the model: its ``ModelSignature``
(``dsp_deploy.signature``), the output kind probed as the runtime probes it, each
value's origin in ``origins``. ``declare(path, out, classes=, normalisation=, output=,
length=)`` writes a copy of the model carrying those keys (``dsp_deploy.metadata``;
``out`` must end in ``.onnx`` and is never ``path``; the input is never changed). Before
anything is written the copy must read back (the keys agree with the graph: as many
classes as output columns, a length equal to a fixed input dim) and run on onnxruntime on
a probe input, and a declared output kind must match what the probe shows (rows ≥ 0
summing to 1 are probabilities); then it is saved atomically (``io.save_model``).

Apart from ``metadata`` (the keys, read and written on a ``ModelProto``) because io and
the signature read those keys: ``metadata`` imports nothing of the package.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dsp_deploy.metadata import CLASSES, INPUT_LENGTH, NORMALISATION, OUTPUT, write_metadata

if TYPE_CHECKING:
    import onnx

    from dsp_deploy.signature import ModelSignature

__all__ = ["declare", "describe"]


def describe(path: str | os.PathLike) -> ModelSignature:
    """What the runtime, eval, ensemble and the example app will do with the model at ``path``."""
    from dsp_deploy.io import load_model

    return _probed(load_model(path), f"model {path}")


def declare(
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    classes: Sequence[str] | None = None,
    normalisation: str | None = None,
    output: str | None = None,
    length: int | None = None,
) -> ModelSignature:
    """Write a copy of ``path`` to ``out`` carrying the given keys; the copy's signature."""
    from dsp_deploy.errors import OptionError
    from dsp_deploy.io import load_model, save_model

    target = Path(out)
    if target.suffix != ".onnx":
        raise OptionError(f"output {target} must end in .onnx; got {target.suffix or 'none'}")
    values = _values(classes, normalisation, output, length)
    if not values:
        raise OptionError(
            "nothing to declare: give --classes, --normalisation, --output or --length"
        )
    model = load_model(path)
    write_metadata(model, values)
    sig = _probed(model, f"model {path} with {', '.join(values)}", check=output)
    save_model(model, target, inputs=[path])
    return sig


def _values(
    classes: Sequence[str] | None, normalisation: str | None, output: str | None, length: int | None
) -> dict[str, str]:
    """The metadata entries for the given choices, each checked; OptionError otherwise."""
    from dsp_deploy.errors import OptionError
    from dsp_deploy.signature import OUTPUT_KINDS, normalisation_name

    values: dict[str, str] = {}
    if classes is not None:
        names = [str(c).strip() for c in classes]
        if not names or not all(names) or len(set(names)) != len(names):
            raise OptionError(f"class names must be distinct and non-empty; got {names}")
        values[CLASSES] = json.dumps(names)
    if normalisation is not None:
        values[NORMALISATION] = normalisation_name(normalisation)
    if output is not None:
        if output not in OUTPUT_KINDS:
            raise OptionError(f"output must be probabilities or logits; got {output!r}")
        values[OUTPUT] = output
    if length is not None:
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise OptionError(f"length must be a whole number ≥ 1; got {length!r}")
        values[INPUT_LENGTH] = str(length)
    return values


def _probed(model: onnx.ModelProto, label: str, check: str | None = None) -> ModelSignature:
    """The signature, after one run on a probe input; with ``check``, the probe agrees."""
    from dataclasses import replace

    from dsp_deploy import inference
    from dsp_deploy import signature as contract
    from dsp_deploy.errors import OptionError

    sig = contract.from_model(model, label)
    session = inference.session(model, label=label)
    seen: list[np.ndarray] = []

    def run(x: np.ndarray) -> np.ndarray:
        seen.append(session.run([sig.output_name], {sig.input_name: x})[0])
        return seen[-1]

    # A declared kind is probed too: the copy must run, and be what it says it is.
    probe = replace(sig, origins=(*sig.origins, ("output_kind", contract.DEFAULT)))
    found = contract.detect_output(probe, run, label)
    if check is not None and seen and found.output_kind != check:
        raise OptionError(
            f"{label}: declared --output {check}, but on a probe input its rows "
            f"{_rows_text(seen[-1])}: it outputs {found.output_kind}"
        )
    return found if sig.origin("output_kind") == contract.DEFAULT else sig


def _rows_text(scores: np.ndarray) -> str:
    low, high, sums = scores.min(), scores.max(), scores.sum(axis=1)
    return f"range {low:.3g} to {high:.3g} and sum to {sums.min():.3g}…{sums.max():.3g}"

"""The paper's rule scores each channel against the mean energy of its own channel group.

Regression: pooled over a whole concatenated tensor, LITE's loud hand-crafted channels
put every learned channel under the instance mean, and the rule removed all 96 of them
(shipped GunPoint model: accuracy 0.98 → 0.51). Oracle: the rule recomputed in numpy
from the tap tensor, group by group, as PAPER.md §3 states it.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphs as G
import pytest

from dsp_deploy.compress import compress
from dsp_deploy.compress.calibrate import _active, with_outputs
from dsp_deploy.inference import run_model
from dsp_deploy.io import Calibration

# hybrid_sources' tap r: positions 0–2 come from conv ca (node Conv_0), 3–4 from cb
# (Conv_1), 5, 6, 7 from the fixed filters hy0..hy2 (Conv_2..Conv_4)
SEGMENTS = {"Conv_0": [0, 1, 2], "Conv_1": [3, 4], "Conv_2": [5], "Conv_3": [6], "Conv_4": [7]}


def _paper_counts(tap: np.ndarray, segments: list[list[int]]) -> np.ndarray:
    """n_c: instances where channel c's L2 energy exceeds the mean over its segment's
    non-zero channels (sum / (nnz + 1)), straight from PAPER.md §3."""
    energy = np.sqrt((tap.astype(np.float64) ** 2).sum(axis=2))
    counts = np.zeros(tap.shape[1], dtype=np.int64)
    for seg in segments:
        part = energy[:, seg]
        mu = part.sum(axis=1) / ((part > 0).sum(axis=1) + 1)
        counts[seg] = (part > mu[:, None]).sum(axis=0)
    return counts


def test_active_counts_each_segment_against_its_own_mean() -> None:
    square = np.array([[1.0, 4.0, 10_000.0], [4.0, 1.0, 10_000.0]])  # energies 1, 2, 100
    assert _active(square).tolist() == [0, 0, 2]  # pooled: the loud channel wins alone
    assert _active(square, np.array([0, 0, 1])).tolist() == [1, 1, 2]


def _loud_hybrid_model() -> onnx.ModelProto:
    model = G.hybrid_sources(dead=())
    scale = next(t for t in model.graph.initializer if t.name == "bn_s")
    values = onnx.numpy_helper.to_array(scale).copy()
    values[5:] = 200.0  # the fixed filters dwarf the learned branches
    scale.CopyFrom(onnx.numpy_helper.from_array(values, "bn_s"))
    return model


@pytest.mark.parametrize("min_count", [0, 3, 10])
def test_dsp_keeps_what_the_paper_rule_keeps_per_group(min_count: int) -> None:
    model = _loud_hybrid_model()
    x = G.inputs(64, seed=3)
    (tap,) = run_model(with_outputs(model, ["r"]), {"x": x})[1:]
    expected = _paper_counts(tap, list(SEGMENTS.values())) > min_count
    pooled = _paper_counts(tap, [list(range(8))]) > min_count
    assert expected[:5].any() and not pooled[:5].any()  # the case this test is about

    result = compress(
        model, Calibration({"x": x}, None), criterion="dsp", min_count=min_count, holdout=0.0
    )
    kept = {r.name: r.channels[1] for r in result.layers}
    assert {s: kept[s] for s in SEGMENTS} == {
        s: int(expected[p].sum()) for s, p in SEGMENTS.items()
    }


def test_gram_matches_the_row_formula() -> None:
    from dsp_deploy.compress.calibrate import _Running

    x = np.random.default_rng(0).standard_normal((5, 3, 7)).astype(np.float32)
    running = _Running()
    running.update_gram(x[:2])
    running.update_gram(x[2:])
    rows = np.moveaxis(x.astype(np.float64), 1, -1).reshape(-1, 3)
    rows = np.concatenate([rows, np.ones((len(rows), 1))], axis=1)
    np.testing.assert_allclose(running.gram, rows.T @ rows, rtol=1e-12)
    assert running.rows == 35


def test_only_the_rules_lstsq_pays_for_gram_matrices(monkeypatch) -> None:
    # Regression: `dead` gathered them too once lstsq became the default compensation,
    # which made compress 8x slower than inference on the shipped InceptionTime ensemble.
    from dsp_deploy.compress import calibrate

    calls: list[int] = []
    real = calibrate._Running.update_gram
    monkeypatch.setattr(
        calibrate._Running, "update_gram", lambda self, x: calls.append(1) or real(self, x)
    )
    model, x = _loud_hybrid_model(), Calibration({"x": G.inputs(32, seed=3)}, None)
    compress(model, x, criterion="dead")
    compress(model, x, criterion="dsp", compensation="mean")
    assert calls == []
    compress(model, x, criterion="dsp", compensation="lstsq")
    assert calls

"""Lossless means every calibration sample; the k-fold report says how far it generalises."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsp_deploy.compress.calibrate import Probe, merge_stats
from dsp_deploy.compress.folds import fold_indices
from dsp_deploy.compress.pipeline import compress
from dsp_deploy.inference import run_model
from dsp_deploy.io import Calibration

sys.path.insert(0, str(Path(__file__).parent))
import onnx_graphs as G  # noqa: E402

SPIKE = 10.0


def rare_channel_model():
    """``chain`` whose first conv's channel 0 is Relu(x[t] − 6): zero unless x spikes past 6.

    Standard-normal series never reach 6 in this test's 40 × 32 values; one spiked
    sample wakes the channel, on that sample only.
    """
    return _rare_chain(["r", "d", "l", "l"], 0)


def spiked_inputs(n: int, spiked: tuple[int, ...]) -> np.ndarray:
    x = G.inputs(n)
    assert np.abs(x).max() < 6  # only the planted spikes wake channel 0
    for i in spiked:
        x[i, 0, 10] = SPIKE
    return x


@pytest.mark.parametrize("spiked", [(0,), (7, 23)])
@pytest.mark.parametrize("holdout", [0.0, 0.2, 0.5])
def test_a_channel_alive_on_one_or_two_samples_is_never_removed(spiked, holdout) -> None:
    # Before: the channel was decided on 80% of the samples; when every spike landed in
    # the held-out 20% it went, and the model was written off by up to ~1e-2.
    model, x = rare_channel_model(), spiked_inputs(40, spiked)
    result = compress(model, Calibration({"x": x}, None), holdout=holdout)
    assert result.verified and result.decision.samples == 40 and result.holdout is None
    assert dict((r.name, r.channels) for r in result.layers)["Conv_0"] == (4, 3)  # only c1[1]
    fresh = spiked_inputs(25, (3,))
    np.testing.assert_allclose(
        run_model(result.model, {"x": fresh})[0], run_model(model, {"x": fresh})[0], atol=1e-6
    )


def test_the_fold_report_sees_a_channel_that_wakes_on_one_fold_only() -> None:
    model, x = rare_channel_model(), spiked_inputs(40, (5,))
    result = compress(model, Calibration({"x": x}, None), folds=4)
    report = result.folds
    assert report is not None and report.folds == 4 and sum(report.samples) == 40
    # deciding without the spiked sample's fold removes channel 0: it wakes there only
    assert sorted(report.woken_channels) == [0, 0, 0, 1]
    woken = report.woken_channels.index(1)
    assert report.max_abs_diff[woken] > 1e-3 and not report.within_tolerance[woken]
    others = [d for j, d in enumerate(report.max_abs_diff) if j != woken]
    assert max(others) <= 1e-5
    assert "would remove 1 channel that wakes on it" in report.summary()


def test_no_fold_report_when_off_or_lossy() -> None:
    model, x = rare_channel_model(), Calibration({"x": spiked_inputs(40, (5,))}, None)
    assert compress(model, x, folds=0).folds is None
    lossy = compress(model, x, criterion="dsp", compensation="mean")
    assert lossy.folds is None and lossy.holdout is not None and lossy.holdout.samples == 40
    assert (lossy.gate.judged, lossy.gate.folds) == ("kfold", 5)  # few series: held out over folds


def test_fold_indices_partition_the_samples() -> None:
    parts = fold_indices(23, 5, seed=3)
    assert [len(p) for p in parts] in ([5, 5, 5, 4, 4],)
    assert sorted(np.concatenate(parts).tolist()) == list(range(23))
    assert len(fold_indices(3, 5)) == 3  # never an empty fold


def test_merged_fold_statistics_equal_one_pass_over_all_samples() -> None:
    model, x = G.lite_like(), G.inputs(37)
    tensors = [n.output[0] for n in model.graph.node if n.op_type == "Relu"]
    assert len(tensors) >= 2
    probe = Probe(model, tensors)
    whole = probe.statistics({"x": x}, tensors, batch_size=8)
    parts = [probe.statistics({"x": x[i]}, tensors, batch_size=8) for i in fold_indices(37, 4)]
    merged = merge_stats(parts)
    assert merged.samples == 37
    for name in tensors:
        a, b = whole.tensors[name], merged.tensors[name]
        assert a.count == b.count and np.array_equal(a.active, b.active)
        for field in ("max_abs", "minimum", "maximum", "mean", "energy"):
            np.testing.assert_allclose(getattr(b, field), getattr(a, field), rtol=1e-10, atol=0)


@st.composite
def rare_nets(draw):
    """A chain whose first conv has planted dead channels, rare channels that only a
    spike past 6 wakes, and live ones; 1–2 of the n calibration samples spike, on the
    input position each rare channel reads; float32 or float16 throughout."""
    width = draw(st.integers(3, 6))
    roles = draw(st.lists(st.sampled_from("dlr"), min_size=width, max_size=width))
    n = draw(st.integers(10, 60))
    spiked = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=2, unique=True))
    holdout = draw(st.sampled_from([0.0, 0.2, 0.5]))
    dtype = draw(st.sampled_from([np.float32, np.float16]))
    return roles, n, tuple(spiked), holdout, dtype, draw(st.integers(0, 2**16))


def _rare_chain(roles: list[str], seed: int):
    """``chain`` with one first-conv channel per role: d dead, r rare (Relu(x[t] − 6)),
    l live."""
    w = G.chain_weights(len(roles), [c for c, r in enumerate(roles) if r == "d"], (), seed)
    for c, role in enumerate(roles):
        if role == "r":
            w.values["c1_w"][c] = [[0.0, 1.0, 0.0]]
            w.values["c1_b"][c] = -6.0
    return G.build(G.CHAIN + G.HEAD, w.values)


@settings(max_examples=40, deadline=None)
@given(rare_nets())
def test_dead_never_removes_a_channel_alive_on_one_or_two_samples(net) -> None:
    roles, n, spiked, holdout, dtype, seed = net
    model = G.as_float(_rare_chain(roles, seed), dtype)
    x = spiked_inputs(n, spiked).astype(dtype)
    result = compress(model, Calibration({"x": x}, None), holdout=holdout, folds=0)
    assert result.verified and result.decision.samples == n
    kept = dict((r.name, r.channels) for r in result.layers)["Conv_0"][1]
    # every rare channel stays; of the planted dead ones all go, unless that empties
    # the stage (then the strongest unit stays: 1 channel)
    assert kept == max(len(roles) - roles.count("d"), 1)
    atol = 1e-5 if dtype == np.float32 else 1e-3  # float16: its own rounding
    np.testing.assert_allclose(
        run_model(result.model, {"x": x})[0], run_model(model, {"x": x})[0], atol=atol
    )


@pytest.mark.parametrize("dead", [(), (1,)])
def test_the_written_model_runs_over_the_calibration_set_only_when_it_changed(
    dead, monkeypatch
) -> None:
    # An unchanged model (nothing dead) is written byte for byte: its outputs are the
    # plain session's, so compress runs the original over the samples, and the random
    # report, and nothing else; a pruned model is run too, and both reproduce exactly.
    import dsp_deploy.compress.pipeline as pipeline

    runs = []

    def counted(model, inputs, **kw):
        runs.append(len(next(iter(inputs.values()))))
        return run_model(model, inputs, **kw)

    monkeypatch.setattr(pipeline, "run_model", counted)
    model = G.chain(dead, ())
    x = G.inputs(24)
    result = compress(model, Calibration({"x": x}, None), folds=0)
    assert result.changed == bool(dead)
    assert runs == ([24, 24, 16] if dead else [24, 16])
    assert result.decision.max_abs_diff <= 1e-6 and result.verified
    if not dead:
        assert result.model.graph == model.graph  # the bytes that were not run again

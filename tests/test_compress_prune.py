"""prune is pure; pruned graphs are valid, keep their interface, and agree across runtimes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.reference
import pytest

from dsp_deploy import metadata
from dsp_deploy.compress.graph import normalise
from dsp_deploy.compress.groups import find_groups
from dsp_deploy.compress.pipeline import compress
from dsp_deploy.compress.plan import empty_plan
from dsp_deploy.compress.prune import prune
from dsp_deploy.compress.verify import compare
from dsp_deploy.inference import run_model
from dsp_deploy.io import Calibration

sys.path.insert(0, str(Path(__file__).parent))
import onnx_graphs as G  # noqa: E402


def calibration(n: int = 120, labels: np.ndarray | None = None) -> Calibration:
    return Calibration({"x": G.inputs(n)}, labels)


def test_compress_leaves_the_input_model_untouched() -> None:
    model = G.lite_like()
    before = model.SerializeToString()
    result = compress(model, calibration())
    assert result.plan.remove
    assert model.SerializeToString() == before


def test_empty_plan_reproduces_the_graph() -> None:
    model = G.inception_like()
    out = prune(model, empty_plan(find_groups(model)))
    reference = normalise(model)
    assert [n.SerializeToString() for n in out.graph.node] == [
        n.SerializeToString() for n in reference.graph.node
    ]
    assert sorted(t.SerializeToString() for t in out.graph.initializer) == sorted(
        t.SerializeToString() for t in reference.graph.initializer
    )


@pytest.mark.parametrize(
    ("build", "removed"),
    [
        (G.lite_like, {"Conv_0": 1, "Conv_1": 1, "Conv_9": 1}),
        (G.inception_like, {"Conv_0": 1, "Conv_4": 1, "Conv_10": 1, "Conv_17": 1}),
    ],
)
def test_planted_dead_channels_go_and_outputs_stay(build, removed: dict[str, int]) -> None:
    model = build()
    metadata.write_metadata(model, {metadata.ARCH: "test"})
    model.graph.doc_string = "kept"
    result = compress(model, calibration())
    assert {
        r.name: r.channels[0] - r.channels[1]
        for r in result.layers
        if r.channels[1] < r.channels[0]
    } == removed
    assert result.verified and result.decision.within_tolerance
    assert result.params[1] < result.params[0] and result.macs[1] < result.macs[0]
    out = result.model
    onnx.checker.check_model(out, full_check=True)
    assert [i.SerializeToString() for i in out.graph.input] == [
        i.SerializeToString() for i in model.graph.input
    ]
    assert [o.SerializeToString() for o in out.graph.output] == [
        o.SerializeToString() for o in model.graph.output
    ]
    assert out.opset_import == model.opset_import and out.graph.doc_string == "kept"
    meta = metadata.read_metadata(out)
    assert meta[metadata.ARCH] == "test"
    assert '"criterion": "dead"' in meta[metadata.COMPRESS]
    # fresh inputs of another batch size: the dynamic batch survives
    fresh = {"x": G.inputs(7, seed=99)}
    report = compare(run_model(model, fresh), run_model(out, fresh), atol=1e-5, rtol=1e-4)
    assert report.within_tolerance


def test_onnx_reference_agrees_with_onnxruntime_on_pruned_graphs() -> None:
    x = G.inputs(6, seed=5)
    for build in (G.chain, G.concat, G.residual, G.depthwise, G.gemm_head):
        model = build(True) if build is G.gemm_head else build()
        out = compress(model, calibration(60)).model
        ref = onnx.reference.ReferenceEvaluator(out).run(None, {"x": x})
        ort_out = run_model(out, {"x": x})
        np.testing.assert_allclose(ref[0], ort_out[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ort_out[0], run_model(model, {"x": x})[0], atol=1e-6)


def test_dsp_rule_compensation_brings_outputs_closer() -> None:
    model = G.lite_like(dead_concat=(), dead_dw1=())
    diffs = {}
    for comp in ("none", "mean", "lstsq"):
        # confidence 0.5: point estimates, one held-out part of 40 (compress.holdout)
        result = compress(
            model, calibration(200), criterion="dsp", compensation=comp, confidence=0.5
        )
        assert result.plan.remove and result.params[1] < result.params[0]
        assert result.gate.judged == "split"
        diffs[comp] = result.holdout.max_abs_diff
    assert diffs["lstsq"] < diffs["none"] and diffs["mean"] < diffs["none"]


def test_compensation_gives_a_bias_free_conv_a_bias_of_its_weight_type() -> None:
    # Regression: the folded bias of a Conv without one came out float64, which
    # onnxruntime refuses (found by the sweep on InceptionTime's bias-free convs).
    model = G.chain(dead1=(), dead2=())
    conv = next(n for n in model.graph.node if n.op_type == "Conv" and n.input[0] == "r")
    del conv.input[2]
    result = compress(model, calibration(200), criterion="dsp", compensation="mean")
    assert result.plan.remove
    pruned = next(n for n in result.model.graph.node if n.op_type == "Conv" and n.input[0] == "r")
    assert len(pruned.input) == 3
    bias = next(t for t in result.model.graph.initializer if t.name == pruned.input[2])
    assert bias.data_type == onnx.TensorProto.FLOAT
    run_model(result.model, {"x": G.inputs(4)})  # loads and runs in onnxruntime


def test_dsp_never_empties_a_layer() -> None:
    model = G.chain(dead1=(0, 1, 2, 3), dead2=(0, 1, 2))
    result = compress(model, calibration(40), criterion="dsp", min_count=10**6)
    assert all(r.channels[1] >= 1 for r in result.layers)


def test_accuracy_gate_refuses_a_damaging_plan() -> None:
    model = G.lite_like(dead_concat=(), dead_dw1=())
    x = calibration(200)
    labels = run_model(model, x.inputs)[0].argmax(axis=1)
    result = compress(
        model,
        Calibration(x.inputs, labels),
        criterion="dsp",
        compensation="none",
        min_count=10**6,
        max_accuracy_drop=0.0,
    )
    assert not result.verified
    assert any("accuracy drop" in f for f in result.failures)

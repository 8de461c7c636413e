"""quantize's accuracy steps: bias correction level by level zeroes each Conv's mean
error, 7-bit weights exactly where the input is signed, and the per-tensor range search
never does worse than min/max on the error it minimises."""

from __future__ import annotations

from functools import partial

import numpy as np
import onnx
import onnx_graphs
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from dsp_deploy.inference import run_model, session
from dsp_deploy.quantize import bias, ranges
from dsp_deploy.quantize.build import quantize_qdq, signed_input_convs
from dsp_deploy.quantize.options import FLAVOURS


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
    for node in model.graph.node:
        node.name = node.output[0]  # as the prepared models have
    return model


def _ranges(model: onnx.ModelProto, x: np.ndarray, clip: float = 1.0) -> dict:
    acts = ranges.activations(model, {"x": x}, ranges.float_tensors(model))
    chosen = {k: ranges.choose_range(v) for k, v in acts.items()}
    r = chosen["x"]  # the input clipped: a systematic shift for the correction to undo
    chosen["x"] = ranges.TensorRange(r.lo * clip, r.hi * clip, "clipped", r.mse)
    return chosen


def _mean_errors(model, quantized, x: np.ndarray, convs) -> dict[str, np.ndarray]:
    """Per Conv, the mean error of its output (before the Relu the quantizer folds into
    it, whose name its output then takes) against ``model``'s."""
    ours, theirs = bias.conv_outputs(model), bias.conv_outputs(quantized)
    run = partial(ranges.activations, inputs={"x": x})
    ref = run(model, names=[ours[c] for c in convs])
    got = run(quantized, names=[theirs[c] for c in convs])
    return bias.bias_shifts(ref, {ours[c]: got[theirs[c]] for c in convs})


def test_conv_levels_group_the_convs_that_do_not_read_each_other() -> None:
    levels = bias.conv_levels(_named(onnx_graphs.inception_like()))
    assert levels == (("a1", "b1", "c1", "p1", "s"), ("bz", "p2"), ("a2", "b2", "c2"))


def test_bias_correction_makes_each_convs_mean_error_zero() -> None:
    model = _named(onnx_graphs.chain(dead1=(), dead2=()))
    x = onnx_graphs.inputs(32)
    build = partial(quantize_qdq, ranges=_ranges(model, x, clip=0.3), flavour=FLAVOURS["x86"])
    run = partial(ranges.activations, inputs={"x": x})
    before = _mean_errors(model, build(model), x, ["a", "b"])
    fixed = bias.corrected(model, build, lambda m, names: run(m, names=names))
    after = _mean_errors(model, fixed, x, ["a", "b"])
    assert max(np.abs(d).max() for d in before.values()) > 0.05  # the clip shifts means
    assert set(after) == {"a", "b"}  # the Convs' own outputs
    for name in ("a", "b"):
        np.testing.assert_allclose(after[name], 0.0, atol=2e-3)
    # only biases changed: the corrected model computes the float function up to noise
    assert _abs_error(model, fixed, x) < _abs_error(model, build(model), x)


def _abs_error(model, quantized, x) -> float:
    ours, theirs = (
        run_model(session(m, 1, optimise=False), {"x": x})[0] for m in (model, quantized)
    )
    return float(np.abs(theirs - ours).mean())


def _weight_codes(quantized: onnx.ModelProto, name: str) -> np.ndarray:
    found = [t for t in quantized.graph.initializer if t.name.startswith(f"{name}_w")
             and t.data_type == onnx.TensorProto.INT8 and "zero_point" not in t.name]  # fmt: skip
    assert len(found) == 1
    return numpy_helper.to_array(found[0]).astype(np.int32)


def test_convs_reading_a_signed_tensor_get_7_bit_weights_on_x86() -> None:
    model = _named(onnx_graphs.chain(dead1=(), dead2=()))
    x = onnx_graphs.inputs(32)
    chosen = _ranges(model, x)
    assert signed_input_convs(model, chosen) == ("a",)  # x is signed, relu(a) is not
    x86 = quantize_qdq(model, chosen, FLAVOURS["x86"])
    arm = quantize_qdq(model, chosen, FLAVOURS["arm64"])
    assert 60 <= np.abs(_weight_codes(x86, "c1")).max() <= 64  # 7 bits: no pair saturates
    assert np.abs(_weight_codes(x86, "c2")).max() == 127
    assert np.abs(_weight_codes(arm, "c1")).max() == 127
    # the fused kernels compute what the QDQ graph says (no saturation)
    fused = run_model(session(x86, 1, optimise=True), {"x": x})[0]
    as_written = run_model(session(x86, 1, optimise=False), {"x": x})[0]
    np.testing.assert_allclose(fused, as_written, atol=2e-2)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**16),
    st.floats(0.01, 100.0),
    st.floats(0.0, 1.0),
    st.sampled_from(["normal", "laplace", "relu"]),
)
def test_range_search_never_loses_to_min_max(seed: int, spread: float, shift: float, kind: str):
    rng = np.random.default_rng(seed)
    v = getattr(rng, "laplace" if kind == "laplace" else "normal")(shift, spread, 4000)
    v = np.maximum(v, 0) if kind == "relu" else v
    chosen = ranges.choose_range(v)
    lo, hi = min(v.min(), 0.0), max(v.max(), 0.0)
    assert chosen.lo <= 0 <= chosen.hi
    assert chosen.mse == ranges.quant_mse(v.astype(np.float64), chosen.lo, chosen.hi)
    assert chosen.mse <= ranges.quant_mse(v.astype(np.float64), lo, hi)

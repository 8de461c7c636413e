"""Constant channels fold only into Convs without padding; dead channels go through any.

The graph: Conv(1 → 6, pads 1) → Relu → Conv(6 → 5, k 3, the padding under test) → Relu →
GAP → Gemm. Channel 2 of the first Conv is the constant 0.7 (zero weights, bias 0.7),
channel 4 is dead (zero weights, bias −1). The second Conv pads by ``auto_pad`` SAME_UPPER
/ SAME_LOWER / VALID, explicit pads [1, 1] or explicit zero pads, with stride 1 or 2, on a
static or a dynamic length. Folding 0.7 · Σ_j W[:, 2, j] into its bias is exact only
without padding (``rules.Consumer.foldable``); a dead channel is exact everywhere.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from dsp_deploy.compress.graph import normalise
from dsp_deploy.compress.pipeline import compress
from dsp_deploy.inference import run_model
from dsp_deploy.io import Calibration

L = 32
CONSTANT, DEAD = 2, 4
PADDINGS = {
    "SAME_UPPER": 'auto_pad = "SAME_UPPER"',
    "SAME_LOWER": 'auto_pad = "SAME_LOWER"',
    "VALID": 'auto_pad = "VALID"',
    "pads": "pads = [1, 1]",
    "zero-pads": "pads = [0, 0]",
}
UNPADDED = {"VALID", "zero-pads"}


def _model(padding: str, stride: int, length: int | None, kernel: int = 3) -> onnx.ModelProto:
    """The graph of the module docstring; ``length`` None: a dynamic length."""
    text = f"""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[N, 1, {length or "L"}] x) => (float[N, 2] probabilities)
    {{
        a = Conv <pads = [1, 1]> (x, c1_w, c1_b)
        h = Relu (a)
        b = Conv <{PADDINGS[padding]}, strides = [{stride}]> (h, c2_w, c2_b)
        r = Relu (b)
        g = GlobalAveragePool (r)
        f = Flatten (g)
        z = Gemm <transB = 1> (f, fc_w, fc_b)
        probabilities = Softmax <axis = 1> (z)
    }}
    """
    rng = np.random.default_rng(0)
    c1_w, c1_b = rng.normal(0, 0.6, (6, 1, 3)), rng.normal(0.1, 0.1, 6)
    c1_w[CONSTANT], c1_b[CONSTANT] = 0.0, 0.7
    c1_w[DEAD], c1_b[DEAD] = 0.0, -1.0
    weights = {
        "c1_w": c1_w,
        "c1_b": c1_b,
        "c2_w": rng.normal(0, 0.4, (5, 6, kernel)),
        "c2_b": rng.normal(0.1, 0.1, 5),
        "fc_w": rng.normal(0, 0.5, (2, 5)),
        "fc_b": rng.normal(0, 0.1, 2),
    }
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(
        numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def _series(n: int, length: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 1, length)).astype(np.float32)


def _first_conv_channels(model: onnx.ModelProto) -> int:
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return weights[conv.input[1]][0]


def _conv_attrs(model: onnx.ModelProto) -> dict:
    conv = [n for n in model.graph.node if n.op_type == "Conv"][1]
    return {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}


def _assert_same_outputs(original, written, lengths) -> None:
    for seed, length in enumerate(lengths, start=10):
        x = {"x": _series(24, length, seed)}
        expected, got = run_model(original, x)[0], run_model(written, x)[0]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, err_msg=f"L={length}")


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", list(PADDINGS))
def test_constant_folds_only_where_exact(padding: str, stride: int, dynamic: bool) -> None:
    model = _model(padding, stride, None if dynamic else L)
    result = compress(model, Calibration({"x": _series(48, L, 1)}, None))
    assert result.verified, result.failures
    folded = padding in UNPADDED
    assert _first_conv_channels(result.model) == 6 - 1 - folded  # the dead one always goes
    lengths = (17, 32, 45, 64) if dynamic else (L,)
    _assert_same_outputs(model, result.model, lengths)
    kept = dict(result.plan.held)
    constant_unit = result.plan.analysis.unit_of[result.plan.analysis.sources[0].atoms[CONSTANT]]
    if not folded:
        assert kept[constant_unit] == (
            "a constant that padded Conv_2 cannot fold into its bias exactly"
        )
    keeps_auto_pad = padding.startswith("SAME") and stride == 2 and dynamic
    assert ("auto_pad" in _conv_attrs(result.model)) == keeps_auto_pad


@pytest.mark.parametrize("padding", ["SAME_UPPER", "SAME_LOWER"])
def test_same_kernel_1_is_unpadded_at_any_stride_and_length(padding: str) -> None:
    model = _model(padding, 2, None, kernel=1)
    result = compress(model, Calibration({"x": _series(48, L, 1)}, None))
    assert result.verified, result.failures
    assert _conv_attrs(result.model)["pads"] == [0, 0]
    assert _first_conv_channels(result.model) == 4  # constant folded, dead removed
    _assert_same_outputs(model, result.model, (17, 32, 45))


@pytest.mark.parametrize(
    ("length", "stride", "pads"),
    [(None, 1, [1, 1]), (32, 2, [0, 1]), (33, 2, [1, 1]), (None, 2, None)],
)
def test_same_upper_is_explicit_unless_the_pads_follow_a_dynamic_length(
    length: int | None, stride: int, pads: list[int] | None
) -> None:
    attrs = _conv_attrs(normalise(_model("SAME_UPPER", stride, length)))
    assert attrs.get("pads") == pads
    assert ("auto_pad" in attrs) == (pads is None)

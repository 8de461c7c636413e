"""quantize's graph reads and rewrites (onnx-ir): bias shifts, Conv levels, the float
tensors, the quantizer's clean-up and the fusion count; none touches its input."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_graphs
import pytest
from onnx import numpy_helper

from dsp_deploy.quantize import bias, ranges, speed
from dsp_deploy.quantize.build import quantize_qdq
from dsp_deploy.quantize.options import FLAVOURS

# a has a bias, c has none; r is no Conv's output.
TWO_CONVS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,1,4] x) => (float[1,2,4] z)
<float[2,1,1] w1 = {1.0, 2.0}, float[2] b1 = {0.5, -1.0}, float[2,2,1] w2 = {1.0, 0.0, 0.0, 1.0}>
{
  a = Conv (x, w1, b1)
  r = Relu (a)
  c = Conv (r, w2)
  z = Relu (c)
}
"""

# a, b read x (level 1); c reads a (2); u is unnamed; d reads c and b (3).
LEVELS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,1,4] x) => (float[1,1,4] z)
<float[1,1,1] w = {1.0}>
{
  a = Conv (x, w)
  b = Conv (x, w)
  c = Conv (a, w)
  u = Conv (b, w)
  s = Add (c, b)
  d = Conv (s, w)
  z = Relu (d)
}
"""


def _parsed(text: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    for node in model.graph.node:
        if node.output[0] != "u":
            node.name = node.output[0]  # as the prepared models have
    return model


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _bias_of(model: onnx.ModelProto, output: str) -> np.ndarray | None:
    node = next(n for n in model.graph.node if n.output[0] == output)
    return _inits(model)[node.input[2]] if len(node.input) > 2 and node.input[2] else None


@pytest.mark.parametrize(
    ("shifts", "a_bias", "c_bias"),
    [
        ({"a": [0.25, 0.5]}, [0.75, -0.5], None),  # δ added to the existing bias
        ({"c": [1.0, -2.0]}, [0.5, -1.0], [1.0, -2.0]),  # a bias created: δ
        ({"a": [1.0, 1.0], "c": [0.5, 0.5]}, [1.5, 0.0], [0.5, 0.5]),
        ({"r": [1.0, 1.0]}, [0.5, -1.0], None),  # no Conv makes r
        ({"a": [1.0, 1.0, 1.0]}, [0.5, -1.0], None),  # δ of the wrong width
    ],
)
def test_with_bias_shifts_adds_delta_or_creates_the_bias(shifts, a_bias, c_bias) -> None:
    model = _parsed(TWO_CONVS)
    before = model.SerializeToString()
    out = bias.with_bias_shifts(model, {k: np.array(v) for k, v in shifts.items()})
    assert model.SerializeToString() == before
    np.testing.assert_array_equal(_bias_of(out, "a"), np.float32(a_bias))
    got = _bias_of(out, "c")
    assert (got is None) == (c_bias is None)
    if c_bias is not None:
        np.testing.assert_array_equal(got, np.float32(c_bias))
        assert got.dtype == np.float32
    used = {i for n in out.graph.node for i in n.input}
    assert set(_inits(out)) <= used  # the replaced bias is gone
    assert ("b1" in _inits(out)) == (a_bias == [0.5, -1.0])


def test_conv_levels_count_the_convs_on_the_longest_path() -> None:
    model = _parsed(LEVELS)
    before = model.SerializeToString()
    assert bias.conv_levels(model) == (("a", "b"), ("c",), ("d",))
    assert bias.conv_outputs(model) == {n: n for n in "abcd"}
    assert model.SerializeToString() == before


def test_float_tensors_are_the_inputs_and_float_node_outputs() -> None:
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,1,4] x) => (int64[3] s, float[1,1,4] z)
        <float[1,1,1] w = {1.0}>
        {
          a = Conv (x, w)
          s = Shape (a)
          z = Relu (a)
        }
    """)
    before = model.SerializeToString()
    assert ranges.float_tensors(model) == ("x", "a", "z")
    assert model.SerializeToString() == before


def _chain() -> onnx.ModelProto:
    model = onnx_graphs.chain(dead1=(), dead2=())
    for node in model.graph.node:
        node.name = node.output[0]
    return model


def _chain_ranges(model: onnx.ModelProto) -> dict:
    acts = ranges.activations(model, {"x": onnx_graphs.inputs(8)}, ranges.float_tensors(model))
    return {k: ranges.choose_range(v) for k, v in acts.items()}


def test_quantized_model_keeps_only_what_its_nodes_read() -> None:
    model = _chain()
    chosen = _chain_ranges(model)
    before = model.SerializeToString()
    q = quantize_qdq(model, chosen, FLAVOURS["x86"])
    assert model.SerializeToString() == before
    assert not q.graph.value_info
    assert {t.name for t in q.graph.initializer} <= {i for n in q.graph.node for i in n.input}
    assert [i.name for i in q.graph.input] == ["x"] and len(q.graph.output) == 1
    assert any(n.op_type == "DequantizeLinear" for n in q.graph.node)


@pytest.mark.parametrize(("exclude", "integer"), [((), 2), (("a", "b"), 0)])
def test_fusions_count_the_convs_run_as_integer_ops(exclude, integer) -> None:
    model = _chain()
    q = quantize_qdq(model, _chain_ranges(model), FLAVOURS["x86"], exclude=exclude)
    found = speed.fusions(q)
    assert found.integer == integer and found.float_convs == 2 - integer
    assert found.unfused == ()  # a Conv kept in float reads a float tensor


def test_a_conv_reading_a_dequantize_linear_is_unfused() -> None:
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,1,4] x) => (float[1,2,4] z)
        <int8[2,1,1] wq = {10, -20}, float[2] ws = {0.1, 0.2}, int8[2] wz = {0, 0}>
        {
          w = DequantizeLinear <axis = 0> (wq, ws, wz)
          a = Conv (x, w)
          z = Relu (a)
        }
    """)  # weights only: no integer kernel takes a float x
    model.graph.node[1].name = "a"
    assert speed.fusions(model) == speed.Fusions(0, 1, ("a",))

"""dsp_deploy.irgraph.finish: onnx-ir's unused removal, name fixing and checked shapes."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from dsp_deploy.errors import ModelError
from dsp_deploy.irgraph import finish, initializer

TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 2, 5] x) => (float[N, 2, 5] y) <float[2] unused = {1.0, 2.0}> {
    dead = Neg (x)
    y = Relu (x)
}
"""


def _model() -> ir.Model:
    return ir.from_proto(onnx.parser.parse_model(TEXT))


def _add_before_output(model: ir.Model, op_type: str, name: str) -> ir.Value:
    """``y = op(Relu(x), c)`` with a new initializer ``c`` named like the input ``x``."""
    graph = model.graph
    relu = graph.outputs[0].producer()
    out = relu.outputs[0]
    y = ir.Value(name="y", type=out.type)
    ir.convenience.replace_all_uses_with(out, y, replace_graph_outputs=True)
    out.name = "relu"
    c = initializer(np.ones((1, 2, 1), np.float32), "x")
    graph.insert_after(relu, ir.node(op_type, [out, c], outputs=[y], name=name))
    return c


def test_finish_drops_unread_names_new_values_and_infers_shapes() -> None:
    model = _model()
    c = _add_before_output(model, "Mul", "")
    finish(model, [c], [(model.graph.outputs[0], ir.Shape(["N", 2, 5]))])
    proto = ir.to_proto(model)
    assert [n.op_type for n in proto.graph.node] == ["Relu", "Mul"]  # Neg read by nobody
    assert [t.name for t in proto.graph.initializer] == ["x_1"]  # "unused" gone, "x" taken
    assert [n.name for n in proto.graph.node] == ["Relu", "Mul"]  # named after their op
    relu = next(v for v in proto.graph.value_info if v.name == "relu")
    assert [d.dim_value or d.dim_param for d in relu.type.tensor_type.shape.dim] == ["N", 2, 5]
    onnx.checker.check_model(proto, full_check=True)


def test_finish_refuses_a_shape_other_than_the_expected_one() -> None:
    model = _model()
    c = _add_before_output(model, "Mul", "scale")
    with pytest.raises(ModelError, match=r"value 'y' has shape .*; expected \[N,3,5\]"):
        finish(model, [c], [(model.graph.outputs[0], ir.Shape(["N", 3, 5]))])


SHAPES = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 3, 8] x) => (float[N, 4] y) <float[4, 3, 3] w = {0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5,
  0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5,
  0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5}> {
    c = Conv <pads = [1, 1]> (x, w)
    r = Relu (c)
    p = GlobalAveragePool (r)
    y = Flatten (p)
}
"""


def test_infer_and_merge_sets_what_onnx_irs_shape_inference_pass_sets() -> None:
    # finish's inference reads back only the inferred inputs, value_info and outputs
    # (no deserialised copy of the model): the same shapes and types as the pass.
    from onnx_ir.passes.common import ShapeInferencePass

    from dsp_deploy.irgraph import infer_and_merge

    ours, theirs = (ir.from_proto(onnx.parser.parse_model(SHAPES)) for _ in range(2))
    infer_and_merge(ours)
    ShapeInferencePass()(theirs)
    assert str(ours.graph.node(0).outputs[0].shape) == "[N,4,8]"
    assert str(ours.graph.node(2).outputs[0].shape) == "[N,4,1]"
    as_bytes = (ir.to_proto(m).SerializeToString(deterministic=True) for m in (ours, theirs))
    assert next(as_bytes) == next(as_bytes)

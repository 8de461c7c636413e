"""Small onnx-ir helpers shared by the passes outside the compress core.

Reading: ``is_op`` (an op of the default domain), ``opset`` (the default-domain version),
``initializer_value`` (an initializer's values, unless a graph input can override it),
``constant_value`` (also an overridable initializer, or a ``Constant`` node's tensor: what
compress reads; the two differ on IR < 4 models, which list initializers as inputs),
``only_reader`` (a value read once, by nodes of any depth, and no graph output).

Writing: a pass creates new initializers with ``initializer`` (named, not registered
yet) and ends with ``finish``: onnx-ir's ``RemoveUnusedNodesPass`` drops what nothing
reads, its ``NameFixPass`` makes every value and node name unique (new names give way:
the graph's inputs, outputs and initializers keep theirs; unnamed nodes are named after
their op type), the new initializers are registered, and onnx-ir's
``ShapeInferencePass`` runs. It only logs when inference fails, so ``finish`` then
checks each value the pass changed against the shape the pass expects: a value left
without a shape gets the expected one, a value whose inferred rank or static dims
differ raises ``ModelError``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import NameFixPass, RemoveUnusedNodesPass, ShapeInferencePass
from onnx_ir.passes.common._c_api_utils import call_onnx_api

from dsp_deploy.errors import ModelError

logger = logging.getLogger(__name__)

DEFAULT_DOMAINS = ("", "ai.onnx")
# (value, what its shape must be: a shape, or a value whose shape it must match)
Expected = tuple[ir.Value, "ir.Shape | ir.Value | None"]


def is_op(node: ir.Node | None, op_type: str) -> bool:
    return node is not None and node.op_type == op_type and node.domain in DEFAULT_DOMAINS


def opset(model: ir.Model) -> int:
    imports = model.opset_imports
    return imports.get("", imports.get("ai.onnx", 1))


def initializer_value(value: ir.Value | None) -> np.ndarray | None:
    """The values of an initializer no graph input overrides, else None (what a rewrite
    may bake into the graph: fuse, the export clean-ups)."""
    if value is None or not value.is_initializer() or value.is_graph_input():
        return None
    tensor = value.const_value
    return None if tensor is None else tensor.numpy()


def constant_value(value: ir.Value | None) -> np.ndarray | None:
    """The values of an initializer, also one a graph input could override (an IR < 4
    model lists every initializer as an input), or of a ``Constant`` node's ``value``;
    None: computed. What compress analyses the model with: its stored weights."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    node = value.producer()
    tensor = node.attributes.get("value") if is_op(node, "Constant") else None
    return None if tensor is None else tensor.value.numpy()


def only_reader(value: ir.Value) -> bool:
    return len(value.uses()) == 1 and not value.is_graph_output()


def initializer(array: np.ndarray, name: str) -> ir.Value:
    """A new constant value named ``name`` (``finish`` registers it, renamed if taken)."""
    tensor = ir.Tensor(np.asarray(array))  # ir.tensor: slow runtime Protocol checks
    return ir.Value(
        name=name, shape=tensor.shape, type=ir.TensorType(tensor.dtype), const_value=tensor
    )


class _OpTypeNames:
    """NameFixPass's preferred names: a node's own name, else its op type."""

    def generate_node_name(self, node: ir.Node) -> str:
        return node.name or node.op_type

    def generate_value_name(self, value: ir.Value) -> str:
        return value.name or "v"


def finish(
    model: ir.Model, new: Sequence[ir.Value] = (), expected: Sequence[Expected] = ()
) -> None:
    """Drop what is unread, fix names, register ``new``, infer and check shapes."""
    RemoveUnusedNodesPass()(model)
    NameFixPass(_OpTypeNames())(model)
    for value in new:
        if value.uses():
            model.graph.register_initializer(value)
    for value, _ in expected:
        value.shape = None
    infer_and_merge(model)
    for value, ref in expected:
        _check_shape(value, ref.shape if isinstance(ref, ir.Value) else ref)


def _has_subgraphs(graph: ir.Graph) -> bool:
    graph_types = (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
    return any(a.type in graph_types for node in graph for a in node.attributes.values())


def infer_and_merge(model: ir.Model) -> None:
    """onnx-ir's ``ShapeInferencePass`` (strict, types checked; a failure only logs),
    without deserialising the inferred model: the main graph's values take the shapes
    and types of its inputs, ``value_info`` and outputs, as that pass's merge sets them.
    A model with subgraphs runs the pass itself (its merge walks them too)."""
    if _has_subgraphs(model.graph):
        ShapeInferencePass()(model)
        return
    try:
        inferred = call_onnx_api(_strict_inference, model).graph
    except Exception as e:  # onnx raises several types; as the pass, leave the model be
        logger.warning("Shape inference failed: %s. Model is left unchanged", e)
        return
    values = ir.convenience.create_value_mapping(model.graph)
    for info in (*inferred.input, *inferred.value_info, *inferred.output):
        value = values.get(info.name)
        if value is None:
            continue
        shape = ir.serde.deserialize_type_proto_for_shape(info.type)
        if shape is not None and value.shape != shape:
            value.shape = shape
        kind = ir.serde.deserialize_type_proto_for_type(info.type)
        if kind is not None and kind.dtype is not None and value.dtype != kind.dtype:
            value.dtype = kind.dtype


def _strict_inference(proto: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.shape_inference.infer_shapes(
        proto, check_type=True, strict_mode=True, data_prop=True
    )


def _check_shape(value: ir.Value, shape: ir.Shape | None) -> None:
    if value.shape is None:
        value.shape = shape
        return
    if shape is None:
        return
    got, want = tuple(value.shape.dims), tuple(shape.dims)
    pairs = zip(got, want, strict=False)
    if len(got) != len(want) or any(
        isinstance(a, int) and isinstance(b, int) and a != b for a, b in pairs
    ):
        raise ModelError(
            f"value {value.name!r} has shape {value.shape} after the rewrite; expected {shape}"
        )

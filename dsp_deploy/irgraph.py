"""Small onnx-ir helpers shared by the passes outside the compress core.

Reading: ``is_op`` (an op of the default domain), ``opset`` (the default-domain version),
``constant`` (an initializer's values, unless a graph input can override it),
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

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import NameFixPass, RemoveUnusedNodesPass, ShapeInferencePass

from dsp_deploy.errors import ModelError

DEFAULT_DOMAINS = ("", "ai.onnx")
# (value, what its shape must be: a shape, or a value whose shape it must match)
Expected = tuple[ir.Value, "ir.Shape | ir.Value | None"]


def is_op(node: ir.Node | None, op_type: str) -> bool:
    return node is not None and node.op_type == op_type and node.domain in DEFAULT_DOMAINS


def opset(model: ir.Model) -> int:
    imports = model.opset_imports
    return imports.get("", imports.get("ai.onnx", 1))


def constant(value: ir.Value | None) -> np.ndarray | None:
    """The values of an initializer no graph input overrides, else None."""
    if value is None or not value.is_initializer() or value.is_graph_input():
        return None
    tensor = value.const_value
    return None if tensor is None else tensor.numpy()


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
    ShapeInferencePass()(model)
    for value, ref in expected:
        _check_shape(value, ref.shape if isinstance(ref, ir.Value) else ref)


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

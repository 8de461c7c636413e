"""Parameters and multiply-accumulates (MACs) of an ONNX model, per node, from shapes.

The counts are per sample: a dynamic batch dimension (axis 0 of every graph input of
rank >= 2) is fixed to 1 before ONNX shape inference runs on a copy of the model; a
dynamic time length (the last axis) takes ``length`` or the model's ``dsp.input_length``
metadata. Any other dynamic dimension cannot be resolved and raises ``InputError``.

Per node, with ``Y`` the output and ``W`` the weight (shapes at batch 1)::

    Conv           macs = |Y| · (C_in / groups) · prod(kernel) = |Y| · prod(W.shape[1:])
                   (dilation changes which inputs are read, not how many; strides and
                   pads act through |Y|)
    ConvTranspose  macs = |X| · (C_out / groups) · prod(kernel) = |X| · prod(W.shape[1:])
    Gemm           macs = M · N · K          (A is M×K after transA, B is K×N after transB)
    MatMul         macs = |Y| · K            (K = last axis of A; numpy broadcasting)
    anything else  macs = 0

Everything else (BatchNormalization, Relu, pooling, Add, Concat, Softmax, ...) counts 0:
it is O(|Y|) element-wise or data movement, small next to the contractions and not a
multiply-accumulate of learned weights. A model with a fixed batch B reports its totals
divided by B.

``params`` is the number of elements of all floating-point initializers of the main
graph, i.e. what the file stores (frozen filters included). A node's ``params`` are those
of the float initializers it reads, each counted at its first reader only, so the nodes
sum to ``params`` less any initializer no node reads. Subgraphs (If/Loop) are not counted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import onnx

from dsp_deploy import metadata
from dsp_deploy.errors import InputError, ModelError

logger = logging.getLogger(__name__)

_FLOAT_TYPES = frozenset(
    {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
    }
)

Shape = tuple[int, ...]


@dataclass(frozen=True)
class NodeCost:
    """Cost of one node: learned parameters it reads and MACs per sample (batch 1)."""

    name: str
    op_type: str
    params: int
    macs: int


@dataclass(frozen=True)
class ModelCost:
    """Cost of a whole model (see the module docstring for what is counted)."""

    params: int  # elements of all float initializers (what the file stores)
    macs: int  # multiply-accumulates per sample
    per_node: tuple[NodeCost, ...]


def model_cost(model: onnx.ModelProto, *, length: int | None = None) -> ModelCost:
    """Params and MACs per sample of ``model``; ``length`` resolves a dynamic time axis.

    The model is not modified. Raises ``InputError`` when a dynamic dimension cannot be
    resolved or shapes needed for a MAC count cannot be inferred.
    """
    from dsp_deploy.compress.fold_constants import fold_constants

    fixed, batch = _fix_input_dims(model, length)
    folded = fold_constants(fixed).model  # computed pads and shapes: static shapes behind
    try:
        inferred = onnx.shape_inference.infer_shapes(folded, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as e:
        raise ModelError(f"shape inference failed on the model: {e}") from e
    shapes = _static_shapes(inferred.graph)
    weights = _float_initializer_sizes(fixed.graph)  # what the file stores
    nodes = _node_costs(fixed.graph, shapes, weights)
    macs = sum(n.macs for n in nodes)
    if batch > 1:  # a fixed batch: report per sample
        macs //= batch
        nodes = tuple(NodeCost(n.name, n.op_type, n.params, n.macs // batch) for n in nodes)
    cost = ModelCost(params=sum(weights.values()), macs=macs, per_node=nodes)
    logger.debug("model cost: %d params, %d MACs per sample", cost.params, cost.macs)
    return cost


def _length_hint(model: onnx.ModelProto, length: int | None) -> int | None:
    if length is not None:
        if length <= 0:
            raise InputError(f"length must be a positive integer, got {length}")
        return length
    raw = metadata.read_metadata(model).get(metadata.INPUT_LENGTH)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ModelError(
            f"metadata {metadata.INPUT_LENGTH}={raw!r} is not an integer length"
        ) from None
    if value <= 0:
        raise ModelError(f"metadata {metadata.INPUT_LENGTH}={value} is not a positive length")
    return value


@dataclass(frozen=True)
class InputShape:
    """A graph input with every dimension resolved: what to feed it."""

    name: str
    dtype: str  # numpy dtype name, e.g. "float32"
    shape: tuple[int, ...]


def input_shapes(
    model: onnx.ModelProto, *, batch: int | None = None, length: int | None = None
) -> tuple[InputShape, ...]:
    """Static shapes of the model's run-time inputs.

    Axis 0 of an input of rank >= 2 is the batch: a dynamic one becomes ``batch`` (1 when
    None); a fixed one must equal ``batch`` when given. A dynamic last axis becomes
    ``length``, else the ``dsp.input_length`` metadata; ``length`` does not override a
    fixed axis. Any other dynamic dimension raises ``InputError``.
    """
    length = _length_hint(model, length)
    initializers = {t.name for t in model.graph.initializer}
    return tuple(
        InputShape(
            value.name,
            onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name,
            _resolve_dims(value, batch, length),
        )
        for value in model.graph.input
        if value.name not in initializers
    )


def _resolve_dims(value: onnx.ValueInfoProto, batch: int | None, length: int | None) -> Shape:
    if not value.type.HasField("tensor_type"):
        raise InputError(f"model input {value.name!r} is not a tensor; expected a tensor input")
    dims = value.type.tensor_type.shape.dim
    resolved = []
    for axis, dim in enumerate(dims):
        is_batch, is_last = axis == 0 and len(dims) >= 2, axis == len(dims) - 1
        if dim.HasField("dim_value"):
            if is_batch and batch is not None and dim.dim_value != batch:
                raise InputError(
                    f"model input {value.name!r} has a fixed batch of {dim.dim_value}; "
                    f"cannot run it at batch {batch}"
                )
            resolved.append(dim.dim_value)
        elif is_batch:
            resolved.append(1 if batch is None else batch)
        elif is_last and length is not None:
            resolved.append(length)
        else:
            hint = f" (give a length, or set {metadata.INPUT_LENGTH} metadata)" if is_last else ""
            raise InputError(
                f"model input {value.name!r} has a dynamic dimension {dim.dim_param or '?'!r} "
                f"at axis {axis}; expected a fixed size there{hint}"
            )
    return tuple(resolved)


def _fix_input_dims(model: onnx.ModelProto, length: int | None) -> tuple[onnx.ModelProto, int]:
    """A copy with every input dimension static; also the batch (fixed, or 1)."""
    shapes = {s.name: s.shape for s in input_shapes(model, length=length)}
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    batch = 1
    for value in fixed.graph.input:
        if value.name not in shapes:
            continue
        shape = shapes[value.name]
        if len(shape) >= 2:
            batch = max(batch, shape[0])
        for dim, size in zip(value.type.tensor_type.shape.dim, shape, strict=True):
            dim.dim_value = size
    return fixed, batch


def _static_shapes(graph: onnx.GraphProto) -> dict[str, Shape]:
    """Fully static shapes of every value shape inference resolved (symbolic ones skipped)."""
    shapes: dict[str, Shape] = {}
    for value in (*graph.input, *graph.value_info, *graph.output):
        tensor = value.type.tensor_type
        if not value.type.HasField("tensor_type") or not tensor.HasField("shape"):
            continue
        if all(d.HasField("dim_value") for d in tensor.shape.dim):
            shapes[value.name] = tuple(d.dim_value for d in tensor.shape.dim)
    for init in graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def _float_initializer_sizes(graph: onnx.GraphProto) -> dict[str, int]:
    return {t.name: math.prod(t.dims) for t in graph.initializer if t.data_type in _FLOAT_TYPES}


def _node_costs(
    graph: onnx.GraphProto, shapes: Mapping[str, Shape], weights: Mapping[str, int]
) -> tuple[NodeCost, ...]:
    seen: set[str] = set()
    costs = []
    for index, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{index}"
        owned = [i for i in node.input if i in weights and i not in seen]
        seen.update(owned)
        rule = _MAC_RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        macs = rule(node, _Shapes(shapes, name)) if rule else 0
        costs.append(NodeCost(name, node.op_type, sum(weights[i] for i in owned), macs))
    return tuple(costs)


@dataclass(frozen=True)
class _Shapes:
    """Shape lookup that names the node when a shape it needs is unknown."""

    known: Mapping[str, Shape]
    node: str

    def __call__(self, value: str) -> Shape:
        try:
            return self.known[value]
        except KeyError:
            raise InputError(
                f"cannot count MACs of node {self.node!r}: the shape of {value!r} is not "
                "static after shape inference"
            ) from None


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _conv_macs(node: onnx.NodeProto, shape: _Shapes) -> int:
    return math.prod(shape(node.output[0])) * math.prod(shape(node.input[1])[1:])


def _conv_transpose_macs(node: onnx.NodeProto, shape: _Shapes) -> int:
    return math.prod(shape(node.input[0])) * math.prod(shape(node.input[1])[1:])


def _gemm_macs(node: onnx.NodeProto, shape: _Shapes) -> int:
    a, b = shape(node.input[0]), shape(node.input[1])
    m, k = (a[1], a[0]) if _attr(node, "transA", 0) else a
    n = b[0] if _attr(node, "transB", 0) else b[1]
    return m * k * n


def _matmul_macs(node: onnx.NodeProto, shape: _Shapes) -> int:
    a = shape(node.input[0])
    return math.prod(shape(node.output[0])) * a[-1]


_MAC_RULES: Mapping[str, Callable[[onnx.NodeProto, _Shapes], int]] = {
    "Conv": _conv_macs,
    "ConvTranspose": _conv_transpose_macs,
    "Gemm": _gemm_macs,
    "MatMul": _matmul_macs,
}

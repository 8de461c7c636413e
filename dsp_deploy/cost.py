"""Parameters, weight bytes and multiply-accumulates (MACs) of an ONNX model, per node.

The counts are per sample: a dynamic batch dimension (axis 0 of every graph input of
rank >= 2) is fixed to 1 before ONNX shape inference runs on a copy of the model; a
dynamic time length (the last axis) takes ``length`` or the model's ``dsp.input_length``
metadata. A dimension neither resolves stays dynamic: the MACs that depend on it are
unknown (below) unless ``sample`` sizes them.

Per node, with ``Y`` the output and ``W`` the weight (shapes at batch 1)::

    Conv           macs = |Y| · (C_in / groups) · prod(kernel) = |Y| · prod(W.shape[1:])
                   (dilation changes which inputs are read, not how many; strides and
                   pads act through |Y|)
    ConvTranspose  macs = |X| · (C_out / groups) · prod(kernel) = |X| · prod(W.shape[1:])
    Gemm           macs = M · N · K          (A is M×K after transA, B is K×N after transB)
    MatMul         macs = |Y| · K            (K = last axis of A; numpy broadcasting)
    anything else  macs = 0

The quantized and fused forms count as their float op, reading their own operand
positions: QLinearConv (x 0, W 3), ConvInteger and com.microsoft FusedConv (x 0, W 1) as
Conv; com.microsoft QGemm (A 0, B 3) as Gemm; QLinearMatMul and MatMulInteger (A 0) as
MatMul. A QDQ graph's Conv reads its weight through DequantizeLinear and counts as a Conv.

Everything else (BatchNormalization, Relu, pooling, Add, Concat, Softmax, ...) counts 0:
it is O(|Y|) element-wise or data movement, small next to the contractions and not a
multiply-accumulate of learned weights. A model with a fixed batch B reports its totals
divided by B.

Shapes, in order, for a tensor a MAC rule reads: ONNX shape inference (with data
propagation; run again after folding the constant subgraphs when it leaves one of
them unknown); then onnxruntime's own inference, which knows its contrib ops; then, given
``sample`` (calibration data; its first rows), the shapes one run on it produces, which
resolves what only run time knows (Pad amounts or Reshape targets computed from
``Shape``); see ``dsp_deploy.observed``. A node whose shapes are still unknown counts 0
MACs and is listed in ``ModelCost.unknown``: ``macs`` is then a lower bound.

``params`` is the number of elements of every weight-like initializer of the main graph:
every numeric type but int64 (ONNX's type for shapes, axes, pads and indices) and bool
(masks). So float weights and biases, int8/uint8/int4 quantized weights, int32 quantized
biases, and the quantization scales and zero points, counted as params (they are stored
beside the weights they decode: one value per tensor or per channel). ``bytes`` is what
those initializers take by their types (sub-byte types packed). A node's ``params`` are
those of the weight-like initializers it reads; one read by r nodes is shared out among
them, n // r elements each and the remainder one by one to the first readers in graph
order (two Convs sharing a 36-element W show 18 each, not 36 and 0). So the nodes sum to
``params`` less any initializer no node reads (in a QDQ graph the DequantizeLinear nodes
read them, not the Conv). Subgraphs (If/Loop) are not counted.
"""

from __future__ import annotations

import functools
import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from dsp_deploy import metadata
from dsp_deploy.errors import InputError, ModelError
from dsp_deploy.modelcheck import tensor_bytes
from dsp_deploy.observed import feeds_from, run_inputs, runtime_shapes
from dsp_deploy.passes import copy_model

logger = logging.getLogger(__name__)

# Not weights: int64 holds shapes, axes, pads and indices; bool masks; strings no numbers.
_NOT_WEIGHTS = frozenset({onnx.TensorProto.INT64, onnx.TensorProto.BOOL, onnx.TensorProto.STRING})

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

    params: int  # elements of all weight-like initializers (what the file stores)
    macs: int  # multiply-accumulates per sample (of the nodes not in ``unknown``)
    per_node: tuple[NodeCost, ...]
    bytes: int = 0  # storage of those initializers, by type
    unknown: tuple[str, ...] = ()  # nodes whose MACs no shape source could tell


def model_cost(
    model: onnx.ModelProto,
    *,
    length: int | None = None,
    sample: Mapping[str, np.ndarray] | None = None,
) -> ModelCost:
    """Params and MACs per sample of ``model``; ``length`` resolves a dynamic time axis.

    ``sample`` (input name → batch-first array, e.g. the calibration inputs; its first
    rows are used) gives the shapes static inference cannot. The model is not modified.
    """
    fixed, batch = _fix_input_dims(model, length)
    shapes = _inferred_shapes(fixed)
    missing = _missing(fixed.graph, shapes)
    if missing:
        feeds = None if sample is None else feeds_from(fixed, sample)
        shapes = {**shapes, **runtime_shapes(fixed, missing, feeds)}
    weights = _weight_sizes(fixed.graph)  # what the file stores
    nodes, unknown = _node_costs(fixed.graph, shapes, weights)
    if unknown:
        logger.info("MACs of %d nodes unknown (no static shape): %s", len(unknown), unknown)
    macs = sum(n.macs for n in nodes)
    if batch > 1:  # a fixed batch: report per sample
        macs //= batch
        nodes = tuple(NodeCost(n.name, n.op_type, n.params, n.macs // batch) for n in nodes)
    cost = ModelCost(
        params=sum(weights.values()),
        macs=macs,
        per_node=nodes,
        bytes=_weight_bytes(fixed.graph),
        unknown=unknown,
    )
    logger.debug("model cost: %d params, %d MACs per sample", cost.params, cost.macs)
    return cost


def _inferred_shapes(fixed: onnx.ModelProto) -> dict[str, Shape]:
    """Static shapes by ONNX inference (data propagation); when it leaves a MAC-counted
    tensor unknown, or fails, again after folding the constant subgraphs (computed pads
    and shapes: static shapes behind), which costs a conversion and an onnxruntime run."""
    from dsp_deploy.compress.fold_constants import fold_constants

    try:
        shapes = _static_shapes(_infer(fixed).graph)
        if not _missing(fixed.graph, shapes):
            return shapes
    except ModelError:
        pass  # the folded model may infer where the raw one does not
    return _static_shapes(_infer(fold_constants(fixed).model).graph)


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as e:
        raise ModelError(f"shape inference failed on the model: {e}") from e


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
                    f"cannot run it at batch {batch}: re-export it with a dynamic batch "
                    f"axis, torch.onnx.export(..., dynamic_axes={{{value.name!r}: {{0: "
                    "'batch'}})"
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
    """A copy with the input dimensions made static where they can be (the batch always,
    a dynamic last axis from ``length`` or metadata); also the batch (fixed, or 1)."""
    hint = _length_hint(model, length)
    fixed = copy_model(model)
    batch = 1
    for value in run_inputs(fixed):
        dims = value.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            if not dim.HasField("dim_value"):
                size = 1 if axis == 0 and len(dims) >= 2 else hint
                size = size if axis == 0 or axis == len(dims) - 1 else None
                if size is None:
                    logger.info("input %r axis %d stays dynamic: MACs that depend on it "
                                "are unknown", value.name, axis)  # fmt: skip
                    continue
                dim.dim_value = size
        if len(dims) >= 2:
            batch = max(batch, dims[0].dim_value)
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


def _weights(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    return [t for t in graph.initializer if t.data_type not in _NOT_WEIGHTS]


def _weight_sizes(graph: onnx.GraphProto) -> dict[str, int]:
    return {t.name: math.prod(t.dims) for t in _weights(graph)}


def _weight_bytes(graph: onnx.GraphProto) -> int:
    return sum(tensor_bytes(t.data_type, tuple(t.dims)) or 0 for t in _weights(graph))


def _rule(node: onnx.NodeProto) -> Callable[[onnx.NodeProto, _Shapes], int] | None:
    domain = "" if node.domain == "ai.onnx" else node.domain
    return _MAC_RULES.get((domain, node.op_type))


def _missing(graph: onnx.GraphProto, shapes: Mapping[str, Shape]) -> tuple[str, ...]:
    """Tensors of MAC-counted nodes whose shape static inference left unknown."""
    names = (v for n in graph.node if _rule(n) for v in (*n.input, *n.output))
    return tuple(dict.fromkeys(v for v in names if v and v not in shapes))


def _node_costs(
    graph: onnx.GraphProto, shapes: Mapping[str, Shape], weights: Mapping[str, int]
) -> tuple[tuple[NodeCost, ...], tuple[str, ...]]:
    """Each node's cost, and the names of the nodes whose MACs are unknown."""
    reads = [tuple(dict.fromkeys(i for i in n.input if i in weights)) for n in graph.node]
    readers = Counter(i for names in reads for i in names)
    seen: Counter[str] = Counter()
    costs, unknown = [], []
    for index, (node, names) in enumerate(zip(graph.node, reads, strict=True)):
        name = node.name or f"{node.op_type}_{index}"
        params = sum(_share(weights[i], readers[i], seen[i]) for i in names)
        seen.update(names)
        rule = _rule(node)
        try:
            macs = rule(node, _Shapes(shapes)) if rule else 0
        except _UnknownShape:
            macs = 0
            unknown.append(name)
        costs.append(NodeCost(name, node.op_type, params, macs))
    return tuple(costs), tuple(unknown)


def _share(size: int, readers: int, rank: int) -> int:
    """The part of a ``size``-element initializer that its ``rank``-th of ``readers`` gets."""
    return size // readers + (rank < size % readers)


class _UnknownShape(Exception):
    """A shape a MAC rule needs that no source knows (never leaves this module)."""


@dataclass(frozen=True)
class _Shapes:
    """Shape lookup; an unknown shape makes the node's MACs unknown."""

    known: Mapping[str, Shape]

    def __call__(self, value: str) -> Shape:
        try:
            return self.known[value]
        except KeyError:
            raise _UnknownShape(value) from None


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _conv_macs(node: onnx.NodeProto, shape: _Shapes, *, w: int = 1) -> int:
    return math.prod(shape(node.output[0])) * math.prod(shape(node.input[w])[1:])


def _conv_transpose_macs(node: onnx.NodeProto, shape: _Shapes) -> int:
    return math.prod(shape(node.input[0])) * math.prod(shape(node.input[1])[1:])


def _gemm_macs(node: onnx.NodeProto, shape: _Shapes, *, b: int = 1) -> int:
    a_shape, b_shape = shape(node.input[0]), shape(node.input[b])
    m, k = (a_shape[1], a_shape[0]) if _attr(node, "transA", 0) else a_shape
    n = b_shape[0] if _attr(node, "transB", 0) else b_shape[1]
    return m * k * n


def _matmul_macs(node: onnx.NodeProto, shape: _Shapes) -> int:
    a = shape(node.input[0])
    return math.prod(shape(node.output[0])) * a[-1]


_MS = "com.microsoft"
_MAC_RULES: Mapping[tuple[str, str], Callable[[onnx.NodeProto, _Shapes], int]] = {
    ("", "Conv"): _conv_macs,
    ("", "ConvTranspose"): _conv_transpose_macs,
    ("", "Gemm"): _gemm_macs,
    ("", "MatMul"): _matmul_macs,
    ("", "QLinearConv"): functools.partial(_conv_macs, w=3),
    ("", "ConvInteger"): _conv_macs,
    (_MS, "FusedConv"): _conv_macs,
    (_MS, "QGemm"): functools.partial(_gemm_macs, b=3),
    ("", "QLinearMatMul"): _matmul_macs,
    ("", "MatMulInteger"): _matmul_macs,
}

"""Sanity checks on an untrusted ONNX model, before anything is allocated for it or
onnxruntime sees it.

Contract
--------
Every check raises ``ModelError`` naming the model file and saying what was expected and
what was found; none of them allocates memory in proportion to what the file *declares*.

* ``check_file(path)`` — before reading: a non-empty regular file, under protobuf's 2 GiB
  message limit, and at most half the available memory (parsing holds the bytes and the
  message at once).
* ``check_structure(model, path)`` — before the checker: at most ``MAX_NODES`` nodes,
  subgraphs nested at most ``MAX_DEPTH`` deep, every node either of a domain that onnx has
  schemas for (``RUNNABLE_DOMAINS``: the checker and shape inference vet each node), or
  an op the installed onnxruntime's CPU provider registers a kernel for
  (``runtime_ops()``: ``com.microsoft`` QLinearConcat, QGemm, FusedConv, contrib
  Quantize/DequantizeLinear, ``com.microsoft.nchwc`` ..., what onnxruntime's quantizer
  and offline optimiser write), or a function the model defines; ONNX opset from
  ``MIN_OPSET`` (onnxruntime's oldest) to the newest this onnx knows;
  ``dsp.input_length``/``dsp.input_channels`` metadata (if any) whole numbers >= 1.
  ``runtime_ops()`` asks onnxruntime (its kernel registry, read once per process), so
  it follows the installed version; a domain it does not know is refused as needing a
  custom-op library, an op it lacks in a domain it knows (a fuzzed ``com.microsoft:Relu``,
  which onnxruntime refuses only when building the session) as having no kernel.
* ``check_external_data(model, path)`` — in ``dsp_deploy.external_data``.
* ``check_model(model, path)`` — with the data loaded: ``onnx.checker``, strict shape
  inference with data propagation, then sizes: fixed graph-input dims are ≥ 1 and one
  sample fits in memory; every tensor whose shape inference knows statically (symbolic
  dims counted as 1) fits in memory, so e.g. a ``ConstantOfShape([10**6, 10**6])`` is
  refused here, not by the kernel that would allocate it. Float weights are finite.
  Rules onnxruntime enforces only when it builds a kernel (found by fuzzing): no
  ``auto_pad`` beside explicit ``pads``; a Conv ``group`` >= 1 that fits the channels.

``quantized_reason(model)`` names the first quantized conv (QLinearConv, ConvInteger, or
a Conv whose weight a DequantizeLinear produces), or None: ``compress`` refuses those
(it prunes float convs; the order is compress, then quantize).

Memory available is ``dsp_deploy.memory.available_memory()`` (MemAvailable, capped by a
cgroup v2 limit; ``None`` where the platform says neither: the memory checks are then skipped).
The checks that use it take ``available=`` (bytes) to use another budget.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from dsp_deploy import memory, metadata
from dsp_deploy.errors import ModelError

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_DEPTH",
    "MAX_NODES",
    "MIN_OPSET",
    "PROTOBUF_LIMIT",
    "RUNNABLE_DOMAINS",
    "attribute_tensors",
    "check_file",
    "graph_tensors",
    "graphs",
    "memory_budget",
    "size_text",
    "check_model",
    "check_structure",
    "quantized_reason",
    "runtime_ops",
    "tensor_bytes",
]

PROTOBUF_LIMIT = 2**31 - 1  # protobuf refuses to parse a larger message
MAX_NODES = 200_000  # ~1000x our largest model; beyond it checks and sessions crawl
MAX_DEPTH = 8  # nested If/Loop/Scan bodies; C++ recursion depth in checker and runtime
# Domains whose every op onnx has a schema for, so the checker and shape inference vet
# each node; other domains' ops pass only where onnxruntime registers them (runtime_ops).
RUNNABLE_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
MIN_OPSET = 7  # onnxruntime has no kernels for older ops (fuzzing: Relu-1 at opset 5)
_FILE_MEMORY_FACTOR = 2  # bytes read + the parsed message


def size_text(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def memory_budget(available: int | None) -> int | None:
    return memory.available_memory() if available is None else available


# --- before reading ----------------------------------------------------------------------


def check_file(path: Path, *, available: int | None = None) -> int:
    """The file's size, once it is known to be a loadable regular file; else ModelError."""
    if not path.exists():
        raise ModelError(f"model file {path} does not exist")
    if not path.is_file():
        raise ModelError(f"model path {path} is not a file")
    size = path.stat().st_size
    if size == 0:
        raise ModelError(f"model file {path} is empty (0 bytes); expected an ONNX model")
    if size > PROTOBUF_LIMIT:
        raise ModelError(
            f"model file {path} is {size_text(size)}; an ONNX file must be under 2 GiB "
            "(larger weights belong in external data files)"
        )
    memory = memory_budget(available)
    if memory is not None and size * _FILE_MEMORY_FACTOR > memory:
        raise ModelError(
            f"model file {path} is {size_text(size)}; loading it needs about "
            f"{size_text(size * _FILE_MEMORY_FACTOR)} of memory, {size_text(memory)} is available"
        )
    return size


# --- structure ---------------------------------------------------------------------------


def graphs(graph: onnx.GraphProto, depth: int = 1) -> Iterator[tuple[onnx.GraphProto, int]]:
    """``graph`` and every subgraph under it, with its nesting depth (1 = main graph)."""
    yield graph, depth
    if depth > MAX_DEPTH:  # deeper levels are refused; do not recurse into them
        return
    for node in graph.node:
        for attr in node.attribute:
            for sub in (attr.g,) if attr.HasField("g") else attr.graphs:
                yield from graphs(sub, depth + 1)


@functools.cache
def runtime_ops() -> frozenset[tuple[str, str]]:
    """(domain, op) pairs the installed onnxruntime's CPU provider has kernels for
    (the ONNX domain as ``""``); read from onnxruntime's kernel registry once."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_c

    defs = ort_c.get_all_opkernel_def()
    ops = frozenset((d.domain, d.op_name) for d in defs if d.provider == "CPUExecutionProvider")
    logger.debug("onnxruntime's CPU provider registers %d ops", len(ops))
    return ops


def _domain(node: onnx.NodeProto) -> str:
    return "" if node.domain == "ai.onnx" else node.domain


def _unrunnable(node: onnx.NodeProto, functions: set[tuple[str, str]]) -> str | None:
    """Why onnxruntime cannot run ``node`` without a custom-op library, or None."""
    domain = _domain(node)
    if domain in RUNNABLE_DOMAINS or (node.domain, node.op_type) in functions:
        return None
    ops = runtime_ops()
    if (domain, node.op_type) in ops:
        return None
    where = f"node {node.name or node.op_type!r} uses op {node.op_type!r} of domain {domain!r}"
    domains = sorted(RUNNABLE_DOMAINS | {d for d, _ in ops})
    if domain in domains:
        return f"{where}; onnxruntime's CPU provider has no kernel for it in that domain"
    return (
        f"{where}; onnxruntime runs it only with a custom-op library (supported domains: "
        f"{', '.join(repr(d) for d in domains)})"
    )


def check_structure(model: onnx.ModelProto, path: Path) -> None:
    """Node count, nesting depth, op domains and opset versions; ModelError if off."""
    functions = {(f.domain, f.name) for f in model.functions}
    nodes = 0
    for graph, depth in graphs(model.graph):
        if depth > MAX_DEPTH:
            raise ModelError(f"model file {path} nests subgraphs deeper than {MAX_DEPTH} levels")
        nodes += len(graph.node)
        for node in graph.node:
            if (reason := _unrunnable(node, functions)) is not None:
                raise ModelError(f"model file {path}: {reason}")
    if nodes > MAX_NODES:
        raise ModelError(f"model file {path} has {nodes:,} nodes; expected at most {MAX_NODES:,}")
    _check_metadata(model, path)
    newest = onnx.defs.onnx_opset_version()
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and not MIN_OPSET <= opset.version <= newest:
            raise ModelError(
                f"model file {path} imports ONNX opset {opset.version}; expected "
                f"{MIN_OPSET} to {newest}"
            )


def _check_metadata(model: onnx.ModelProto, path: Path) -> None:
    """The size hints tools read to allocate inputs (``dsp.input_*``) are whole and >= 1."""
    props = {p.key: p.value for p in model.metadata_props}
    for key in (metadata.INPUT_LENGTH, metadata.INPUT_CHANNELS):
        text = props.get(key)
        # protobuf hands back bytes for a value that is not valid UTF-8
        ok = isinstance(text, str) and re.fullmatch(r"\s*[0-9]+\s*", text) and int(text) >= 1
        if text is not None and not ok:
            raise ModelError(f"model file {path}: {key} must be a whole number ≥ 1; found {text!r}")


def graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        yield from attribute_tensors(node)


def attribute_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors


def tensor_bytes(dtype: int, dims: list[int] | tuple[int, ...]) -> int | None:
    """Bytes of a dense tensor, sub-byte types packed (onnx-ir's bit widths); None for
    strings and unknown types."""
    import onnx_ir  # deferred: only sizes need it

    try:
        bits = onnx_ir.DataType(dtype).bitwidth
    except (ValueError, TypeError):
        return None
    return math.ceil(math.prod(dims) * bits / 8)


# --- with the data loaded ----------------------------------------------------------------


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def check_model(model: onnx.ModelProto, path: Path, *, available: int | None = None) -> None:
    """The ONNX checker, strict shape inference and sane sizes; ModelError if any fails."""
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as e:
        raise ModelError(f"model file {path} fails the ONNX checker: {_first_line(e)}") from e
    try:
        inferred = shape_inference.infer_shapes(
            model, check_type=True, strict_mode=True, data_prop=True
        )
    except (shape_inference.InferenceError, onnx.checker.ValidationError, ValueError) as e:
        raise ModelError(f"model file {path} fails ONNX shape inference: {_first_line(e)}") from e
    shapes = _static_shapes(inferred)
    for graph, _ in graphs(model.graph):
        for node in graph.node:
            _check_node(node, shapes, path)
        for tensor in graph_tensors(graph):
            _check_finite(tensor, path)
    memory = memory_budget(available)
    for value in model.graph.input:
        _check_value(value, path, memory, "input")
    if memory is not None:
        for value in (*inferred.graph.value_info, *inferred.graph.output):
            _check_value(value, path, memory, "tensor")
    logger.debug("%s: %d nodes, %d inferred shapes pass", path, len(model.graph.node),
                 len(inferred.graph.value_info))  # fmt: skip


def _check_finite(tensor: onnx.TensorProto, path: Path) -> None:
    """Float weights hold no NaN/inf: they would poison every output and statistic."""
    if onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).kind != "f":
        return
    try:
        values = numpy_helper.to_array(tensor)
    except ValueError as e:  # more data than the dims hold: the checker only counts "less"
        raise ModelError(
            f"model file {path}: tensor {tensor.name!r} holds data that does not fit its "
            f"dims {list(tensor.dims)}: {e}"
        ) from e
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        raise ModelError(
            f"model file {path}: tensor {tensor.name!r} holds {bad} NaN/inf values; "
            "expected finite weights"
        )


def _check_value(value: onnx.ValueInfoProto, path: Path, memory: int | None, kind: str) -> None:
    if not value.type.HasField("tensor_type"):
        return
    tensor = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in tensor.shape.dim)
    shown = tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim
    )
    least = 1 if kind == "input" else 0  # an input with a 0 dim can take no data
    if any(d < least for d in dims):
        raise ModelError(
            f"model file {path}: {kind} {value.name!r} declares shape {shown}; "
            f"expected dims >= {least}"
        )
    need = tensor_bytes(tensor.elem_type, dims) if tensor.elem_type else None
    if memory is not None and need is not None and need > memory:
        raise ModelError(
            f"model file {path}: {kind} {value.name!r} of shape {shown} needs "
            f"{size_text(need)} per sample; {size_text(memory)} of memory is available"
        )


# --- what onnxruntime refuses at kernel construction but onnx lets through -----------------

_PADDED = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool"})
_NO_AUTO_PAD = ("NOTSET", "")


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Shapes of the main graph's tensors as far as inference knows (None: unknown dim)."""
    shapes: dict[str, tuple[int | None, ...]] = {
        t.name: tuple(t.dims) for t in model.graph.initializer
    }
    for value in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            dims = value.type.tensor_type.shape.dim
            shapes.setdefault(
                value.name, tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
            )
    return shapes


def _check_node(
    node: onnx.NodeProto, shapes: dict[str, tuple[int | None, ...]], path: Path
) -> None:
    if node.op_type not in _PADDED or node.domain not in ("", "ai.onnx"):
        return
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    where = f"model file {path}: {node.op_type} node {node.name or node.output[0]!r}"
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode(errors="replace") if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in _NO_AUTO_PAD and "pads" in attrs:
        raise ModelError(f"{where} has both auto_pad={auto_pad} and pads; expected one of them")
    if node.op_type == "Conv" and len(node.input) > 1:
        _check_conv_group(attrs.get("group", 1), shapes.get(node.input[0]),
                          shapes.get(node.input[1]), where)  # fmt: skip


def _check_conv_group(
    group: int, x: tuple[int | None, ...] | None, w: tuple[int | None, ...] | None, where: str
) -> None:
    if not isinstance(group, int) or group < 1:
        raise ModelError(f"{where} has group={group}; expected a whole number >= 1")
    if not x or not w or len(x) < 2 or len(w) < 2 or None in (x[1], w[0], w[1]):
        return  # channels unknown statically: onnxruntime checks at run time
    if x[1] != w[1] * group or w[0] % group:
        raise ModelError(
            f"{where} has group={group} with {x[1]} input channels and weights of shape "
            f"{list(w)}; expected input channels = weight dim 1 x group, and weight dim 0 "
            "divisible by group"
        )


# --- quantized convs (compress prunes float convs only) -----------------------------------

_QUANTIZED_CONVS = frozenset({"QLinearConv", "ConvInteger"})
_FLOAT_CONVS = frozenset({"Conv", "ConvTranspose", "FusedConv"})


def quantized_reason(model: onnx.ModelProto) -> str | None:
    """The first quantized conv of the main graph, as "node 'c' is a QLinearConv", or None.

    Quantized: a QLinearConv or ConvInteger (any domain), or a Conv/ConvTranspose/FusedConv
    whose weight is the output of a DequantizeLinear (QDQ format, ONNX or contrib domain).
    """
    dequantized = {
        out for n in model.graph.node if n.op_type == "DequantizeLinear" for out in n.output
    }
    for node in model.graph.node:
        name = node.name or node.output[0]
        if node.op_type in _QUANTIZED_CONVS:
            return f"node {name!r} is a {node.op_type}"
        if node.op_type in _FLOAT_CONVS and len(node.input) > 1 and node.input[1] in dequantized:
            return f"node {name!r} is a {node.op_type} of DequantizeLinear weights (QDQ)"
    return None

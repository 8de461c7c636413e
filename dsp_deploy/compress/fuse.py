"""BatchNormalization folded, and Relu moved, through a Concat of Convs.

onnxruntime fuses ``Conv → BatchNormalization`` and ``Conv → Relu`` only when the second
node reads the Conv directly. InceptionTime ends each module with
``Concat(Conv_1 .. Conv_n) → BatchNormalization → Relu``, so its BN and Relu run as two
extra passes over the concatenated activations. Both commute with a channel Concat.

**BatchNormalization.** With per-channel ``s = scale / sqrt(var + eps)`` and
``t = B - mean · s``, ``BN(y)[o] = s[o] · y[o] + t[o]``. Channel ``o`` of the Concat is
channel ``o - off_k`` of the Conv ``k`` it comes from (``off_k``: the widths of the
Convs before it), and ``y[o] = W[o] * x + b[o]``, so::

    BN(Concat(Conv_1 .. Conv_n)) = Concat(Conv'_1 .. Conv'_n)
    W'[o] = s[o] · W[o]        b'[o] = s[o] · b[o] + t[o]   (b = 0 without a bias)

for a Concat along the channel axis whose only reader is the BN, with a BN in inference
form (one output) whose four parameters are initializers, and Convs whose outputs the
Concat alone reads and whose weights (and biases) are initializers. ``W`` of a grouped
Conv is still indexed by output channel first, so groups need nothing special. The
arithmetic runs in float64 and is rounded once to the weights' dtype.

**Relu.** Relu is element-wise, so ``Relu(Concat(c_1 .. c_n)) = Concat(Relu(c_1) ..
Relu(c_n))`` along any axis; moved before the Concat, each Relu directly follows its
Conv and onnxruntime fuses the two. Rewritten when the Relu is the Concat's only reader
and each ``c_k`` is a Conv output that the Concat alone reads.

**Other inputs.** A Concat input that is not such a Conv (a MaxPool, a Conv whose output
is read elsewhere too, or LITE's ``Relu(Concat(hand-crafted filters))``) keeps its share
of the normalisation: the BN's own node on that input alone, with the four parameters
sliced to its channels (the same arithmetic), and the Relu moves onto it as onto the
Convs. At most one input may be of that kind, since the BN's width minus the Convs'
widths gives its channels without shape inference (LITE has one); at least one input
must be a Conv. Anything else leaves the Concat alone, with the reason in
``FuseReport.skipped``. BN is folded first, so a module's Relu, which reads the BN,
then reads the Concat and moves too. The rewritten Concat keeps the name of
the BN's (Relu's) output, so readers and graph outputs are unchanged. New weights are new
initializers (one another node reads stays as it is); replaced ones nobody reads any more
are dropped.

The pass is an onnx-ir ``ModelPass`` (``dsp_deploy.passes``): ``fuse_concat(model)``
returns ``Rewrite(model, modified, FuseReport)``; def-use links come from onnx-ir, and
``irgraph.finish`` drops replaced initializers, fixes names and checks the shapes of the
values the pass created. Measurements: ``benchmarks/results/fuse_layout_notes.md``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from dsp_deploy.irgraph import (
    Expected,
    finish,
    initializer,
    initializer_value,
    is_op,
    only_reader,
    opset,
)
from dsp_deploy.passes import ModelPass, Rewrite, apply

logger = logging.getLogger(__name__)

_NO_CONCAT = "does not read a Concat"
_FLOATS = frozenset({ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16})
Part = ir.Node | None  # a Concat input: its Conv, or None for another source


@dataclass(frozen=True)
class FuseReport:
    """BN nodes folded and Relu nodes moved (labels: name, else ``op#position`` in the
    input); and, for each BN or Relu that reads a Concat but stayed, ``(label, reason)``."""

    batchnorms: tuple[str, ...]
    relus: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]


@dataclass
class _Edits:
    """What one run of the pass has created: initializers, and shapes to check."""

    new: list[ir.Value]
    expected: list[Expected]


def _concat_parts(value: ir.Value) -> tuple[ir.Node, list[Part]] | str:
    """The Concat producing ``value`` and, per input, the Conv it comes from where the
    Concat alone reads that Conv (None for any other input); or why not."""
    concat = value.producer()
    if not is_op(concat, "Concat"):
        return _NO_CONCAT
    if not only_reader(value):
        return "the Concat has other readers"
    parts = [_exclusive_conv(v) for v in concat.inputs]
    if not any(parts):
        return "no Concat input is a Conv output that the Concat alone reads"
    return concat, parts


def _exclusive_conv(value: ir.Value | None) -> Part:
    conv = None if value is None else value.producer()
    return conv if is_op(conv, "Conv") and only_reader(value) else None


# --- BatchNormalization ----------------------------------------------------------------


def _bn_form_reason(bn: ir.Node, version: int) -> str | None:
    get = bn.attributes.get_int
    if sum(1 for o in bn.outputs if o.name) != 1 or get("training_mode", 0):
        return "training form (running statistics as outputs)"
    if version < 7 and not get("is_test", 0):
        return "training form (is_test = 0)"
    if get("spatial", 1) != 1:
        return "spatial = 0 normalises each position separately"
    missing = [p.name for p in bn.inputs[1:5] if initializer_value(p) is None]
    return f"parameters {missing} are not initializers" if missing else None


def _conv_reason(conv: ir.Node) -> str | None:
    params = [p for p in conv.inputs[1:3] if p is not None]
    missing = [p.name for p in params if initializer_value(p) is None]
    if missing:
        return f"Conv {conv.name!r}: {missing} are not initializers"
    if params[0].const_value.dtype not in _FLOATS:
        return f"Conv {conv.name!r}: weights are not floating point"
    return None


def _channel_axis(concat: ir.Node, rank: int) -> bool:
    axis = concat.attributes.get_int("axis", 1)
    return (axis + rank if axis < 0 else axis) == 1


def _bn_match(bn: ir.Node, version: int):
    """``(concat, parts, widths)`` when ``bn`` folds into the Convs before its Concat
    (``parts``: each input's Conv, or None where a slice of the BN stays), else why not."""
    found = _bn_form_reason(bn, version) or _concat_parts(bn.inputs[0])
    if isinstance(found, str):
        return found
    concat, parts = found
    reasons = [None if c is None else _conv_reason(c) for c in parts]
    if all(c is None or r for c, r in zip(parts, reasons, strict=True)):
        return next(r for r in reasons if r)  # every Conv part has one: name the first
    parts = [None if r else c for c, r in zip(parts, reasons, strict=True)]
    return _widths(bn, concat, parts)


def _widths(bn: ir.Node, concat: ir.Node, parts: list[Part]):
    weights = [None if c is None else initializer_value(c.inputs[1]) for c in parts]
    rank = next(w for w in weights if w is not None).ndim
    if not _channel_axis(concat, rank):
        return f"Concat axis {concat.attributes.get_int('axis', 1)} is not the channel axis"
    params = [initializer_value(p) for p in bn.inputs[1:5]]
    if any(p.ndim != 1 for p in params):
        return "BN parameters are not vectors"
    channels = len(params[0])
    known = sum(len(w) for w in weights if w is not None)
    others = [concat.inputs[k].name for k, w in enumerate(weights) if w is None]
    if len(others) > 1:  # their widths would need shape inference; LITE has one
        return f"Concat inputs {others} are not Convs the BN folds into (at most one may be)"
    if known + (1 if others else 0) > channels or (not others and known != channels):
        return f"Convs give {known} channels, the BN normalises {channels}"
    return concat, parts, [len(w) if w is not None else channels - known for w in weights]


def _affine(bn: ir.Node) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(s, t)`` with ``BN(y) = s · y + t`` (module doc), in float64."""
    scale, bias, mean, var = (initializer_value(p).astype(np.float64) for p in bn.inputs[1:5])
    s = scale / np.sqrt(var + bn.attributes.get_float("epsilon", 1e-5))
    return s, bias - mean * s


def _fold(
    bn: ir.Node, concat: ir.Node, parts: list[Part], widths: list[int], label: str, edits: _Edits
) -> None:
    """Fold ``bn`` into the Conv parts; each other part gets a BN over its own channels
    (the same node on sliced parameters), placed before the Concat."""
    s, t = _affine(bn)
    start = 0
    for k, (conv, width) in enumerate(zip(parts, widths, strict=True)):
        rows = slice(start, start + width)
        start = rows.stop
        if conv is None:
            _bn_slice(bn, concat, k, rows, f"{label}_{k}", edits)
        else:
            _scale_conv(conv, s[rows], t[rows], edits)


def _bn_slice(bn: ir.Node, concat: ir.Node, k: int, rows: slice, name: str, edits: _Edits) -> None:
    params = [initializer(initializer_value(p)[rows], f"{p.name}_part") for p in bn.inputs[1:5]]
    edits.new.extend(params)
    source = concat.inputs[k]
    part = ir.Node(
        "",
        "BatchNormalization",
        [source, *params],
        attributes=tuple(bn.attributes.values()),
        name=name,
    )
    _feed(concat, k, part, f"{source.name}_bn", edits)


def _scale_conv(conv: ir.Node, s: np.ndarray, t: np.ndarray, edits: _Edits) -> None:
    """``W' = s · W``, ``b' = s · b + t`` as new initializers of ``conv``."""
    w_in = conv.inputs[1]
    b_in = conv.inputs[2] if len(conv.inputs) > 2 else None
    w = initializer_value(w_in)
    b = 0.0 if b_in is None else initializer_value(b_in)
    scaled = w.astype(np.float64) * s.reshape(-1, *[1] * (w.ndim - 1))
    shifted = np.asarray(b, np.float64) * s + t
    w_new = initializer(scaled.astype(w.dtype), f"{w_in.name}_bn")
    b_new = initializer(shifted.astype(w.dtype), f"{(b_in or w_in).name}_bn_bias")
    edits.new += [w_new, b_new]
    conv.resize_inputs(3)
    conv.replace_input_with(1, w_new)
    conv.replace_input_with(2, b_new)


def _feed(concat: ir.Node, k: int, node: ir.Node, name: str, edits: _Edits) -> None:
    """Insert ``node`` (reading Concat input ``k``) before ``concat``, which reads it."""
    source, out = concat.inputs[k], node.outputs[0]
    out.name, out.type = name, source.type
    concat.graph.insert_before(concat, node)
    concat.replace_input_with(k, out)
    edits.expected.append((out, source))


def _take_over(node: ir.Node, concat: ir.Node, edits: _Edits) -> None:
    """``concat`` writes what ``node`` (which read it) wrote, under its name; ``node`` goes."""
    old, out = node.outputs[0], concat.outputs[0]
    name = old.name
    ir.convenience.replace_all_uses_with(old, out, replace_graph_outputs=True)
    node.graph.remove(node, safe=True)
    out.name = name
    edits.expected.append((out, old.shape))


# --- Relu --------------------------------------------------------------------------------


def _split_relu(concat: ir.Node, label: str, edits: _Edits) -> None:
    """One Relu per Concat input, before the Concat, which reads their outputs."""
    for k, source in enumerate(concat.inputs):
        _feed(
            concat,
            k,
            ir.Node("", "Relu", [source], name=f"{label}_{k}"),
            f"{source.name}_relu",
            edits,
        )


# --- the pass ------------------------------------------------------------------------


class FuseConcat(ModelPass[FuseReport]):
    """BN folded into, and Relu moved before, a Concat of Convs (module doc)."""

    def rewrite(self, model: ir.Model) -> tuple[bool, FuseReport]:
        graph, edits = model.graph, _Edits([], [])
        labels = {node: node.name or f"{node.op_type}#{i}" for i, node in enumerate(graph)}
        folded, skipped_bn = _sweep(graph, "BatchNormalization", opset(model), labels, edits)
        moved, skipped_relu = _sweep(graph, "Relu", opset(model), labels, edits)
        if folded or moved:
            finish(model, edits.new, edits.expected)
        logger.info(
            "%d BatchNormalization folded, %d Relu moved before a Concat", len(folded), len(moved)
        )
        report = FuseReport(tuple(folded), tuple(moved), tuple(skipped_bn + skipped_relu))
        return bool(folded or moved), report


def _sweep(
    graph: ir.Graph, op_type: str, version: int, labels: dict[ir.Node, str], edits: _Edits
) -> tuple[list[str], list[tuple[str, str]]]:
    """One rewrite over the nodes of ``op_type``: the labels rewritten, and those skipped."""
    done, skipped = [], []
    for node in [n for n in graph if is_op(n, op_type)]:
        label = labels[node]
        bn = op_type == "BatchNormalization"
        found = _bn_match(node, version) if bn else _concat_parts(node.inputs[0])
        if isinstance(found, str):
            if found != _NO_CONCAT:
                skipped.append((label, found))
                logger.debug("%s stays: %s", label, found)
            continue
        if bn:
            _fold(node, *found, label, edits)
        else:
            _split_relu(found[0], label, edits)
        _take_over(node, found[0], edits)
        done.append(label)
    return done, skipped


def fuse_concat(model: onnx.ModelProto) -> Rewrite[FuseReport]:
    """``model`` with BN folded into, and Relu moved before, a Concat of Convs.

    ``model`` is not modified. Only the main graph is rewritten.
    """
    return apply(FuseConcat(), model)


__all__ = ["FuseConcat", "FuseReport", "fuse_concat"]

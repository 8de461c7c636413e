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
``FuseResult.skipped``. BN is folded first, so a module's Relu, which reads the BN,
then reads the Concat and moves too. The rewritten Concat keeps the name of
the BN's (Relu's) output, so readers and graph outputs are unchanged. New weights are new
initializers (one another node reads stays as it is); replaced ones nobody reads any more
are dropped.

Measured (``benchmarks/fuse_concat.py``, onnxruntime 1.32, 1 thread, AMD EPYC AVX2,
fused / original latency, median of 15 interleaved rounds on a machine shared with a
background sweep, so ±3% is noise): every shipped GunPoint model, dense and pruned, at
batch 1 and 64, came out 0.944–1.006 (LITE 0.944–0.981, LITETime 0.951–0.997, Inception
0.981–0.986, InceptionTime 0.949–1.006); logits agree to 2.9e-7 of their largest
magnitude. Before LITE's BN was sliced (it stayed whole), LITE and LITETime were
0.96–1.04. Gains this small and this noisy keep ``compress --fuse`` off by default.
With ``--conv2d`` the moved Relus go inside the wrappers of blocked Convs and fuse there
(``layout``): fused --conv2d / --conv2d 0.948–0.991. On the emulated Cortex-A72
(``fuse_concat.py --emulated``, one emulated process, 35 rounds, batch 1, LITE also 64)
onnxruntime's aarch64 build fuses the same way (Inception's optimised graph loses its 6
BN and gains 24 FusedConv), yet fused / original came out 0.977–1.014 for LITE and
Inception, dense and pruned, with per-round quartiles 0.12–0.27 apart on a busy host: no
gain that run could resolve. Emulated timings compare variants within one run only;
they are no Pi latencies.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from dsp_deploy.compress.graph import attr, copy_model, names_read, node_label

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FuseResult:
    """The rewritten copy; BN nodes folded and Relu nodes moved (labels); and, for each
    BN or Relu that reads a Concat but stayed, ``(label, reason)``."""

    model: onnx.ModelProto
    batchnorms: tuple[str, ...]
    relus: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class _Index:
    """Producer of each tensor, how often it is read (graph outputs and subgraphs count),
    and the initializers that are constants (not also graph inputs, which can override)."""

    nodes: tuple[onnx.NodeProto, ...]
    producer: dict[str, int]
    reads: Counter[str]
    constants: dict[str, onnx.TensorProto]

    @classmethod
    def build(cls, graph: onnx.GraphProto) -> _Index:
        overridable = {v.name for v in graph.input}
        nodes = tuple(graph.node)
        return cls(
            nodes=nodes,
            producer={o: i for i, n in enumerate(nodes) for o in n.output if o},
            reads=Counter([*names_read(graph.node), *(o.name for o in graph.output)]),
            constants={t.name: t for t in graph.initializer if t.name not in overridable},
        )

    def only_reader(self, name: str) -> bool:
        return self.reads[name] == 1

    def made_by(self, name: str) -> onnx.NodeProto | None:
        """The node producing ``name`` (None for graph inputs and initializers)."""
        position = self.producer.get(name)
        return None if position is None else self.nodes[position]


def _is(node: onnx.NodeProto, op_type: str) -> bool:
    return node.op_type == op_type and node.domain in ("", "ai.onnx")


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


_NO_CONCAT = "does not read a Concat"
Part = onnx.NodeProto | None  # a Concat input: its Conv, or None for another source


def _concat_parts(name: str, index: _Index) -> tuple[onnx.NodeProto, list[Part]] | str:
    """The Concat producing ``name`` and, per input, the Conv it comes from where the
    Concat alone reads that Conv (None for any other input); or why not."""
    concat = index.made_by(name)
    if concat is None or not _is(concat, "Concat"):
        return _NO_CONCAT
    if not index.only_reader(name):
        return "the Concat has other readers"
    parts: list[Part] = []
    for i in concat.input:
        conv = index.made_by(i)
        exclusive = conv is not None and _is(conv, "Conv") and index.only_reader(i)
        parts.append(conv if exclusive else None)
    if not any(parts):
        return "no Concat input is a Conv output that the Concat alone reads"
    return concat, parts


# --- BatchNormalization ----------------------------------------------------------------


def _bn_form_reason(bn: onnx.NodeProto, opset: int, index: _Index) -> str | None:
    if len([o for o in bn.output if o]) != 1 or attr(bn, "training_mode", 0):
        return "training form (running statistics as outputs)"
    if opset < 7 and not attr(bn, "is_test", 0):
        return "training form (is_test = 0)"
    if attr(bn, "spatial", 1) != 1:
        return "spatial = 0 normalises each position separately"
    missing = [p for p in bn.input[1:5] if p not in index.constants]
    return f"parameters {missing} are not initializers" if missing else None


def _conv_reason(conv: onnx.NodeProto, index: _Index) -> str | None:
    params = [p for p in conv.input[1:3] if p]
    missing = [p for p in params if p not in index.constants]
    if missing:
        return f"Conv {conv.name!r}: {missing} are not initializers"
    if index.constants[params[0]].data_type not in _FLOATS:
        return f"Conv {conv.name!r}: weights are not floating point"
    return None


_FLOATS = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16})


def _channel_axis(concat: onnx.NodeProto, rank: int) -> bool:
    axis = attr(concat, "axis", 1)
    return (axis + rank if axis < 0 else axis) == 1


def _bn_match(bn: onnx.NodeProto, opset: int, index: _Index):
    """``(concat, parts, widths)`` when ``bn`` folds into the Convs before its Concat
    (``parts``: each input's Conv, or None where a slice of the BN stays), else why not."""
    reason = _bn_form_reason(bn, opset, index)
    found = reason or _concat_parts(bn.input[0], index)
    if isinstance(found, str):
        return found
    concat, parts = found
    reasons = [None if c is None else _conv_reason(c, index) for c in parts]
    if all(c is None or r for c, r in zip(parts, reasons, strict=True)):
        return next(r for r in reasons if r)  # every Conv part has one: name the first
    parts = [None if r else c for c, r in zip(parts, reasons, strict=True)]
    weights = [index.constants[c.input[1]] if c is not None else None for c in parts]
    rank = len(next(w for w in weights if w is not None).dims)
    if not _channel_axis(concat, rank):
        return f"Concat axis {attr(concat, 'axis', 1)} is not the channel axis"
    if any(len(index.constants[p].dims) != 1 for p in bn.input[1:5]):
        return "BN parameters are not vectors"
    channels = int(index.constants[bn.input[1]].dims[0])
    known = sum(int(w.dims[0]) for w in weights if w is not None)
    others = [concat.input[k] for k, w in enumerate(weights) if w is None]
    if len(others) > 1:  # their widths would need shape inference; LITE has one
        return f"Concat inputs {others} are not Convs the BN folds into (at most one may be)"
    if known + (1 if others else 0) > channels or (not others and known != channels):
        return f"Convs give {known} channels, the BN normalises {channels}"
    widths = [int(w.dims[0]) if w is not None else channels - known for w in weights]
    return concat, parts, widths


def _affine(bn: onnx.NodeProto, index: _Index) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(s, t)`` with ``BN(y) = s · y + t`` (module doc), in float64."""
    scale, bias, mean, var = (
        numpy_helper.to_array(index.constants[p]).astype(np.float64) for p in bn.input[1:5]
    )
    s = scale / np.sqrt(var + attr(bn, "epsilon", 1e-5))
    return s, bias - mean * s


def _fold(
    graph: onnx.GraphProto,
    bn: onnx.NodeProto,
    concat: onnx.NodeProto,
    parts: list[Part],
    widths: list[int],
    index: _Index,
    names: _Names,
) -> list[onnx.NodeProto]:
    """Fold ``bn`` into the Conv parts; each other part gets a BN over its own channels
    (the same node on sliced parameters). Returns those BNs, to insert before the Concat."""
    s, t = _affine(bn, index)
    label = bn.name or bn.output[0]
    start, slices = 0, []
    for k, (conv, width) in enumerate(zip(parts, widths, strict=True)):
        rows = slice(start, start + width)
        start = rows.stop
        if conv is None:
            params = [
                names.add(graph, numpy_helper.to_array(index.constants[p])[rows], f"{p}_part")
                for p in bn.input[1:5]
            ]
            out = names.fresh(f"{concat.input[k]}_bn")
            part = onnx.helper.make_node(
                "BatchNormalization",
                [concat.input[k], *params],
                [out],
                name=names.node(f"{label}_{k}"),
            )
            part.attribute.extend(bn.attribute)
            slices.append(part)
            concat.input[k] = out
            continue
        w = numpy_helper.to_array(index.constants[conv.input[1]])
        has_bias = len(conv.input) > 2 and conv.input[2]
        b = numpy_helper.to_array(index.constants[conv.input[2]]) if has_bias else 0.0
        scaled = w.astype(np.float64) * s[rows].reshape(-1, *[1] * (w.ndim - 1))
        shifted = np.asarray(b, np.float64) * s[rows] + t[rows]
        w_name = names.add(graph, scaled.astype(w.dtype), f"{conv.input[1]}_bn")
        b_name = names.add(
            graph,
            shifted.astype(w.dtype),
            f"{conv.input[2] if has_bias else conv.input[1]}_bn_bias",
        )
        del conv.input[1:]
        conv.input.extend([w_name, b_name])
    concat.output[0] = bn.output[0]
    return slices


# --- Relu --------------------------------------------------------------------------------


def _split_relu(
    relu: onnx.NodeProto, concat: onnx.NodeProto, names: _Names
) -> list[onnx.NodeProto]:
    """One Relu per Concat input, to insert before the Concat, which takes their outputs."""
    label = relu.name or relu.output[0]  # "<op>_<position>" could be another node's name
    nodes = []
    for k, name in enumerate(concat.input):
        out = names.fresh(f"{name}_relu")
        nodes.append(onnx.helper.make_node("Relu", [name], [out], name=names.node(f"{label}_{k}")))
        concat.input[k] = out
    concat.output[0] = relu.output[0]
    return nodes


# --- the pass ------------------------------------------------------------------------


class _Names:
    """Tensor names (initializers, node outputs, inputs) and node names not taken yet."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.taken = {t.name for t in graph.initializer} | {v.name for v in graph.input}
        self.taken |= {o for n in graph.node for o in n.output}
        self.nodes = {n.name for n in graph.node if n.name}

    def fresh(self, base: str) -> str:
        return self._first_free(base, self.taken)

    def node(self, base: str) -> str:
        """A node name no other node has (onnxruntime refuses duplicates)."""
        return self._first_free(base, self.nodes)

    @staticmethod
    def _first_free(base: str, taken: set[str]) -> str:
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        return name

    def add(self, graph: onnx.GraphProto, value: np.ndarray, base: str) -> str:
        name = self.fresh(base)
        graph.initializer.append(numpy_helper.from_array(value, name))
        return name


def _rewrite(graph: onnx.GraphProto, op_type: str, opset: int, labels: dict[str, str]):
    """One sweep of one rewrite over ``graph``: the labels rewritten, and those skipped.
    ``labels``: node labels by first output, from the input model (positions shift)."""
    index, names = _Index.build(graph), _Names(graph)
    done, skipped, dropped = [], [], set()
    drop: set[int] = set()
    insert: dict[int, list[onnx.NodeProto]] = {}  # new nodes to place before a position
    for position, node in enumerate(index.nodes):
        if not _is(node, op_type):
            continue
        label = labels.get(node.output[0]) or node_label(node, position)
        bn = op_type == "BatchNormalization"
        found = _bn_match(node, opset, index) if bn else _concat_parts(node.input[0], index)
        if isinstance(found, str):
            if found != _NO_CONCAT:
                skipped.append((label, found))
                logger.debug("%s stays: %s", label, found)
            continue
        concat = found[0]
        dropped.add(concat.output[0])
        drop.add(position)
        done.append(label)
        before_concat = index.producer[node.input[0]]
        if bn:
            _, parts, widths = found
            insert[before_concat] = _fold(graph, node, concat, parts, widths, index, names)
        else:
            insert[before_concat] = _split_relu(node, concat, names)
    if done:
        nodes = [
            new
            for position, node in enumerate(index.nodes)
            for new in (*insert.get(position, ()), *([] if position in drop else [node]))
        ]
        del graph.node[:]
        graph.node.extend(nodes)
        kept = [v for v in graph.value_info if v.name not in dropped]
        del graph.value_info[:]
        graph.value_info.extend(kept)
    return done, skipped


def _drop_orphans(graph: onnx.GraphProto, before: set[str]) -> None:
    """Remove initializers that were read before the rewrite and no longer are."""
    read = set(names_read(graph.node)) | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in read or t.name not in before]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def fuse_concat(model: onnx.ModelProto) -> FuseResult:
    """A copy of ``model`` with BN folded into, and Relu moved before, a Concat of Convs.

    ``model`` is not modified. Only the main graph is rewritten.
    """
    out = copy_model(model)
    graph = out.graph
    before = set(names_read(graph.node))
    labels = {n.output[0]: node_label(n, i) for i, n in enumerate(graph.node) if n.output}
    folded, skipped_bn = _rewrite(graph, "BatchNormalization", _opset(out), labels)
    moved, skipped_relu = _rewrite(graph, "Relu", _opset(out), labels)
    if folded:
        _drop_orphans(graph, before)
    logger.info(
        "%d BatchNormalization folded, %d Relu moved before a Concat", len(folded), len(moved)
    )
    return FuseResult(out, tuple(folded), tuple(moved), tuple(skipped_bn + skipped_relu))


__all__ = ["FuseResult", "fuse_concat"]

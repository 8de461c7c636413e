"""Two clean-up passes for graphs from ``torch.onnx.export`` (each returns a copy).

``fold_constants``: a node whose inputs are all constants (initializers, ``Constant``
outputs) is evaluated once with ``onnx.reference`` and replaced by initializers. The
TorchScript exporter leaves such cones behind: the pads of ``F.pad`` are computed by a
ConstantOfShape/Concat/Reshape/Slice(step −1)/Transpose/Cast chain its own folder skips,
and initializers with equal values are deduplicated through ``Identity`` nodes.

``fold_pads_into_convs``: ``Conv(Pad(x, p, 0), W)`` = ``Conv(x, W)`` with
``pads += p`` on the spatial axes, when the Pad is constant-mode with value 0, pads
nothing on the batch and channel axes, and every consumer is such a Conv (reading it as
``X``) with no ``auto_pad`` other than ``NOTSET``. The result has only explicit ``pads``.
Unused nodes, initializers and value_info are dropped afterwards.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from dsp_deploy.compress.graph import drop_unused_nodes


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every all-constant node evaluated into initializers."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    inputs = {i.name for i in graph.input}
    kept = []
    for node in graph.node:
        args = [i for i in node.input if i]
        if node.domain in ("", "ai.onnx") and all(a in consts and a not in inputs for a in args):
            values = ReferenceEvaluator(node).run(None, {a: consts[a] for a in args})
            consts.update(zip(node.output, (np.asarray(v) for v in values), strict=True))
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    _reset_initializers(graph, consts)
    return out


def fold_pads_into_convs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` where zero Pads in front of Convs become Conv ``pads``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    outputs = {o.name for o in graph.output}
    dropped = set()
    for node in graph.node:
        if node.op_type != "Pad" or node.output[0] in outputs:
            continue
        spatial = _zero_pad_amounts(node, consts)
        convs = consumers[node.output[0]]
        if (
            spatial is None
            or not convs
            or not all(_plain_conv_input(c, node.output[0]) for c in convs)
        ):
            continue
        for conv in convs:
            _add_conv_pads(conv, spatial)
            conv.input[0] = node.input[0]
        dropped.add(id(node))
    kept = [n for n in graph.node if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    _reset_initializers(graph, consts)
    return out


def _zero_pad_amounts(pad: onnx.NodeProto, consts: dict[str, np.ndarray]) -> list[int] | None:
    """Spatial pads ``[b1.., e1..]`` of a constant-zero Pad on (N, C, *), else None."""
    attrs = {a.name: helper.get_attribute_value(a) for a in pad.attribute}
    if attrs.get("mode", b"constant") != b"constant" or (len(pad.input) > 3 and pad.input[3]):
        return None  # an `axes` input: rare, not worth the bookkeeping
    if len(pad.input) < 2 or pad.input[1] not in consts:
        return None
    if len(pad.input) > 2 and pad.input[2]:
        value = consts.get(pad.input[2])
        if value is None or np.any(value != 0):
            return None
    pads = [int(v) for v in consts[pad.input[1]].ravel()]
    rank = len(pads) // 2
    begin, end = pads[:rank], pads[rank:]
    if rank < 3 or begin[:2] != [0, 0] or end[:2] != [0, 0] or min(pads) < 0:
        return None
    return begin[2:] + end[2:]


def _plain_conv_input(node: onnx.NodeProto, name: str) -> bool:
    if node.op_type != "Conv" or node.input[0] != name or name in node.input[1:]:
        return False
    auto_pad = next((a.s for a in node.attribute if a.name == "auto_pad"), b"NOTSET")
    return auto_pad == b"NOTSET"


def _add_conv_pads(conv: onnx.NodeProto, spatial: list[int]) -> None:
    for attr in conv.attribute:
        if attr.name == "pads":
            merged = [a + b for a, b in zip(attr.ints, spatial, strict=True)]
            del attr.ints[:]
            attr.ints.extend(merged)
            return
    conv.attribute.append(helper.make_attribute("pads", spatial))


def _reset_initializers(graph: onnx.GraphProto, consts: dict[str, np.ndarray]) -> None:
    """Initializers = the constants still read; value_info only for produced tensors."""
    drop_unused_nodes(graph)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    old = {t.name: t for t in graph.initializer}
    fresh = [
        old[name] if name in old else numpy_helper.from_array(consts[name], name)
        for name in consts
        if name in used
    ]
    del graph.initializer[:]
    graph.initializer.extend(fresh)
    produced = {o for n in graph.node for o in n.output}
    keep_info = [v for v in graph.value_info if v.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(keep_info)

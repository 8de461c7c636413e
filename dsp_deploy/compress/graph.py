"""A read-only index over an ONNX graph, and the normalisation the pass applies first.

``normalise(model)`` returns a copy in which unnamed nodes get the name
``<op_type>_<position>`` (as ``dsp_deploy.cost`` labels them), every constant subgraph
is folded into initializers (:mod:`dsp_deploy.compress.fold_constants`, after the naming,
so names still follow the input's positions), and every ``Conv`` has explicit ``pads``
instead of ``auto_pad`` where the length allows (onnxruntime rejects SAME auto_pad with
dilation, slicing needs the pads, and a constant channel folds only into an unpadded
Conv). For ``SAME_*`` along a spatial axis of length L (stride s, kernel k, dilation d,
span = (k − 1)·d + 1)::

    total = max((ceil(L / s) - 1) * s + span - L, 0) = max(span - s + r, 0),  r = (-L) mod s
    SAME_UPPER: begin = total // 2, end = total - begin     (SAME_LOWER: the other way round)

With s = 1, r = 0 and the total is ``span − 1 = (k − 1)·d`` whatever L; with span = 1
(k = 1) it is 0 whatever s. Otherwise (s ≥ 2, span ≥ 2) it depends on L: r = s − 1 gives
``span − 1 ≥ 1``, r = 0 gives ``max(span − s, 0) < span − 1``; so a dynamic L leaves the
node its ``auto_pad`` (logged), and ``rules`` treats such a Conv as padded. Node
positions index the copy: ``find_groups`` and ``prune`` both work on ``normalise(model)``.

``GraphIndex`` maps tensor names to their producer node, consumer nodes, constant values
(initializers and ``Constant`` nodes) and inferred shapes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import onnx
from onnx import numpy_helper

logger = logging.getLogger(__name__)

Dim = int | None
Shape = tuple[Dim, ...]


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A deep copy: the pass never edits a caller's model."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def attr(node: onnx.NodeProto, name: str, default=None):
    """Value of attribute ``name`` of ``node`` (ints/floats/lists/strings), or ``default``."""
    for a in node.attribute:
        if a.name == name:
            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def set_ints(node: onnx.NodeProto, name: str, values: list[int] | int) -> None:
    """Replace (or add) an int / ints attribute."""
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, onnx.helper.make_attribute(name, values)])


def node_label(node: onnx.NodeProto, position: int) -> str:
    """A human name for a node: its name, else op type and position."""
    return node.name or f"{node.op_type}#{position}"


def _shape_of(value: onnx.ValueInfoProto) -> Shape | None:
    t = value.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and attr(node, "value") is not None:
            values[node.output[0]] = numpy_helper.to_array(attr(node, "value"))
    return values


def _inferred(model: onnx.ModelProto) -> onnx.GraphProto:
    """The graph with inferred shapes; with data propagation, which sees through
    Shape → Concat → ConstantOfShape (tsai's AddCoords1d) where plain inference loses the
    rank of everything after it. Shape inference is a hint here, not a requirement."""
    for data_prop in (True, False):
        try:
            return onnx.shape_inference.infer_shapes(model, data_prop=data_prop).graph
        except Exception as e:
            logger.debug("shape inference (data_prop=%s) failed: %s", data_prop, e)
    return model.graph


@dataclass(frozen=True)
class GraphIndex:
    """Who produces and who reads each tensor; constants; shapes (batch may be None)."""

    nodes: tuple[onnx.NodeProto, ...]
    producer: Mapping[str, int]
    consumers: Mapping[str, tuple[int, ...]]
    constants: Mapping[str, np.ndarray]
    shapes: Mapping[str, Shape]
    outputs: frozenset[str]

    @classmethod
    def build(cls, model: onnx.ModelProto) -> GraphIndex:
        graph = model.graph
        inferred = _inferred(model)
        shapes = {}
        for value in (*inferred.input, *inferred.value_info, *inferred.output):
            shape = _shape_of(value)
            if shape is not None:
                shapes[value.name] = shape
        producer: dict[str, int] = {}
        consumers: dict[str, list[int]] = {}
        for i, node in enumerate(graph.node):
            for name in node.output:
                producer[name] = i
            for name in node.input:
                consumers.setdefault(name, []).append(i)
        constants = _constants(graph)
        for name, value in constants.items():
            shapes[name] = tuple(value.shape)
        return cls(
            nodes=tuple(graph.node),
            producer=MappingProxyType(producer),
            consumers=MappingProxyType({k: tuple(v) for k, v in consumers.items()}),
            constants=MappingProxyType(constants),
            shapes=MappingProxyType(shapes),
            outputs=frozenset(o.name for o in graph.output),
        )


def _same_pads(auto_pad: str, length: Dim, kernel: int, stride: int, dilation: int):
    span = (kernel - 1) * dilation + 1
    if stride == 1 or span == 1:  # the same for every length (module docstring)
        total = span - 1
    elif length is None:
        return None
    else:
        total = max((math.ceil(length / stride) - 1) * stride + span - length, 0)
    small, big = total // 2, total - total // 2
    return (small, big) if auto_pad == "SAME_UPPER" else (big, small)


def _explicit_pads(node: onnx.NodeProto, index: GraphIndex) -> list[int] | None:
    auto_pad = attr(node, "auto_pad", "NOTSET")
    weight = index.constants.get(node.input[1]) if len(node.input) > 1 else None
    kernel = list(attr(node, "kernel_shape", []) or ([] if weight is None else weight.shape[2:]))
    if auto_pad == "VALID":
        return [0] * (2 * len(kernel))
    if not kernel:
        return None
    n = len(kernel)
    strides = list(attr(node, "strides", [1] * n))
    dilations = list(attr(node, "dilations", [1] * n))
    shape = index.shapes.get(node.input[0])
    lengths = list(shape[2:]) if shape and len(shape) == n + 2 else [None] * n
    per_axis = zip(lengths, kernel, strides, dilations, strict=True)
    pairs = [_same_pads(auto_pad, *a) for a in per_axis]
    if any(p is None for p in pairs):
        return None
    return [p[0] for p in pairs] + [p[1] for p in pairs]


def _name_nodes(graph: onnx.GraphProto) -> None:
    taken = {n.name for n in graph.node if n.name}
    for position, node in enumerate(graph.node):
        if not node.name:
            name, k = f"{node.op_type}_{position}", 1
            while name in taken:
                name, k = f"{node.op_type}_{position}_{k}", k + 1
            node.name = name
            taken.add(name)


def normalise(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of ``model``: unnamed nodes named ``<op>_<position>``, constant subgraphs
    folded, Conv ``auto_pad`` replaced by explicit ``pads`` where possible."""
    from dsp_deploy.compress.fold_constants import fold_constants  # it imports this module

    out = copy_model(model)
    _name_nodes(out.graph)
    out = fold_constants(out).model
    index = GraphIndex.build(out)
    for position, node in enumerate(out.graph.node):
        if node.op_type != "Conv" or attr(node, "auto_pad", "NOTSET") == "NOTSET":
            continue
        pads = _explicit_pads(node, index)
        if pads is None:
            logger.info("%s keeps auto_pad: needs a static length", node_label(node, position))
            continue
        kept = [a for a in node.attribute if a.name != "auto_pad"]
        del node.attribute[:]
        node.attribute.extend(kept)
        set_ints(node, "pads", pads)
    return out


def names_read(nodes: Iterable[onnx.NodeProto]) -> Iterator[str]:
    """Every tensor name the nodes read (once per read), subgraph bodies included."""
    for node in nodes:
        yield from (i for i in node.input if i)
        for a in node.attribute:
            for g in (*([a.g] if a.HasField("g") else []), *a.graphs):
                yield from names_read(g.node)


def drop_unused_nodes(graph: onnx.GraphProto) -> set[str]:
    """Remove nodes none of whose outputs reach a graph output; returns every name still
    read (node inputs, also inside subgraphs, and the graph outputs)."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
            for a in node.attribute:  # names read inside subgraphs
                for g in (*([a.g] if a.HasField("g") else []), *a.graphs):
                    needed.update(n for sub in g.node for n in sub.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    return needed

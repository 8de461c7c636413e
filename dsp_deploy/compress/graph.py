"""The compress pass's view of a graph (onnx-ir), and ``Normalise``, the pass it applies first.

The analysis and the pruner read an ``onnx_ir.Model``: def-use through
``Value.producer()`` / ``Value.uses()``, constants from ``Value.const_value`` (an
initializer) or a ``Constant`` producer, shapes from onnx shape inference run as onnx-ir runs it
(with data propagation, which sees through Shape → Concat → ConstantOfShape, tsai's
AddCoords1d; a hint here, not a requirement).

``Normalise`` (a functional ``ModelPass``) gives a model in which unnamed nodes get the
name ``<op_type>_<position>`` (as ``dsp_deploy.cost`` labels them; onnx-ir's
``NameFixPass`` with that preference, which also makes every name unique), every
constant subgraph is folded into initializers (:mod:`dsp_deploy.compress.fold_constants`,
after the naming, so names follow the input's positions), and every ``Conv`` has
explicit ``pads`` instead of ``auto_pad`` where the length allows (onnxruntime rejects
SAME auto_pad with dilation, slicing needs the pads, and a constant channel folds only
into an unpadded Conv). For ``SAME_*`` along a spatial axis of length L (stride s,
kernel k, dilation d, span = (k − 1)·d + 1)::

    total = max((ceil(L / s) - 1) * s + span - L, 0) = max(span - s + r, 0),  r = (-L) mod s
    SAME_UPPER: begin = total // 2, end = total - begin     (SAME_LOWER: the other way round)

With s = 1, r = 0 and the total is ``span − 1 = (k − 1)·d`` whatever L; with span = 1
(k = 1) it is 0 whatever s. Otherwise (s ≥ 2, span ≥ 2) it depends on L: r = s − 1 gives
``span − 1 ≥ 1``, r = 0 gives ``max(span − s, 0) < span − 1``; so a dynamic L leaves the
node its ``auto_pad`` (logged), and ``rules`` treats such a Conv as padded. Normalise is
deterministic and keeps node order, so ``find_groups`` and ``prune``, which both run it,
see the same nodes at the same positions; the plan's fingerprint checks it.

``constant_value`` (``irgraph``) reads constants as compress needs them; ``copy_model``
(``passes``, re-exported) and ``set_ints`` serve the code that still holds protos
(calibration's probe copy, the pipeline's unchanged copy, the tests).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import onnx
import onnx_ir as ir
from onnx_ir.passes.common._c_api_utils import call_onnx_api
from onnx_ir.passes.common.naming import NameFixPass, SimpleNameGenerator

from dsp_deploy.irgraph import constant_value
from dsp_deploy.passes import ModelPass, apply, copy_model  # copy_model: re-exported

logger = logging.getLogger(__name__)

Dim = int | None
Shape = tuple[Dim, ...]
_LISTS = (ir.AttributeType.INTS, ir.AttributeType.FLOATS, ir.AttributeType.STRINGS)


def attr(node: ir.Node | onnx.NodeProto, name: str, default=None):
    """Value of attribute ``name`` (ints/floats/lists as lists, strings), or ``default``."""
    if isinstance(node, ir.Node):
        a = node.attributes.get(name)
        if a is None:
            return default
        return list(a.value) if a.type in _LISTS else a.value
    for a in node.attribute:
        if a.name == name:
            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def node_label(node: ir.Node | onnx.NodeProto, position: int) -> str:
    """A human name for a node: its name, else op type and position."""
    return node.name or f"{node.op_type}#{position}"


def shape_of(value: ir.Value | None) -> Shape | None:
    """The value's shape, symbolic dims as None (None: unknown)."""
    if value is None or value.shape is None:
        return None
    return tuple(d if isinstance(d, int) else None for d in value.shape)


def _infer(proto: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.shape_inference.infer_shapes(proto, check_type=False, data_prop=True)


def infer_shapes(model: ir.Model) -> None:
    """Shape inference in place, as onnx-ir's ``ShapeInferencePass`` runs it (its C-API
    helper hands onnx the graph without its large weights), but only the inferred
    ``value_info`` is read back into the node outputs, not the whole model, and graph
    outputs keep their declared shapes. A failure only logs: shapes are hints here."""
    try:
        inferred = call_onnx_api(_infer, model)
    except Exception as e:  # onnx raises several types; the shapes stay as they were
        logger.debug("shape inference failed: %s", e)
        return
    values = {v.name: v for v in intermediates(model.graph)}
    for info in inferred.graph.value_info:
        value, shape = values.get(info.name), ir.serde.deserialize_type_proto_for_shape(info.type)
        if value is not None and shape is not None:
            value.shape = shape
            if value.type is None:
                value.type = ir.serde.deserialize_type_proto_for_type(info.type)


def intermediates(graph: ir.Graph) -> Iterator[ir.Value]:
    """Values computed by nodes that are not graph outputs (their shapes are inferred)."""
    for node in graph:
        yield from (v for v in node.outputs if not v.is_graph_output())


class _PositionNames(SimpleNameGenerator):
    """Unnamed nodes are named ``<op_type>_<position>``."""

    def __init__(self, graph: ir.Graph) -> None:
        self.names = {node: f"{node.op_type}_{i}" for i, node in enumerate(graph)}

    def generate_node_name(self, node: ir.Node) -> str:
        return node.name or self.names.get(node, node.op_type)


@dataclass(frozen=True)
class NormaliseReport:
    """Nodes folded into initializers; Convs that keep ``auto_pad`` (a dynamic length)."""

    folded: tuple[str, ...]
    kept_auto_pad: tuple[str, ...]


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


def _explicit_pads(node: ir.Node) -> list[int] | None:
    auto_pad = attr(node, "auto_pad", "NOTSET")
    weight = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    kernel = list(attr(node, "kernel_shape", []) or ([] if weight is None else weight.shape[2:]))
    if auto_pad == "VALID":
        return [0] * (2 * len(kernel))
    if not kernel:
        return None
    n = len(kernel)
    strides = list(attr(node, "strides", [1] * n))
    dilations = list(attr(node, "dilations", [1] * n))
    shape = shape_of(node.inputs[0])
    lengths = list(shape[2:]) if shape and len(shape) == n + 2 else [None] * n
    per_axis = zip(lengths, kernel, strides, dilations, strict=True)
    pairs = [_same_pads(auto_pad, *a) for a in per_axis]
    if any(p is None for p in pairs):
        return None
    return [p[0] for p in pairs] + [p[1] for p in pairs]


def _pads_explicit(graph: ir.Graph) -> tuple[str, ...]:
    """Conv ``auto_pad`` → ``pads`` where the length allows; the Convs left as they were."""
    kept = []
    for node in graph:
        if node.op_type != "Conv" or attr(node, "auto_pad", "NOTSET") == "NOTSET":
            continue
        pads = _explicit_pads(node)
        if pads is None:
            logger.info("%s keeps auto_pad: needs a static length", node.name)
            kept.append(node.name)
            continue
        del node.attributes["auto_pad"]
        node.attributes["pads"] = ir.AttrInt64s("pads", pads)
    return tuple(kept)


def _needs_lengths(graph: ir.Graph) -> bool:
    """Whether a Conv's SAME ``auto_pad`` needs inferred lengths to become pads."""
    return any(n.op_type == "Conv" and attr(n, "auto_pad", "").startswith("SAME") for n in graph)


def normalise_model(model: ir.Model, *, shapes: bool = True) -> NormaliseReport:
    """Normalise ``model`` in place (module docstring); ``Normalise`` is the pass.
    ``shapes``: leave the inferred shapes on the values (else only where pads need them)."""
    from dsp_deploy.compress.fold_constants import fold_in_place  # it imports this module

    NameFixPass(_PositionNames(model.graph))(model)
    folded = fold_in_place(model)
    if shapes or _needs_lengths(model.graph):
        infer_shapes(model)
    return NormaliseReport(folded, _pads_explicit(model.graph))


class Normalise(ModelPass[NormaliseReport]):
    """Name nodes, fold constants, make Conv pads explicit (module docstring)."""

    def rewrite(self, model: ir.Model) -> tuple[bool, NormaliseReport]:
        return True, normalise_model(model)


def normalised(model: onnx.ModelProto) -> ir.Model:
    """``model`` normalised, as an onnx-ir model (the proto is untouched): normalised in
    place from a private copy of the proto, which nothing else holds, so no clone."""
    private = ir.from_proto(copy_model(model))
    normalise_model(private)
    return private


def normalise(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of ``model``: unnamed nodes named ``<op>_<position>``, constant subgraphs
    folded, Conv ``auto_pad`` replaced by explicit ``pads`` where possible."""
    return apply(Normalise(), model).model

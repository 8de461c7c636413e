"""Two clean-up passes for graphs from ``torch.onnx.export`` (onnx-ir ``ModelPass``es).

``fold_constants``: ``Constant`` nodes become initializers (onnx-ir's
``LiftConstantsToInitializersPass``), then every node of the default domain whose inputs
are all constants (initializers no graph input overrides) is evaluated once with
``onnx.reference`` and replaced by initializers of the same names. The TorchScript
exporter leaves such cones behind: the pads of ``F.pad`` are computed by a
ConstantOfShape/Concat/Reshape/Slice(step −1)/Transpose/Cast chain its own folder skips,
and initializers with equal values are deduplicated through ``Identity`` nodes, which
folding turns back into one initializer per reader (a BatchNormalization then reads its
own parameters, as the network has them). A node holding a subgraph or writing a graph
output stays. An ``Identity`` of a run-time value goes (onnx-ir's
``IdentityEliminationPass``).

``fold_pads_into_convs``: ``Conv(Pad(x, p, 0), W)`` = ``Conv(x, W)`` with
``pads += p`` on the spatial axes, when the Pad is constant-mode with value 0, pads
nothing on the batch and channel axes, and every reader is such a Conv (reading it as
``X`` only) with no ``auto_pad`` other than ``NOTSET``. The result has only explicit
``pads``; the Conv outputs keep their shapes, which ``irgraph.finish`` checks.

Both end with onnx-ir's ``RemoveUnusedNodesPass`` (nodes and initializers nothing reads).
onnx-ir 1.1.0 has no constant-folding pass of its own (checked; onnxscript's optimizer
is not a dependency).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
from onnx.reference import ReferenceEvaluator
from onnx_ir.passes.common import (
    IdentityEliminationPass,
    LiftConstantsToInitializersPass,
    RemoveUnusedNodesPass,
)

from dsp_deploy.irgraph import DEFAULT_DOMAINS, finish, initializer, initializer_value, is_op
from dsp_deploy.passes import ModelPass, Rewrite, apply

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoldReport:
    """Constant nodes lifted to initializers; op types of the nodes evaluated into
    initializers, in graph order; Identity nodes of run-time values eliminated."""

    lifted: int
    folded: tuple[str, ...]
    identities: int


@dataclass(frozen=True)
class PadReport:
    """The Pad nodes folded into the Convs reading them (name, else ``Pad#position``)."""

    folded: tuple[str, ...]


class FoldConstants(ModelPass[FoldReport]):
    """Every all-constant node of the main graph evaluated into initializers."""

    def rewrite(self, model: ir.Model) -> tuple[bool, FoldReport]:
        before = len(model.graph)
        LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
        folded = [n.op_type for n in list(model.graph) if _fold(n)]
        lifted = before - len(folded) - len(model.graph)
        IdentityEliminationPass()(model)
        identities = before - len(folded) - lifted - len(model.graph)
        RemoveUnusedNodesPass()(model)
        logger.debug("%d nodes folded, %d Identity gone", lifted + len(folded), identities)
        modified = bool(lifted or folded or identities)
        return modified, FoldReport(lifted, tuple(folded), identities)


def _fold(node: ir.Node) -> bool:
    """Evaluate ``node`` if all its inputs are constant; its outputs become initializers."""
    args = [v for v in node.inputs if v is not None]
    if not _foldable(node) or any(initializer_value(v) is None for v in args):
        return False
    feeds = {v.name: initializer_value(v) for v in args}
    values = ReferenceEvaluator(ir.serde.serialize_node(node)).run(None, feeds)
    graph = node.graph
    for out, value in zip(node.outputs, values, strict=True):
        const = initializer(np.asarray(value), out.name)
        out.replace_all_uses_with(const)
        out.name = None
        graph.register_initializer(const)
    graph.remove(node, safe=True)
    return True


def _foldable(node: ir.Node) -> bool:
    subgraph = (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
    return (
        node.domain in DEFAULT_DOMAINS
        and not any(o.is_graph_output() for o in node.outputs)
        and not any(a.type in subgraph for a in node.attributes.values())
    )


class FoldPads(ModelPass[PadReport]):
    """Zero Pads in front of Convs become Conv ``pads`` (module doc)."""

    def rewrite(self, model: ir.Model) -> tuple[bool, PadReport]:
        folded, expected = [], []
        for i, node in enumerate(list(model.graph)):
            convs = _conv_readers(node)
            spatial = _zero_pad_amounts(node) if convs else None
            if spatial is None:
                continue
            for conv in convs:
                _add_conv_pads(conv, spatial)
                expected.append((conv.outputs[0], conv.outputs[0].shape))
                conv.replace_input_with(0, node.inputs[0])
            folded.append(node.name or f"Pad#{i}")
        if folded:
            finish(model, expected=expected)
        return bool(folded), PadReport(tuple(folded))


def _conv_readers(pad: ir.Node) -> list[ir.Node]:
    """The Convs reading ``pad``'s output, if it is a Pad read only as a plain Conv ``X``."""
    if not is_op(pad, "Pad") or pad.outputs[0].is_graph_output():
        return []
    out = pad.outputs[0]
    readers = list({use.node: None for use in out.uses()})
    plain = all(_plain_conv_input(r, out) for r in readers)
    return readers if plain else []


def _plain_conv_input(node: ir.Node, value: ir.Value) -> bool:
    if not is_op(node, "Conv") or node.inputs[0] is not value or value in node.inputs[1:]:
        return False
    return node.attributes.get_string("auto_pad", "NOTSET") == "NOTSET"


def _zero_pad_amounts(pad: ir.Node) -> list[int] | None:
    """Spatial pads ``[b1.., e1..]`` of a constant-zero Pad on (N, C, *), else None."""
    inputs = list(pad.inputs) + [None] * (4 - len(pad.inputs))
    if pad.attributes.get_string("mode", "constant") != "constant" or inputs[3] is not None:
        return None  # an `axes` input: rare, not worth the bookkeeping
    amounts = initializer_value(inputs[1])
    value = None if inputs[2] is None else initializer_value(inputs[2])
    if amounts is None or (inputs[2] is not None and (value is None or np.any(value != 0))):
        return None
    pads = [int(v) for v in amounts.ravel()]
    rank = len(pads) // 2
    begin, end = pads[:rank], pads[rank:]
    if rank < 3 or begin[:2] != [0, 0] or end[:2] != [0, 0] or min(pads) < 0:
        return None
    return begin[2:] + end[2:]


def _add_conv_pads(conv: ir.Node, spatial: list[int]) -> None:
    current = conv.attributes.get_ints("pads", [0] * len(spatial))
    merged = [a + b for a, b in zip(current, spatial, strict=True)]
    conv.attributes["pads"] = ir.AttrInt64s("pads", merged)


def fold_constants(model: onnx.ModelProto) -> Rewrite[FoldReport]:
    """``model`` with every all-constant node evaluated into initializers (untouched)."""
    return apply(FoldConstants(), model)


def fold_pads_into_convs(model: onnx.ModelProto) -> Rewrite[PadReport]:
    """``model`` where zero Pads in front of Convs become Conv ``pads`` (untouched)."""
    return apply(FoldPads(), model)


__all__ = [
    "FoldConstants",
    "FoldPads",
    "FoldReport",
    "PadReport",
    "fold_constants",
    "fold_pads_into_convs",
]

"""Building the ensemble graph on onnx-ir: a skeleton, then one ``AddMember`` per member.

The skeleton holds the ensemble's input (the first member's, with channels and length
static where any member's are), its output (the first member's) and the ``Mean`` node
writing it, with no inputs yet. ``AddMember`` is a ``ModelPass``: on a clone of the
ensemble so far it moves a clone of the member's nodes and initializers in, every name
under the member's prefix (an unnamed node is named ``<prefix><op>_<k>``), the member's
input replaced by the ensemble's, its probabilities (through a ``Softmax(axis=-1)`` for
a logits member) one more input of the ``Mean``. onnx-ir's ``NameFixPass`` then makes
names unique and its ``ShapeInferencePass`` fills in shapes, checked for the output.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import onnx
import onnx_ir as ir
from onnx import version_converter

from dsp_deploy import __version__
from dsp_deploy.ensemble.members import PROBABILITIES, MemberSignature
from dsp_deploy.irgraph import finish
from dsp_deploy.passes import ModelPass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemberReport:
    """One member added: its label and prefix, how many nodes and initializers it
    brought, and whether it got a Softmax (a logits member)."""

    label: str
    prefix: str
    nodes: int
    initializers: int
    softmax: bool


class AddMember(ModelPass[MemberReport]):
    """The ensemble so far with one more member averaged in (module doc)."""

    def __init__(self, member: ir.Model, sig: MemberSignature, prefix: str) -> None:
        super().__init__()
        self.member, self.sig, self.prefix = member, sig, prefix

    def rewrite(self, model: ir.Model) -> tuple[bool, MemberReport]:
        graph, member = model.graph, self.member.clone().graph
        _prefix(member, self.prefix)
        member.inputs[0].replace_all_uses_with(graph.inputs[0])
        probs = member.outputs[0]
        nodes, inits = list(member), list(member.initializers.values())
        member.remove(nodes)
        member.initializers.clear()
        member.outputs.clear()
        mean = graph.outputs[0].producer()
        graph.insert_before(mean, nodes)
        for value in inits:
            graph.register_initializer(value)
        softmax = self.sig.output_kind != PROBABILITIES
        if softmax:
            probs = _softmax(graph, mean, probs, self.prefix)
        mean.resize_inputs(len(mean.inputs) + 1)
        mean.replace_input_with(len(mean.inputs) - 1, probs)
        report = MemberReport(self.sig.label, self.prefix, len(nodes), len(inits), softmax)
        return True, report


def _prefix(graph: ir.Graph, prefix: str) -> None:
    """Every value and node of ``graph`` renamed under ``prefix``."""
    for value in list(graph.initializers.values()):
        # A tensor read from a proto renames that proto: rename a new tensor instead.
        tensor = value.const_value
        value.const_value = ir.Tensor(tensor.numpy(), dtype=tensor.dtype)
        value.name = prefix + value.name
    graph.inputs[0].name = prefix + graph.inputs[0].name
    for k, node in enumerate(graph):
        node.name = prefix + (node.name or f"{node.op_type}_{k}")
        for out in node.outputs:
            if out.name:
                out.name = prefix + out.name


def _softmax(graph: ir.Graph, mean: ir.Node, logits: ir.Value, prefix: str) -> ir.Value:
    node = ir.node("Softmax", [logits], {"axis": -1}, name=f"{prefix}probabilities")
    node.outputs[0].name = f"{prefix}probabilities"
    graph.insert_before(mean, node)
    return node.outputs[0]


def skeleton(
    members: Sequence[onnx.ModelProto],
    sigs: Sequence[MemberSignature],
    opset: int,
    others: dict[str, int],
) -> ir.Model:
    """Input, output and an input-less ``Mean`` writing the output (module doc)."""
    x = _merged_input(sigs)
    y = ir.serde.deserialize_value_info_proto(sigs[0].output, None)
    mean = ir.node("Mean", [], outputs=[y], name="ensemble/mean")
    graph = ir.Graph(
        [x],
        [y],
        nodes=[mean],
        opset_imports={"": opset, **others},
        name="ensemble",
        doc_string=members[0].graph.doc_string or None,
    )
    return ir.Model(
        graph,
        ir_version=max(m.ir_version for m in members),
        producer_name="dsp-deploy",
        producer_version=__version__,
        doc_string=members[0].doc_string or None,
    )


def add_members(
    model: ir.Model, members: Sequence[ir.Model], sigs: Sequence[MemberSignature]
) -> tuple[ir.Model, tuple[MemberReport, ...]]:
    """``model`` (a skeleton) with every member added, names fixed, shapes inferred."""
    reports = []
    for i, (member, sig) in enumerate(zip(members, sigs, strict=True)):
        result = AddMember(member, sig, f"m{i}/")(model)
        model = result.model
        reports.append(result.report)
    output = model.graph.outputs[0]
    finish(model, expected=[(output, output.shape)])
    return model, tuple(reports)


def convert(model: onnx.ModelProto, sig: MemberSignature, opset: int) -> onnx.ModelProto:
    """``model`` at default-domain ``opset`` (``InputError`` if the converter fails)."""
    from dsp_deploy.errors import InputError

    if sig.opset == opset:
        return model
    logger.info("converting %s from opset %d to %d", sig.label, sig.opset, opset)
    try:
        return version_converter.convert_version(model, opset)
    except Exception as e:  # the C++ converter raises RuntimeError, ValueError, ...
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(
            f"{sig.label}: opset {sig.opset} cannot be converted to opset {opset} (another "
            f"member's): {first_line}; export it at opset {opset}"
        ) from e


def _merged_input(sigs: Sequence[MemberSignature]) -> ir.Value:
    """The first member's input, with channels/length made static where any member is."""
    x, *others = (ir.serde.deserialize_value_info_proto(s.input, None) for s in sigs)
    dims = list(x.shape.dims)
    for axis in (1, 2):
        static = [o.shape[axis] for o in others if isinstance(o.shape[axis], int)]
        if not isinstance(dims[axis], int) and any(d > 0 for d in static):
            dims[axis] = next(d for d in static if d > 0)
    x.shape = ir.Shape(dims)
    return x

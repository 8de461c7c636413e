"""Constants first: every constant subgraph of a model becomes initializers.

A tensor is *constant* when no graph input reaches its value:

* an initializer (also one that an IR < 4 lists as an input, as the analysis does), or
  the output of a ``Constant`` node;
* ``Shape(x)`` (with its ``start``/``end``) when shape inference gives those dims of x
  as numbers, and ``Gather(Shape(x), i)`` with a constant ``i`` naming only such dims:
  a dynamic batch or length stays dynamic, the fixed channel count and a fixed length
  become numbers (``x.size(-1)`` in a hand-written "same" padding);
* the output of a node of the default domain whose inputs are all constant, unless it
  is random, (de)quantizes (a QDQ model stays quantized), holds a subgraph, or writes a
  graph output.

Exporters leave such cones behind: TorchScript feeds an initializer through ``Identity``
when two parameters are equal (a BatchNormalization then reads a computed tensor), and
computes ``F.pad`` amounts with ConstantOfShape/Concat/Reshape/Slice/Transpose/Cast
chains; onnx's data propagation does not follow those, so a Pad or Reshape output had
no static shape and nothing behind it could be analysed or counted.

The cone is evaluated by onnxruntime (one session of just those nodes, graph
optimisation off), and each tensor it hands to the rest of the graph becomes an
initializer of the same name (onnx-ir: ``replace_all_uses_with``); nodes and
initializers left unread are dropped (onnx-ir's ``RemoveUnusedNodesPass``). Folding
can make more shapes static (a Pad with constant amounts), so the pass repeats until
nothing folds. Graph inputs and outputs, opsets, metadata and doc strings are untouched.

Checked and not used: onnx-ir 1.1.0 has no constant-folding pass; onnxscript's
optimizer is not a dependency of the deploy side; onnxruntime's offline optimiser
(``ORT_ENABLE_BASIC``) drops ``metadata_props``, adds eight opset imports, fuses Pad and
BatchNormalization into Convs (which changes what compress sees) and keeps ``Shape`` of
a tensor with a dynamic batch.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper
from onnx_ir.passes.common import RemoveUnusedNodesPass

from dsp_deploy.compress.graph import (
    attr,
    copy_model,
    infer_shapes,
    intermediates,
    shape_of,
)
from dsp_deploy.inference import session
from dsp_deploy.irgraph import constant_value
from dsp_deploy.passes import ModelPass

logger = logging.getLogger(__name__)

UNFOLDABLE = frozenset(
    {
        "Bernoulli",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "Multinomial",
        "QuantizeLinear",
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
    }
)
_GRAPHS = (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
Dims = tuple[int | None, ...]


@dataclass(frozen=True)
class FoldReport:
    """The nodes gone (names, else op types): the folded ones and those only they read."""

    folded: tuple[str, ...]


@dataclass(frozen=True)
class FoldResult:
    """The folded copy and the nodes gone from it."""

    model: onnx.ModelProto
    folded: tuple[str, ...]


def _dims(model: ir.Model) -> dict[str, Dims]:
    """Shapes from inference on the declared inputs (stale inferred shapes ignored)."""
    bare = model.clone()
    for value in intermediates(bare.graph):
        value.shape = None
    infer_shapes(bare)
    return {v.name: s for v in _all_values(bare.graph) if (s := shape_of(v)) is not None}


def _all_values(graph: ir.Graph):
    yield from graph.inputs
    for node in graph:
        yield from node.outputs


def _picked(shape: ir.Node, dims: Mapping[str, Dims]) -> Dims | None:
    """The dims a ``Shape`` node returns (None where dynamic), or None without a shape."""
    full = dims.get(shape.inputs[0].name)
    return None if full is None else full[attr(shape, "start", 0) : attr(shape, "end", len(full))]


def _shape_value(node: ir.Node, dims: Mapping[str, Dims]) -> np.ndarray | None:
    picked = _picked(node, dims)
    return None if picked is None or None in picked else np.array(picked, dtype=np.int64)


def _gathered_dims(node: ir.Node, dims: Mapping[str, Dims]) -> np.ndarray | None:
    """``Gather(Shape(x), i)`` when dims ``i`` of x are static."""
    shape, index = node.inputs[0].producer(), constant_value(node.inputs[1])
    if shape is None or shape.op_type != "Shape" or index is None or attr(node, "axis", 0):
        return None
    picked = _picked(shape, dims)
    if picked is None:
        return None
    static = np.take(np.array([d is not None for d in picked]), index)
    taken = np.take(np.array([-1 if d is None else d for d in picked], dtype=np.int64), index)
    return taken if np.all(static) else None


def _evaluable(node: ir.Node) -> bool:
    return (
        node.domain in ("", "ai.onnx")
        and node.op_type not in UNFOLDABLE
        and node.op_type != "Constant"
        and not any(a.type in _GRAPHS for a in node.attributes.values())
        and not any(o.is_graph_output() for o in node.outputs)
    )


def _known(node: ir.Node, constant_values: set, dims: Mapping[str, Dims]) -> np.ndarray | None:
    """A value read off the shapes (``Shape``, ``Gather`` of it), else None."""
    if node.op_type == "Shape":
        return _shape_value(node, dims)
    if node.op_type == "Gather" and node.inputs[0] not in constant_values:
        return _gathered_dims(node, dims)
    return None


def _constant_cone(graph: ir.Graph, dims: Mapping[str, Dims]):
    """(the constant values before evaluation, the cone's nodes in graph order, the
    values read off the shapes)."""
    constant_values = set(graph.initializers.values())
    made = (n.outputs[0] for n in graph if n.op_type == "Constant")
    constant_values.update(v for v in made if constant_value(v) is not None)
    cone: list[ir.Node] = []
    known: dict[ir.Value, np.ndarray] = {}
    for node in graph:
        if not _evaluable(node):
            continue
        value = _known(node, constant_values, dims)
        if value is not None:
            known[node.outputs[0]] = value
        elif not all(v in constant_values for v in node.inputs if v is not None):
            continue
        cone.append(node)
        constant_values.update(node.outputs)
    return constant_values, cone, known


def _evaluate(
    model: ir.Model, nodes: list[ir.Node], known: Mapping[ir.Value, np.ndarray], wanted: list
) -> dict[ir.Value, np.ndarray]:
    """Values of ``wanted`` from an onnxruntime session of the cone ``nodes``."""
    made = {v for n in nodes for v in n.outputs}
    read = {v for n in nodes for v in n.inputs if v is not None and v not in made}
    feeds = {v.name: known[v] if v in known else constant_value(v) for v in read}
    graph = onnx.helper.make_graph(
        [ir.serde.serialize_node(n) for n in nodes],
        "constants",
        [],
        [onnx.helper.make_value_info(v.name, onnx.TypeProto()) for v in wanted],
        [numpy_helper.from_array(np.asarray(a), k) for k, a in sorted(feeds.items())],
    )
    opsets = [onnx.helper.make_opsetid(d, v) for d, v in model.opset_imports.items()]
    sub = onnx.helper.make_model(graph, opset_imports=opsets, ir_version=model.ir_version)
    sess = session(sub, label="a constant subgraph", optimise=False)
    names = [v.name for v in wanted]
    return dict(zip(wanted, sess.run(names, {}), strict=True))


def _initializer(value: ir.Value, array: np.ndarray) -> ir.Value:
    """A new initializer holding ``array`` under ``value``'s name."""
    array = np.asarray(array)
    return ir.Value(
        name=value.name,
        shape=ir.Shape(array.shape),
        type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
        const_value=ir.Tensor(array, name=value.name),
    )


def _rewrite(model: ir.Model, cone: list[ir.Node], fresh: Mapping[ir.Value, np.ndarray]) -> None:
    """``fresh`` in as initializers, the cone out; unread nodes and initializers out."""
    graph = model.graph
    for old, array in fresh.items():
        new = _initializer(old, array)
        old.replace_all_uses_with(new)
        graph.register_initializer(new)
        if model.ir_version < 4:  # IR < 4 lists every initializer as a graph input too
            graph.inputs.append(new)
    graph.remove(cone, safe=True)
    RemoveUnusedNodesPass()(model)


def _label(node: ir.Node) -> str:
    return node.name or node.op_type


def _fold_once(model: ir.Model) -> tuple[str, ...]:
    """One round: the cone's values handed to the rest as initializers; the nodes gone."""
    graph = model.graph
    shapes = any(n.op_type == "Shape" for n in graph)  # inference only if used
    _, cone, known = _constant_cone(graph, _dims(model) if shapes else {})
    if not cone:
        return ()
    inside = set(cone)
    wanted = [v for n in cone for v in n.outputs if any(u.node not in inside for u in v.uses())]
    run = [v for v in wanted if v not in known]
    evaluate = [n for n in cone if not all(o in known for o in n.outputs)]
    try:
        fresh = _evaluate(model, evaluate, known, run) if run else {}
    except Exception as e:  # onnxruntime cannot run the cone: it stays in the graph
        logger.info("constant subgraph left unfolded: onnxruntime cannot run it: %s", e)
        return ()
    fresh.update((v, known[v]) for v in wanted if v in known)
    before = Counter(_label(n) for n in graph)
    _rewrite(model, cone, fresh)
    return tuple((before - Counter(_label(n) for n in graph)).elements())


def fold_in_place(model: ir.Model) -> tuple[str, ...]:
    """Fold every constant subgraph of ``model`` in place; the nodes gone."""
    folded: list[str] = []
    while names := _fold_once(model):
        folded.extend(names)
    if folded:
        logger.info("folded %d constant nodes into initializers", len(folded))
    return tuple(folded)


class FoldConstants(ModelPass[FoldReport]):
    """Every constant subgraph folded into initializers (module docstring)."""

    def rewrite(self, model: ir.Model) -> tuple[bool, FoldReport]:
        folded = fold_in_place(model)
        return bool(folded), FoldReport(folded)


def fold_constants(model: onnx.ModelProto) -> FoldResult:
    """A copy of ``model`` with every constant subgraph folded (module docstring)."""
    result = FoldConstants()(ir.from_proto(model))
    if not result.modified:  # the input as it was: no onnx-ir round trip to pay for
        return FoldResult(copy_model(model), ())
    return FoldResult(ir.to_proto(result.model), result.report.folded)

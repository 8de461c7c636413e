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
initializer of the same name; nodes and initializers left unread are dropped. Folding
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
from onnx import numpy_helper

from dsp_deploy.compress.graph import attr, copy_model, drop_unused_nodes, names_read
from dsp_deploy.inference import session

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
Dims = tuple[int | None, ...]


@dataclass(frozen=True)
class FoldResult:
    """The folded copy and the nodes gone from it (names, else op types): the folded
    ones and those only they read."""

    model: onnx.ModelProto
    folded: tuple[str, ...]


def _dims(model: onnx.ModelProto) -> dict[str, Dims]:
    """Shapes from inference on the declared inputs (stale value_info ignored)."""
    bare = copy_model(model)
    del bare.graph.value_info[:]
    try:
        graph = onnx.shape_inference.infer_shapes(bare, strict_mode=False, data_prop=True).graph
    except Exception as e:  # a hint: without shapes only all-constant nodes fold
        logger.debug("shape inference failed: %s", e)
        graph = bare.graph
    dims = {}
    for value in (*graph.input, *graph.value_info, *graph.output):
        t = value.type.tensor_type
        if value.type.HasField("tensor_type") and t.HasField("shape"):
            dims[value.name] = tuple(
                d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim
            )
    return dims


def _picked(shape: onnx.NodeProto, dims: Mapping[str, Dims]) -> Dims | None:
    """The dims a ``Shape`` node returns (None where dynamic), or None without a shape."""
    full = dims.get(shape.input[0])
    return None if full is None else full[attr(shape, "start", 0) : attr(shape, "end", len(full))]


def _shape_value(node: onnx.NodeProto, dims: Mapping[str, Dims]) -> np.ndarray | None:
    picked = _picked(node, dims)
    return None if picked is None or None in picked else np.array(picked, dtype=np.int64)


def _gathered_dims(
    node: onnx.NodeProto, producers: Mapping[str, onnx.NodeProto], values, dims
) -> np.ndarray | None:
    """``Gather(Shape(x), i)`` when dims ``i`` of x are static."""
    shape, index = producers.get(node.input[0]), values.get(node.input[1])
    if shape is None or shape.op_type != "Shape" or index is None or attr(node, "axis", 0):
        return None
    picked = _picked(shape, dims)
    if picked is None:
        return None
    static = np.take(np.array([d is not None for d in picked]), index)
    taken = np.take(np.array([-1 if d is None else d for d in picked], dtype=np.int64), index)
    return taken if np.all(static) else None


def _evaluable(node: onnx.NodeProto, outputs: frozenset[str]) -> bool:
    return (
        node.domain in ("", "ai.onnx")
        and node.op_type not in UNFOLDABLE
        and node.op_type != "Constant"
        and not any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
            for a in node.attribute
        )
        and not any(o in outputs for o in node.output)
    )


def _constant_cone(graph: onnx.GraphProto, dims: Mapping[str, Dims]):
    """(every constant value known before evaluation, the cone's node positions in
    graph order, the values read off the shapes)."""
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and attr(node, "value") is not None:
            values[node.output[0]] = numpy_helper.to_array(attr(node, "value"))
    constant, cone, known = set(values), [], {}
    outputs = frozenset(o.name for o in graph.output)
    producers = {o: n for n in graph.node for o in n.output}
    for i, node in enumerate(graph.node):
        if not _evaluable(node, outputs):
            continue
        if node.op_type == "Shape":
            value = _shape_value(node, dims)
        elif node.op_type == "Gather" and node.input[0] not in constant:
            value = _gathered_dims(node, producers, values, dims)
        else:
            value = None
        if value is not None:
            known[node.output[0]] = value
        elif not all(n in constant for n in node.input if n):
            continue
        cone.append(i)
        constant.update(node.output)
    return {**values, **known}, cone, known


def _evaluate(model: onnx.ModelProto, nodes, values, wanted: list[str]) -> dict[str, np.ndarray]:
    """Values of ``wanted`` from an onnxruntime session of the cone ``nodes``."""
    read = {n for node in nodes for n in node.input if n}
    graph = onnx.helper.make_graph(
        nodes,
        "constants",
        [],
        [onnx.helper.make_value_info(n, onnx.TypeProto()) for n in wanted],
        [numpy_helper.from_array(np.asarray(values[n]), n) for n in sorted(read & values.keys())],
    )
    sub = onnx.helper.make_model(
        graph, opset_imports=model.opset_import, ir_version=model.ir_version
    )
    sess = session(sub, optimise=False)
    return dict(zip(wanted, sess.run(wanted, {}), strict=True))


def _rewrite(graph: onnx.GraphProto, cone: list[int], fresh: Mapping[str, np.ndarray]) -> None:
    """Cone nodes out, ``fresh`` in as initializers; unread nodes and initializers out."""
    gone = set(cone)
    kept = [n for i, n in enumerate(graph.node) if i not in gone]
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(numpy_helper.from_array(np.asarray(v), k) for k, v in fresh.items())
    needed = drop_unused_nodes(graph)
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    info = [v for v in graph.value_info if v.name not in fresh]
    del graph.value_info[:]
    graph.value_info.extend(info)


def _label(node: onnx.NodeProto) -> str:
    return node.name or node.op_type


def _list_as_inputs(graph: onnx.GraphProto, fresh: Mapping[str, np.ndarray]) -> None:
    """IR < 4 lists every initializer as a graph input too."""
    listed = {v.name for v in graph.input}
    for name, value in fresh.items():
        if name not in listed:
            dtype = onnx.helper.np_dtype_to_tensor_dtype(np.asarray(value).dtype)
            graph.input.append(onnx.helper.make_tensor_value_info(name, dtype, np.shape(value)))


def _fold_once(model: onnx.ModelProto) -> tuple[str, ...]:
    """One round: the cone's values handed to the rest as initializers; the nodes gone."""
    graph = model.graph
    shapes = any(n.op_type == "Shape" for n in graph.node)  # inference only if used
    values, cone, known = _constant_cone(graph, _dims(model) if shapes else {})
    if not cone:
        return ()
    nodes, rest = [graph.node[i] for i in cone], [graph.node[i] for i in _others(graph, cone)]
    wanted = sorted({o for n in nodes for o in n.output} & set(names_read(rest)))
    run = [w for w in wanted if w not in known]
    evaluate = [n for n in nodes if not set(n.output) <= known.keys()]
    try:
        fresh = _evaluate(model, evaluate, values, run) if run else {}
    except Exception as e:  # onnxruntime cannot run the cone: it stays in the graph
        logger.info("constant subgraph left unfolded: onnxruntime cannot run it: %s", e)
        return ()
    fresh.update((w, known[w]) for w in wanted if w in known)
    before = Counter(_label(n) for n in graph.node)
    _rewrite(graph, cone, fresh)
    if model.ir_version < 4:
        _list_as_inputs(graph, fresh)
    return tuple((before - Counter(_label(n) for n in graph.node)).elements())


def _others(graph: onnx.GraphProto, cone: list[int]) -> list[int]:
    inside = set(cone)
    return [i for i in range(len(graph.node)) if i not in inside]


def fold_constants(model: onnx.ModelProto) -> FoldResult:
    """A copy of ``model`` with every constant subgraph folded (module docstring)."""
    out = copy_model(model)
    folded: list[str] = []
    while names := _fold_once(out):
        folded.extend(names)
    if folded:
        logger.info("folded %d constant nodes into initializers", len(folded))
    return FoldResult(out, tuple(folded))

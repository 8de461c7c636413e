"""Level passes from a stored frontier, for ``compress.reconstruct``.

Reconstruction fits level after level; level l needs, on every calibration batch, the
inputs of its nodes in the current model and their outputs in the original. Run from
the network's input each time, level l repeats the work of every level before it: about
levels / 2 whole passes of each model per reconstruction. Instead, each pass also keeps
its *frontier* and the next pass starts there.

With top(n) the highest level among the refitted nodes upstream of node n (n included;
0 when none), the nodes with top(n) < l compute on level l's pass exactly what they will
compute on every later pass: no refit upstream of them is still to come. The frontier
after level l is then

    F_l = { tensors v made by a node with top < l (not a graph input, not a constant) and
            read by a node n with top(n) ≥ l that a later level needs }
          ∪ { names of later levels made by a node with top < l },

and level l + 1's model is the original cut to the nodes that compute its names from F_l
(``cut``): the nodes of about one level. The values are onnxruntime's own, fed back as
they came, so a pass gives what the whole model would (up to the rounding of kernels
onnxruntime fuses differently at a cut). The original model is treated alike, its
"refitted" nodes being the producers of the targets.

Memory: the frontier of ``MAX_SAMPLES`` series at most (the reconstruction's subset), a
few activations wide, and never more than ``BUDGET`` bytes: a frontier over it is not
kept and the next pass starts from the input again, as without checkpoints. It does not
grow with the calibration set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from dsp_deploy.errors import ModelError
from dsp_deploy.inference import run_batch, session

__all__ = ["BUDGET", "Checkpointed", "cut", "frontiers", "plain"]

BUDGET = 256 << 20  # bytes of stored frontier, per model
_SUBGRAPHS = (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)


def plain(model: ir.Model) -> bool:
    """Whether the graph can be cut: no node holds a subgraph."""
    return not any(a.type in _SUBGRAPHS for n in model.graph for a in n.attributes.values())


def _named(graph: ir.Graph) -> dict[str, ir.Value]:
    """The main graph's values by name: inputs, initializers, node outputs."""
    values = {v.name: v for v in graph.inputs}
    values.update(graph.initializers)
    values.update((o.name, o) for n in graph for o in n.outputs)
    return values


def _fed(name: str, value: np.ndarray) -> ir.Value:
    """A new graph input for a source: its dtype, its shape with a free batch dim."""
    shape = ir.Shape(["N", *value.shape[1:]])
    return ir.Value(name=name, shape=shape, type=ir.TensorType(ir.DataType.from_numpy(value.dtype)))


def _outputs(graph: ir.Graph, values: Sequence[ir.Value], *, replace: bool) -> None:
    old = [] if replace else [o for o in graph.outputs if o not in values]
    graph.outputs.clear()
    graph.outputs.extend([*old, *values])


def cut(
    model: ir.Model, names: Sequence[str], sources: Mapping[str, np.ndarray] | None = None
) -> ir.Model:
    """A copy of ``model`` cut to the nodes that compute ``names`` from ``sources`` (name
    → a value of that tensor, for its type) and the graph's inputs, with exactly ``names``
    as outputs (onnxruntime runs every node of a graph whatever is fetched); the whole
    model with ``names`` added to its outputs where a name is no node's output (a graph
    input) or a node holds a subgraph. ``model`` is not changed."""
    sources = sources or {}
    wanted = tuple(dict.fromkeys(names))
    out = model.clone()
    graph = out.graph
    values = _named(graph)
    if missing := [n for n in wanted if n not in values]:
        raise ModelError(f"no value named {missing[0]!r} in the main graph")
    made = {o.name for n in graph for o in n.outputs}
    if not plain(out) or not set(wanted) <= made | set(sources):
        _outputs(graph, [values[n] for n in wanted], replace=False)
        return out
    needed, keep = set(wanted), set()
    for node in reversed(graph):
        if any(o.name in needed and o.name not in sources for o in node.outputs):
            keep.add(node)
            needed.update(i.name for i in node.inputs if i is not None)
    remade = {o.name for n in keep for o in n.outputs}  # a kept node's other output: recomputed
    for name, value in sources.items():
        old = values.get(name)
        if name in needed and name not in remade and old is not None and old.producer():
            new = _fed(name, value)
            ir.convenience.replace_all_uses_with(old, new)
            old.name = None  # its name goes to the new input; its producer is cut below
            graph.inputs.append(new)
            values[name] = new
    _outputs(graph, [values[n] for n in wanted], replace=True)
    RemoveUnusedNodesPass()(out)  # exactly the nodes not kept, then their initializers
    return out


def _tops(model: ir.Model, seeds: Mapping[str, int]) -> list[int]:
    """top(n) per node: the highest seed level upstream of it, itself included (seeds:
    node name → level)."""
    made: dict[str, int] = {}
    tops = []
    for node in model.graph:
        ups = (made.get(i.name, 0) for i in node.inputs if i is not None)
        top = max([seeds.get(node.name, 0), *ups])
        tops.append(top)
        made.update(dict.fromkeys((o.name for o in node.outputs), top))
    return tops


def _lasts(model: ir.Model, names: Mapping[str, int]) -> list[int]:
    """The latest level whose names (tensor → level) each node helps compute (0: none)."""
    wanted = dict(names)
    lasts = []
    for node in reversed(model.graph):
        last = max((wanted.get(o.name, 0) for o in node.outputs), default=0)
        lasts.append(last)
        for i in node.inputs:
            if i is not None and last > wanted.get(i.name, 0):
                wanted[i.name] = last
    return lasts[::-1]


def frontiers(
    model: ir.Model, seeds: Mapping[str, int], names: Mapping[str, int], levels: int
) -> tuple[tuple[str, ...], ...]:
    """F_l for l = 1 … levels (module docstring): ``seeds`` the refitted nodes' levels by
    node name, ``names`` the tensors each level fetches, by level."""
    nodes = list(model.graph)
    tops, lasts = _tops(model, seeds), _lasts(model, names)
    top_of = {o.name: t for n, t in zip(nodes, tops, strict=True) for o in n.outputs}
    free = {  # constants: recomputed
        o.name for n in nodes if all(i is None for i in n.inputs) for o in n.outputs
    }
    out = []
    for level in range(1, levels + 1):
        found = {
            i.name
            for n, top, last in zip(nodes, tops, lasts, strict=True)
            if top >= level and last > level
            for i in n.inputs
            if i is not None and i.name in top_of and top_of[i.name] < level and i.name not in free
        }
        later = {v for v, at in names.items() if at > level and top_of.get(v, level) < level}
        out.append(tuple(sorted(found | later)))
    return tuple(out)


class Checkpointed:
    """One model's level passes over fixed batches, each from the last stored frontier.

    ``begin(model, names, keep)`` opens a pass computing ``names`` and keeping ``keep``;
    ``batch(b, feed)`` runs it on batch b; ``end()`` stores what was kept (within
    ``budget`` bytes, default ``BUDGET``, else nothing: the next pass starts from the
    input). ``model``: the model of every pass when it does not change (``begin(None,
    ...)``)."""

    def __init__(
        self,
        batches: int,
        threads: int | None,
        budget: int | None = None,
        model: ir.Model | None = None,
    ) -> None:
        self.stored: list[dict[str, np.ndarray]] = [{} for _ in range(batches)]
        self.threads, self.model = threads, model
        self.budget = BUDGET if budget is None else budget
        self._pending: list[dict[str, np.ndarray]] = []

    def begin(self, model: ir.Model | None, names: Sequence[str], keep: Sequence[str]) -> None:
        model = self.model if model is None else model
        have = self.stored[0] if self.stored else {}
        self.names, self.keep = tuple(names), tuple(keep)
        self.fetch = tuple(n for n in dict.fromkeys([*names, *keep]) if n not in have)
        self.session = None
        if self.fetch:
            part = ir.to_proto(cut(model, self.fetch, have))
            self.session = session(part, self.threads, spin=False)
        self.inputs = {i.name for i in self.session.get_inputs()} if self.session else set()
        self._pending = []

    def batch(self, b: int, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        have = self.stored[b]
        values = dict(have)
        if self.session is not None:
            inputs = {k: v for k, v in {**feed, **have}.items() if k in self.inputs}
            values.update(zip(self.fetch, run_batch(self.session, self.fetch, inputs), strict=True))
        self._pending.append({k: values[k] for k in self.keep})
        return [values[n] for n in self.names]

    def end(self) -> None:
        size = sum(v.nbytes for part in self._pending for v in part.values())
        complete = len(self._pending) == len(self.stored)
        fresh = self._pending if complete and size <= self.budget else [{} for _ in self.stored]
        self.stored, self._pending, self.session = fresh, [], None

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
import onnx

from dsp_deploy.compress.calibrate import with_outputs
from dsp_deploy.inference import run_batch, session

__all__ = ["BUDGET", "Checkpointed", "cut", "frontiers", "plain"]

BUDGET = 256 << 20  # bytes of stored frontier, per model


def plain(model: onnx.ModelProto) -> bool:
    """Whether the graph can be cut: no node holds a subgraph."""
    graph_attrs = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    return not any(a.type in graph_attrs for n in model.graph.node for a in n.attribute)


def _source_info(name: str, value: np.ndarray) -> onnx.ValueInfoProto:
    elem = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
    return onnx.helper.make_tensor_value_info(name, elem, ["N", *value.shape[1:]])


def cut(
    model: onnx.ModelProto, names: Sequence[str], sources: Mapping[str, np.ndarray] | None = None
) -> onnx.ModelProto:
    """``model`` cut to the nodes that compute ``names`` from ``sources`` (name → a value
    of that tensor, for its type) and the graph's inputs, with exactly ``names`` as outputs
    (onnxruntime runs every node of a graph whatever is fetched); the whole model with
    ``names`` added where a name is no node's output or a node holds a subgraph."""
    sources = sources or {}
    wanted = tuple(dict.fromkeys(names))
    nodes = model.graph.node
    made = {o for n in nodes for o in n.output}
    if not plain(model) or not set(wanted) <= made | set(sources):
        return with_outputs(model, wanted)
    needed, keep = set(wanted), []
    for node in reversed(nodes):
        if any(o in needed and o not in sources for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:], out.graph.output[:]
    out.graph.node.extend(reversed(keep))
    needed.update(i.name for i in model.graph.input)  # an initializer listed as an input
    kept = [t for t in out.graph.initializer if t.name in needed]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    inputs = [i for i in out.graph.input if i.name not in sources]
    remade = {o for n in keep for o in n.output}  # a kept node's other output: recomputed
    del out.graph.input[:]
    out.graph.input.extend(inputs)
    fed = (_source_info(n, v) for n, v in sources.items() if n in needed and n not in remade)
    out.graph.input.extend(fed)
    return with_outputs(out, wanted)


def _tops(model: onnx.ModelProto, seeds: Mapping[str, int]) -> list[int]:
    """top(n) per node: the highest seed level upstream of it, itself included (seeds:
    node name → level)."""
    made: dict[str, int] = {}
    tops = []
    for node in model.graph.node:
        top = max([seeds.get(node.name, 0), *(made.get(i, 0) for i in node.input)])
        tops.append(top)
        made.update(dict.fromkeys(node.output, top))
    return tops


def _lasts(model: onnx.ModelProto, names: Mapping[str, int]) -> list[int]:
    """The latest level whose names (tensor → level) each node helps compute (0: none)."""
    wanted = dict(names)
    lasts = []
    for node in reversed(model.graph.node):
        last = max((wanted.get(o, 0) for o in node.output), default=0)
        lasts.append(last)
        for i in node.input:
            if i and last > wanted.get(i, 0):
                wanted[i] = last
    return lasts[::-1]


def frontiers(
    model: onnx.ModelProto, seeds: Mapping[str, int], names: Mapping[str, int], levels: int
) -> tuple[tuple[str, ...], ...]:
    """F_l for l = 1 … levels (module docstring): ``seeds`` the refitted nodes' levels by
    node name, ``names`` the tensors each level fetches, by level."""
    nodes = model.graph.node
    tops, lasts = _tops(model, seeds), _lasts(model, names)
    top_of = {o: t for n, t in zip(nodes, tops, strict=True) for o in n.output}
    free = {o for n in nodes if not any(n.input) for o in n.output}  # constants: recomputed
    out = []
    for level in range(1, levels + 1):
        found = {
            i
            for n, top, last in zip(nodes, tops, lasts, strict=True)
            if top >= level and last > level
            for i in n.input
            if i in top_of and top_of[i] < level and i not in free
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
        model: onnx.ModelProto | None = None,
    ) -> None:
        self.stored: list[dict[str, np.ndarray]] = [{} for _ in range(batches)]
        self.threads, self.model = threads, model
        self.budget = BUDGET if budget is None else budget
        self._pending: list[dict[str, np.ndarray]] = []

    def begin(
        self, model: onnx.ModelProto | None, names: Sequence[str], keep: Sequence[str]
    ) -> None:
        model = self.model if model is None else model
        have = self.stored[0] if self.stored else {}
        self.names, self.keep = tuple(names), tuple(keep)
        self.fetch = tuple(n for n in dict.fromkeys([*names, *keep]) if n not in have)
        self.session = (
            session(cut(model, self.fetch, have), self.threads, spin=False) if self.fetch else None
        )
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

"""Channel groups: which channels of which nodes must shrink together, and where they end.

Every output channel of a Conv that is not depthwise is an *atom*. ``rules`` says how
atoms travel through each node; a residual Add/Sum ties atom a of one operand to atom b
of the other (union-find), so they become one *unit*: the thing that is kept or removed.
Units whose sources are linked form a ``ChannelGroup``.

Removing unit u deletes every occurrence of its atoms: the producer rows (W, B of the
source Convs), the per-channel parameters along the way (BN, depthwise Conv, per-channel
constants), and the input slices of the channel-mixing consumers (Conv columns, Gemm /
MatMul rows or columns, at their Concat offsets). A tensor left with no channel at all
(a whole source — e.g. one of LITE's 1-channel hand-crafted filters — or a whole branch)
disappears with the nodes computing it, and the Concat reading it loses that input.
Per-channel ops act on each channel alone, so the only effect the removal has on the rest
of the graph is the term

    Δy = Σ_{consumers k} Σ_{positions p of u in k's input}  W_k[:, p] * x_k[p]

hence u is removable without changing any output when x_k[p] = 0 on every sample and
time step at every such consumer (``dead``), or x_k[p] = v constant and each consumer
can absorb W_k[:, p] * v into its bias exactly (``plan``). The input of a consumer (a
*stage*: LITE's 113-channel concat, an Inception module's 128 channels) never loses all
its units (``ChannelAnalysis.stages``). A unit is *pinned* (never
removed) when any of its atoms reaches an op outside the table, a graph output, a
subgraph, or comes from an untracked tensor; ``blocked_by`` says which and why.

A grouped Conv (1 < g, not depthwise) adds a constraint that is not a tie: its output
block j reads only its input block j, so the groups that stay must lose equally many
inputs and equally many outputs (``ChannelAnalysis.blocks``; ``rules`` has the algebra,
``plan`` enforces it). Its channels are otherwise ordinary units: nothing is pinned.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import onnx
import onnx_ir as ir

from dsp_deploy.compress import ops
from dsp_deploy.compress.fingerprint import fingerprint
from dsp_deploy.compress.graph import Shape, node_label, normalised, shape_of
from dsp_deploy.compress.rules import Blocks, Consumer, Layout, Pin, Slice
from dsp_deploy.irgraph import constant_value

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """Channels created by one node (``node`` = -1: an untracked tensor, always pinned)."""

    node: int
    label: str
    atoms: Layout


@dataclass(frozen=True)
class Unit:
    """Atoms tied together (kept or removed as one); ``blocked_by`` when pinned."""

    group: int
    atoms: tuple[int, ...]
    blocked_by: str | None


@dataclass(frozen=True)
class ChannelGroup:
    """A report-level view: sources whose channels are linked, their consumers, pins."""

    index: int
    sources: tuple[str, ...]
    channels: int
    consumers: tuple[str, ...]
    pinned: int
    blocked_by: str | None


@dataclass(frozen=True)
class ChannelAnalysis:
    """Everything the planner and the pruner need, indexed by atom / unit / node position."""

    groups: tuple[ChannelGroup, ...]
    units: tuple[Unit, ...]
    unit_of: tuple[int, ...]
    source_of: tuple[int, ...]
    sources: tuple[Source, ...]
    slices: tuple[Slice, ...]
    consumers: tuple[Consumer, ...]
    taps: Mapping[str, Layout]
    layouts: Mapping[str, Layout]
    node_names: tuple[str, ...]
    blocks: tuple[Blocks, ...] = ()
    fingerprint: str = ""  # of the normalised model analysed (``compress.fingerprint``)
    shapes: Mapping[str, Shape] = field(default_factory=dict)  # of the tensors carrying channels
    # The normalised model analysed: ``prune.prune_analysed`` prunes a clone of it (never
    # changed in place; not compared, not shown).
    model: ir.Model | None = field(default=None, compare=False, repr=False)

    def stages(self) -> tuple[frozenset[int], ...]:
        """The units each channel-mixing consumer reads: what must never be emptied."""
        return tuple(frozenset(self.unit_of[a] for a in c.layout) for c in self.consumers)


class _Builder:
    """Mutable state of one analysis run (the ``rules.Context``); never escapes."""

    def __init__(self, graph: ir.Graph) -> None:
        self.graph = graph
        self.nodes = tuple(graph)
        self.positions = {node: i for i, node in enumerate(self.nodes)}
        self.constants: dict[ir.Value, np.ndarray | None] = {}
        self.parent: list[int] = []
        self.sources: list[Source] = []
        self.layouts: dict[str, Layout] = {}
        self.shapes: dict[str, Shape] = {}
        self.pins: dict[int, str] = {}
        self.slices: list[Slice] = []
        self.consumers: list[Consumer] = []
        self.taps: dict[str, Layout] = {}
        self.blocks: list[Blocks] = []

    def layout(self, value: ir.Value | None) -> Layout | None:
        return None if value is None else self.layouts.get(value.name)

    def const(self, value: ir.Value | None) -> np.ndarray | None:
        if value not in self.constants:
            self.constants[value] = constant_value(value)
        return self.constants[value]

    def shape(self, value: ir.Value | None) -> Shape | None:
        return shape_of(value)

    def readers(self, value: ir.Value) -> tuple[ir.Node | None, ...]:
        """Nodes of this graph reading ``value``, in graph order; None: a graph output."""
        mine = (u.node for u in value.uses() if u.node.graph is self.graph)
        own = tuple(sorted(mine, key=self.positions.__getitem__))
        return own + ((None,) if value.is_graph_output() else ())

    def position(self, node: ir.Node) -> int:
        return self.positions[node]

    def new_atoms(self, node: int, count: int) -> Layout:
        atoms = tuple(range(len(self.parent), len(self.parent) + count))
        self.parent.extend(atoms)
        label = node_label(self.nodes[node], node) if node >= 0 else "untracked"
        self.sources.append(Source(node, label, atoms))
        return atoms

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def tie(self, a: Layout, b: Layout) -> None:
        for x, y in zip(a, b, strict=True):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def pin(self, layout: Layout, reason: str) -> None:
        for atom in layout:
            self.pins.setdefault(atom, reason)


def _record(b: _Builder, i: int, node: ir.Node, flow, tap: bool) -> None:
    for value, layout in zip(node.outputs, flow.outputs, strict=False):
        if layout is not None:
            b.layouts[value.name] = layout
            if (shape := shape_of(value)) is not None:
                b.shapes[value.name] = shape
    for a, c in flow.ties:
        b.tie(a, c)
    for layout, reason in flow.pinned:
        b.pin(layout, f"{node_label(node, i)} ({node.op_type}): {reason}")
    b.slices.extend(flow.slices)
    b.consumers.extend(flow.consumers)
    b.blocks.extend(flow.blocks)
    out = flow.outputs[0] if tap else None
    if out is not None and len(set(out)) == len(out):  # a flattened tensor is no stage output
        b.taps[node.outputs[0].name] = out


def _step(b: _Builder, i: int, node: ir.Node) -> None:
    tracked = [lay for v in node.inputs if (lay := b.layout(v)) is not None]
    entry = ops.entry(node)
    if not tracked and not (entry is not None and entry.source):
        return
    flow = ops.apply(i, node, b)
    if isinstance(flow, Pin):
        reason = f"{node_label(node, i)} ({node.op_type}): {flow.reason}"
        logger.debug("pin %s", reason)
        for layout in tracked:
            b.pin(layout, reason)
        return
    _record(b, i, node, flow, entry is not None and entry.tap)


def _subgraph_reads(node: ir.Node) -> set[str]:
    """Names read anywhere inside the node's subgraphs (onnx-ir's recursive iterator)."""
    names: set[str] = set()
    for a in node.attributes.values():
        if a.type == ir.AttributeType.GRAPH:
            graphs = [a.as_graph()]
        elif a.type == ir.AttributeType.GRAPHS:
            graphs = list(a.as_graphs())
        else:
            continue
        for inner in (n for g in graphs for n in ir.traversal.RecursiveGraphIterator(g)):
            names.update(v.name for v in inner.inputs if v is not None)
    return names


def _units(b: _Builder) -> tuple[list[list[int]], tuple[int, ...]]:
    roots: dict[int, int] = {}
    members: list[list[int]] = []
    unit_of = []
    for atom in range(len(b.parent)):
        root = b.find(atom)
        if root not in roots:
            roots[root] = len(members)
            members.append([])
        members[roots[root]].append(atom)
        unit_of.append(roots[root])
    return members, tuple(unit_of)


def _components(b: _Builder, members: list[list[int]]) -> list[int]:
    """Group index of each source: sources sharing a unit are one group."""
    source_of = {atom: k for k, s in enumerate(b.sources) for atom in s.atoms}
    parent = list(range(len(b.sources)))

    def find(k: int) -> int:
        while parent[k] != k:
            k = parent[k]
        return k

    for atoms in members:
        first = find(source_of[atoms[0]])
        for atom in atoms[1:]:
            parent[find(source_of[atom])] = first
    order: dict[int, int] = {}
    return [order.setdefault(find(k), len(order)) for k in range(len(b.sources))]


def _report(
    b: _Builder, group_of_source: list[int], members: list[list[int]], units: list[Unit]
) -> tuple[ChannelGroup, ...]:
    groups = []
    for g in range(max(group_of_source, default=-1) + 1):
        sources = [s for s, k in zip(b.sources, group_of_source, strict=True) if k == g]
        atoms = {a for s in sources for a in s.atoms}
        mine = [u for u in units if u.group == g]
        readers = [c for c in b.consumers if atoms & set(c.layout)]
        names = dict.fromkeys(node_label(b.nodes[c.node], c.node) for c in readers)
        reasons = [u.blocked_by for u in mine if u.blocked_by]
        groups.append(
            ChannelGroup(
                index=g,
                sources=tuple(s.label for s in sources),
                channels=len(mine),
                consumers=tuple(names),
                pinned=len(reasons),
                blocked_by=reasons[0] if reasons else None,
            )
        )
    return tuple(groups)


def find_groups(model: onnx.ModelProto) -> ChannelAnalysis:
    """Analyse ``model`` (read-only) into channel units, groups, slices and consumers."""
    normal = normalised(model)
    b = _Builder(normal.graph)
    for i, node in enumerate(b.nodes):
        _step(b, i, node)
        for name in _subgraph_reads(node):
            if name in b.layouts:
                b.pin(b.layouts[name], f"read inside a subgraph of {node_label(node, i)}")
    for value in normal.graph.outputs:
        if value.name in b.layouts:
            b.pin(b.layouts[value.name], f"reaches graph output '{value.name}'")
    members, unit_of = _units(b)
    group_of_source = _components(b, members)
    source_of = {atom: k for k, s in enumerate(b.sources) for atom in s.atoms}
    units = [
        Unit(
            group=group_of_source[source_of[atoms[0]]],
            atoms=tuple(atoms),
            blocked_by=next((b.pins[a] for a in atoms if a in b.pins), None),
        )
        for atoms in members
    ]
    analysis = ChannelAnalysis(
        groups=_report(b, group_of_source, members, units),
        units=tuple(units),
        unit_of=unit_of,
        source_of=tuple(source_of[a] for a in range(len(unit_of))),
        sources=tuple(b.sources),
        slices=tuple(b.slices),
        consumers=tuple(b.consumers),
        taps=MappingProxyType(dict(b.taps)),
        layouts=MappingProxyType(dict(b.layouts)),
        node_names=tuple(node_label(n, i) for i, n in enumerate(b.nodes)),
        blocks=tuple(b.blocks),
        fingerprint=fingerprint(normal),
        shapes=MappingProxyType(dict(b.shapes)),
        model=normal,
    )
    logger.info(
        "%d channel groups, %d units (%d pinned)",
        len(analysis.groups),
        len(units),
        sum(u.blocked_by is not None for u in units),
    )
    return analysis

"""Per-layer rows of a compression: each source node's channels, params and MACs,
before and after a plan (what ``compress`` and ``inspect`` tabulate)."""

from __future__ import annotations

from dataclasses import dataclass

from dsp_deploy.compress.groups import ChannelAnalysis
from dsp_deploy.compress.plan import PruningPlan

__all__ = ["LayerReport", "layer_reports"]


@dataclass(frozen=True)
class LayerReport:
    """One source node (a Conv creating channels): channels, params, MACs before/after."""

    name: str
    channels: tuple[int, int]
    params: tuple[int, int]
    macs: tuple[int, int]


def layer_reports(analysis: ChannelAnalysis, plan: PruningPlan, before, after) -> tuple:
    cost_b = {n.name: n for n in before.per_node}
    cost_a = {n.name: n for n in after.per_node}
    removed = plan.removed_atoms
    rows = []
    for s in analysis.sources:
        if s.node < 0:
            continue
        b, a = cost_b.get(s.label), cost_a.get(s.label)
        kept = sum(atom not in removed for atom in s.atoms)
        rows.append(
            LayerReport(
                name=s.label,
                channels=(len(s.atoms), kept),
                params=(b.params if b else 0, a.params if a else 0),
                macs=(b.macs if b else 0, a.macs if a else 0),
            )
        )
    return tuple(rows)

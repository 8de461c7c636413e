"""One global ranking of removable channel units, for ``--criterion auto``.

A unit u is read by channel-mixing consumers k at input positions p (its occurrences).
Consumer k computes y_k = Σ_p W_k[:, p] ⋆ x_k[p] + b, so the part of its output's
signal that position p carries is, treating the inputs as uncorrelated,

    s_kp = var(x_k[p]) · ‖W_k[:, p]‖²  /  Σ_p' var(x_k[p']) · ‖W_k[:, p']‖²

(‖·‖ over output channels and taps; the variance, not the energy, since the mean of a
removed channel goes into the bias and reconstruction refits the rest). The importance
of u is Σ over its occurrences of s_kp: the fraction of each consumer's signal lost with
u, a number without units, so units of different layers compare and one ranking exists
(activation energy × outgoing weight norm, normalised per consumer; cf. ThiNet and
He et al. 2017, which rank by the reconstruction error a channel's removal leaves).

Each unit also has a cost: the MACs its removal saves, estimated from the per-node MACs
(``dsp_deploy.cost``) shared evenly among the positions a node's weights slice (a Conv's
output rows, a consumer's input columns, a depthwise Conv's channels). The ranking
orders the unpinned units by importance per MAC saved (least first), so going down it
removes the most MACs for the least signal; ``prefix_plan(n)`` removes its first n under
the plan's constraints (groups, pins, a stage never emptied, ``align``:
``plan.settled_plan``). Shared weights are sliced once by ``prune``, whatever the plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from dsp_deploy.compress.calibrate import ActivationStats
from dsp_deploy.compress.flow import CONSUMER, DEPTHWISE, PRODUCER, Consumer
from dsp_deploy.compress.graph import attr, normalised
from dsp_deploy.compress.groups import ChannelAnalysis
from dsp_deploy.compress.plan import PruningPlan, settled_plan
from dsp_deploy.irgraph import constant_value

__all__ = ["Ranking", "prefix_plan", "rank_units"]

AUTO = "auto"


@dataclass(frozen=True)
class Ranking:
    """Removable units, least important per MAC first; per-unit importance and MACs."""

    order: tuple[int, ...]
    importance: tuple[float, ...]
    macs: tuple[float, ...]
    total_macs: int

    def macs_removed(self, n: int) -> float:
        """Estimated fraction of the model's MACs the first ``n`` units carry."""
        saved = sum(self.macs[u] for u in self.order[:n])
        return saved / self.total_macs if self.total_macs else 0.0


def _column_norms(w: np.ndarray, c: Consumer, node) -> np.ndarray | None:
    """‖W[:, p]‖² per input position of a consumer (None: a grouped Conv)."""
    if c.kind == "conv":
        if c.groups != 1:
            return None
        return np.einsum(
            "ocj,ocj->c",
            w.reshape(w.shape[0], w.shape[1], -1),
            w.reshape(w.shape[0], w.shape[1], -1),
        )
    by_row = w.T if c.kind == "gemm" and attr(node, "transB", 0) else w
    return np.einsum("po,po->p", by_row, by_row)


def _importance(analysis: ChannelAnalysis, stats: ActivationStats, nodes: tuple) -> np.ndarray:
    score = np.zeros(len(analysis.units))
    for c in analysis.consumers:
        s = stats.tensors.get(c.tensor)
        w = constant_value(nodes[c.node].inputs[1])
        if s is None or w is None:
            continue
        var = np.maximum(s.energy - s.mean**2, 0.0)
        norms = _column_norms(w.astype(np.float64), c, nodes[c.node])
        signal = var if norms is None else var * norms
        total = signal.sum()
        if total <= 0:
            continue
        np.add.at(score, [analysis.unit_of[a] for a in c.layout], signal / total)
    return score


def _unit_macs(analysis: ChannelAnalysis, per_node: tuple[int, ...]) -> np.ndarray:
    macs = np.zeros(len(analysis.units))
    for s in analysis.slices:
        if s.input != 1 or s.role not in (PRODUCER, CONSUMER, DEPTHWISE) or not s.layout:
            continue
        share = per_node[s.node] / len(s.layout)
        np.add.at(macs, [analysis.unit_of[a] for a in s.layout], share)
    return macs


def rank_units(
    model: onnx.ModelProto,
    analysis: ChannelAnalysis,
    stats: ActivationStats,
    length: int,
    sample=None,
) -> Ranking:
    """The global ranking of ``model``'s unpinned units (module docstring)."""
    from dsp_deploy.compress.graph import normalise
    from dsp_deploy.cost import model_cost

    nodes = tuple(normalised(model).graph)
    cost = model_cost(normalise(model), length=length, sample=sample)
    per_node = tuple(n.macs for n in cost.per_node)
    importance = _importance(analysis, stats, nodes)
    macs = _unit_macs(analysis, per_node)
    free = [u for u, unit in enumerate(analysis.units) if unit.blocked_by is None]
    floor = max(cost.macs, 1) * 1e-9
    order = sorted(free, key=lambda u: (importance[u] / max(macs[u], floor), u))
    return Ranking(tuple(order), tuple(importance.tolist()), tuple(macs.tolist()), cost.macs)


def prefix_plan(
    analysis: ChannelAnalysis,
    stats: ActivationStats,
    ranking: Ranking,
    n: int,
    *,
    compensation: str,
    align: int = 1,
) -> PruningPlan:
    """The plan removing the first ``n`` ranked units, as far as the rules allow."""
    score = list(ranking.importance)
    return settled_plan(analysis, stats, set(ranking.order[:n]), score, AUTO, compensation, align)

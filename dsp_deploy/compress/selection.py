"""One global ranking of removable channel units, for ``--criterion auto``.

A unit u is read by channel-mixing consumers k at input positions p (its occurrences).
Consumer k computes y_k = Σ_p W_k[:, p] ⋆ x_k[p] + b. Reconstruction refits every
consumer on the inputs that are kept (``compress.reconstruct``), so what removing inputs
costs is the error left *after* that refit, not the signal they carried. For a consumer
with input covariance Σ (the Gram matrix of x_k over every sample and position, less the
mean's outer product: the mean of a removed channel goes into the bias) and weight rows
W (output channels × taps by input positions), the optimal refit after removing a set S
of inputs, keeping K, leaves

    E_S = tr(W_S (Σ_SS − Σ_SK Σ_KK⁻¹ Σ_KS) W_Sᵀ),

and for a single input p, with P = Σ⁻¹: E_p = ‖W[:, p]‖² / P_pp (Optimal Brain Surgeon's
saliency; ThiNet and He et al. 2017 rank channels by this reconstruction error too).
``eliminate`` removes the inputs greedily, each time the one with the least E_p, then
updates W (the refit: W ← W − W[:, p] P[p, :] / P_pp) and P (the precision of the kept
inputs: P ← P − P[:, p] P[p, :] / P_pp), so the errors it adds sum exactly to E_S of the
inputs removed so far (``tests/test_compress_selection.py``). A copy of another channel
costs nothing whatever its variance; a silent channel costs nothing either. The loss of
position p is the largest error added up to its turn (monotone along the elimination, so
the global ranking below keeps each consumer's elimination order), divided by the
consumer's signal Σ_p' var(x_k[p']) · ‖W[:, p']‖², a number without units: units of
different layers compare and one ranking exists. The importance of u is the sum over its
occurrences.

Approximations: a Conv with k taps is treated as k pointwise maps on the zero-lag
covariance (its rows are output channel × tap; the lagged covariances, which its exact
refit uses, are left out); Σ gets a ridge of ``RIDGE`` × its mean variance so that silent
channels keep it invertible. Where there is no refit the loss is the refit-free share
s_kp = var(x_k[p]) · ‖W[:, p]‖² / Σ_p' var(x_k[p']) · ‖W[:, p']‖², what every input
alone carries: ``auto`` without reconstruction (``--compensation mean``/``none``: the
channels are only masked, and no Gram matrices are collected), depthwise and grouped
Convs (refit per channel, or not at all). ``benchmarks/ranking_fidelity.py`` compares
the two rankings at fixed depths.

Each unit also has a cost: the MACs its removal saves, estimated from the per-node MACs
(``dsp_deploy.cost``) shared evenly among the positions a node's weights slice (a Conv's
output rows, a consumer's input columns, a depthwise Conv's channels). The ranking
orders the unpinned units by importance per MAC saved (least first), so going down it
removes the most MACs for the least loss; ``prefix_plan(n)`` removes its first n under
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
RIDGE = 1e-6  # relative to the mean channel variance: keeps silent channels invertible


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


def eliminate(cov: np.ndarray, rows: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Greedy elimination of a consumer's inputs (module docstring): the order the input
    positions go in and the output error each adds, with weight rows ``rows`` (R, C) on
    inputs of covariance ``cov`` (C, C), refit optimally on the inputs still kept."""
    c = cov.shape[0]
    scale = max(float(np.trace(cov)) / max(c, 1), 1e-30)
    precision = np.linalg.inv(cov + RIDGE * scale * np.eye(c))
    w = rows.astype(np.float64)
    alive, order, added = list(range(c)), [], np.zeros(c)
    for step in range(c):
        err = np.einsum("rp,rp->p", w, w) / np.diag(precision)
        j = int(np.argmin(err))
        order.append(alive.pop(j))
        added[step] = err[j]
        pj = precision[j] / precision[j, j]
        w = np.delete(w - np.outer(w[:, j], pj), j, axis=1)
        precision = np.delete(np.delete(precision - np.outer(precision[:, j], pj), j, 0), j, 1)
    return order, added


def _refit_losses(cov: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per input position: the largest error added up to its turn in the elimination
    (monotone along it, so a global ranking keeps each consumer's elimination order)."""
    order, added = eliminate(cov, rows)
    losses = np.empty(len(order))
    losses[order] = np.maximum.accumulate(added)
    return losses


def _weight_rows(w: np.ndarray, c: Consumer, node) -> np.ndarray | None:
    """A consumer's weights as (rows, input positions) — output channels × taps for a
    Conv — so that ‖W[:, p]‖² is a column's sum of squares (None: a grouped Conv)."""
    if c.kind == "conv":
        if c.groups != 1:
            return None
        return np.moveaxis(w.reshape(w.shape[0], w.shape[1], -1), 1, 2).reshape(-1, w.shape[1])
    return (w.T if c.kind == "gemm" and attr(node, "transB", 0) else w).T


def _importance(analysis: ChannelAnalysis, stats: ActivationStats, nodes: tuple) -> np.ndarray:
    score = np.zeros(len(analysis.units))
    for c in analysis.consumers:
        s = stats.tensors.get(c.tensor)
        w = constant_value(nodes[c.node].inputs[1])
        if s is None or w is None:
            continue
        var = np.maximum(s.energy - s.mean**2, 0.0)
        rows = _weight_rows(w.astype(np.float64), c, nodes[c.node])
        norms = None if rows is None else np.einsum("rp,rp->p", rows, rows)
        signal = var if norms is None else var * norms
        total = signal.sum()
        if total <= 0:
            continue
        gram = stats.gram.get(c.tensor)
        if gram is not None and rows is not None and gram.shape[0] == len(var) + 1:
            mean = gram[:-1, -1]
            signal = _refit_losses(gram[:-1, :-1] - np.outer(mean, mean), rows)
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

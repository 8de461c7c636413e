"""How far a lossless decision generalises: a k-fold report (a report, never a gate).

The lossless criterion (``dead``, threshold 0) decides on *every* calibration sample: a
unit goes only when it is zero, or an exactly foldable constant, on all of them, and the
written model must reproduce all of them. That is exact on the data seen and says
nothing about data not seen. The k-fold report measures it without trading exactness:
split the samples into k folds F_1 … F_k (seeded, sizes within one); for each j

    plan_j   = the plan decided on the union of the other folds
    woken_j  = units plan_j removes that the full plan keeps (they are alive, or not the
               constant plan_j folded, on some sample of F_j)
    Δ_j      = max |y_j − y| over F_j, with y_j the outputs of the model pruned by plan_j
               and y the original model's

Folds whose plan equals the full one need no pruning: their model is the written model,
whose outputs on F_j are already known. Each fold's statistics are gathered once (one
pass over the calibration set in all) and merged (``calibrate.merge_stats``), so the
report costs one pruning and one run over F_j per fold whose plan differs.

Reading it: with n samples, a channel that wakes on a fraction q of inputs is missed by
the decision with probability (1 − q)^n; ``woken_j = 0`` for every fold means no such
channel showed itself in n/k fresh samples, not that none exists.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from dsp_deploy.compress.calibrate import ActivationStats, merge_stats
from dsp_deploy.compress.plan import PruningPlan
from dsp_deploy.compress.verify import compare
from dsp_deploy.options import DEFAULT_FOLDS  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class FoldReport:
    """Per fold j: its samples, channels that wake on it, and max |Δ| on it (see above)."""

    samples: tuple[int, ...]
    woken_units: tuple[int, ...]
    woken_channels: tuple[int, ...]
    max_abs_diff: tuple[float, ...]
    within_tolerance: tuple[bool, ...]

    @property
    def folds(self) -> int:
        return len(self.samples)

    def as_dict(self) -> dict:
        return {
            "folds": self.folds,
            "samples": list(self.samples),
            "woken_units": list(self.woken_units),
            "woken_channels": list(self.woken_channels),
            "max_abs_diff": list(self.max_abs_diff),
            "within_tolerance": list(self.within_tolerance),
        }

    def summary(self) -> str:
        woken = sum(self.woken_channels)
        per_fold = ", ".join(map(str, self.woken_channels))
        return (
            f"{self.folds}-fold check: deciding without each fold would remove {woken} "
            f"{'channel that wakes' if woken == 1 else 'channels that wake'} on it (per fold: "
            f"{per_fold}); max |Δ| on a left-out fold {max(self.max_abs_diff):.3g}"
        )


def fold_indices(n: int, folds: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """``min(folds, n)`` disjoint sorted index sets covering ``range(n)`` (sizes within one)."""
    order = np.random.default_rng(seed).permutation(n)
    return tuple(np.sort(part) for part in np.array_split(order, min(folds, n)))


def _same(a: PruningPlan, b: PruningPlan) -> bool:
    return a.remove == b.remove and a.compensations == b.compensations


def fold_report(
    fold_stats: Sequence[ActivationStats],
    index: Sequence[np.ndarray],
    full: PruningPlan,
    reference: Sequence[np.ndarray],
    written: Sequence[np.ndarray],
    *,
    plan_for: Callable[[ActivationStats], PruningPlan],
    outputs_of: Callable[[PruningPlan, np.ndarray], Sequence[np.ndarray]],
    atol: float,
    rtol: float,
) -> FoldReport:
    """The k-fold report for ``full`` (the plan of all folds).

    ``reference``/``written``: the original's and the written model's outputs on every
    sample; ``plan_for(stats)`` decides like ``full`` did; ``outputs_of(plan, idx)`` runs
    the model pruned by ``plan`` on the samples ``idx``.
    """
    units = full.analysis.units
    rows = []
    for j, idx in enumerate(index):
        plan = plan_for(merge_stats([s for k, s in enumerate(fold_stats) if k != j]))
        woken = set(plan.remove) - set(full.remove)
        ref = [r[idx] for r in reference]
        got = [w[idx] for w in written] if _same(plan, full) else outputs_of(plan, idx)
        parity = compare(ref, got, atol=atol, rtol=rtol)
        channels = sum(len(units[u].atoms) for u in woken)
        rows.append((len(idx), len(woken), channels, parity.max_abs_diff, parity.within_tolerance))
    samples, woken_units, woken_channels, diffs, within = zip(*rows, strict=True)
    return FoldReport(samples, woken_units, woken_channels, diffs, within)

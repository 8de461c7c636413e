"""Which series the lossy gates judge: the stratified split, k-fold, and the sizing.

``partition(options, calibration, evaluation)`` chooses, in this order:

* **lossless** (``dead``, threshold 0): nothing held out. The decision sees every
  series and the written model must reproduce every one (exactness is the gate); the
  k-fold report (``compress.folds``, ``--folds``) says how far that generalises.
* **eval** (``--eval VAL.npz``): nothing of the calibration is held out; the decision
  sees every calibration series and the gates judge the separate set.
* **decision** (``--holdout 0``): nothing held out; the gates judge the series the
  decision saw (optimistic; the report says so).
* **split**: n_h = round(n · holdout) (at most n − 1) series held out, stratified, when
  every active gate could still pass with one event among them: n_h ≥
  ``bounds.needed(t, events=1)`` for each gate threshold t (1 − ``min_agreement``;
  ``max_accuracy_drop`` with labels). With the defaults (0.98, 0.02, ``--confidence``
  0.95) that is n_h ≥ 222, i.e. n ≥ 1,110 series at holdout 0.2.
* **k-fold** otherwise ("few samples"): k = round(1 / holdout) folds (2 ≤ k ≤ n; 5 at
  0.2), stratified; fold j is judged on the model planned without it, so every series
  is held out exactly once and the gates read the pooled counts (``verify.pool``) of all
  n. The written model is planned on all n series: the k-fold counts measure the
  procedure that built it, on series it never saw (cross-validation), and a plan from
  more data is no worse.

Stratification (labels given): a seeded permutation, grouped by class (classes in label
order, the permutation's order within each); k-fold deals it round-robin into k folds,
so each class splits across the folds within one series and fold sizes differ by at
most one; the split holds out each class's largest-remainder share of n_h. Without
labels both reduce to the seeded permutation (the split is the one of earlier
versions).

Sizing: a perfect result (no event) on m judged series certifies a threshold t only if
m ≥ ``needed(t)`` (``compress.bounds``); ``needed`` is the largest over the active
gates. Below it ``enough`` is false: the CLI exits 2 saying what it needs, or, under
``--force``, proceeds and says what cannot be seen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from dsp_deploy.compress import bounds
from dsp_deploy.compress.calibrate import ActivationStats, merge_stats
from dsp_deploy.compress.folds import fold_indices
from dsp_deploy.compress.verify import ParityReport, compare, pool
from dsp_deploy.io import Calibration
from dsp_deploy.options import CompressOptions

__all__ = [
    "HoldoutPlan",
    "Partition",
    "active_thresholds",
    "kfold_holdout",
    "partition",
    "seen",
    "split",
    "stratified_folds",
]


@dataclass(frozen=True)
class HoldoutPlan:
    """What the gates will judge: ``mode`` (module docstring), ``samples`` judged,
    ``folds`` (k-fold only), whether labels exist, and the series a perfect result
    needs to pass every active gate (None: no number suffices)."""

    mode: str  # lossless | eval | decision | split | kfold
    samples: int
    folds: int
    labelled: bool
    needed: int | None
    confidence: float

    @property
    def enough(self) -> bool:
        return self.mode == "lossless" or (self.needed is not None and self.samples >= self.needed)

    @property
    def resolution(self) -> float:
        """The smallest drop the judged series can rule out (``bounds.resolution``)."""
        return bounds.resolution(self.samples, self.confidence)

    def seen(self) -> str:
        """One line: what the judged series can resolve."""
        return seen(self.mode, self.samples, self.folds, self.confidence)

    def shortfall(self, options: CompressOptions) -> str:
        """Why the judged series are too few for the gates, and what would do."""
        gates = ", ".join(f"{cli} {value:g}" for cli, value, _ in _active(options, self.labelled))
        need = (
            "no number of series certifies a zero threshold"
            if self.needed is None
            else f"they need at least {self.needed}"
        )
        return (
            f"{self.seen()}, too few for the gates ({gates}): {need}; give more series "
            "(or --eval VAL.npz), loosen the gates, lower --confidence, or --force"
        )


JUDGED = {  # mode → what the judged series are, in words
    "kfold": "held-out series ({folds} folds, each series held out once)",
    "split": "held-out series",
    "eval": "eval series",
    "decision": "decision series (nothing held out: the decision saw them)",
    "lossless": "calibration series",
}


def seen(mode: str, samples: int, folds: int, confidence: float) -> str:
    """'50 held-out series (5 folds, …): a drop under 5.1 points cannot be seen at 95%
    confidence' — ``bounds.resolution`` in words."""
    what = JUDGED[mode].format(folds=folds)
    return (
        f"{samples} {what}: a drop under {100 * bounds.resolution(samples, confidence):.1f} "
        f"points cannot be seen at {100 * confidence:g}% confidence"
    )


@dataclass(frozen=True)
class Partition:
    """Decision and held-out indices into the calibration, the fold index sets (the
    lossless fold report's, or the lossy k-fold's), and the ``HoldoutPlan``."""

    decide: np.ndarray
    held: np.ndarray
    folds: tuple[np.ndarray, ...]
    plan: HoldoutPlan


def _active(options: CompressOptions, labelled: bool) -> list[tuple[str, float, float]]:
    """(CLI option, value, rate threshold) of each gate a bound decides."""
    rows = []
    if (agreement := options.agreement_gate(labelled)) > 0:
        rows.append(("--min-agreement", agreement, 1 - agreement))
    if labelled and options.max_accuracy_drop < 1:
        rows.append(("--max-accuracy-drop", options.max_accuracy_drop, options.max_accuracy_drop))
    return rows


def active_thresholds(options: CompressOptions, labelled: bool) -> tuple[float, ...]:
    """The rate thresholds of the gates a confidence bound decides."""
    return tuple(t for _, _, t in _active(options, labelled))


def _needed(options: CompressOptions, labelled: bool, events: int = 0) -> int | None:
    thresholds = active_thresholds(options, labelled)
    counts = [bounds.needed(t, options.confidence, events) for t in thresholds]
    return None if None in counts else max(counts, default=1)


def _mode(options: CompressOptions, n: int, labelled: bool, evaluation: bool) -> str:
    if evaluation:
        return "eval"
    if options.lossless:
        return "lossless"
    held = min(int(round(n * options.holdout)), n - 1)
    if held < 1:
        return "decision"
    single = _needed(options, labelled, events=1)
    return "split" if single is not None and held >= single else "kfold"


def partition(
    options: CompressOptions, calibration: Calibration, evaluation: Calibration | None = None
) -> Partition:
    """The decision/held-out indices and folds under ``options`` (module docstring)."""
    n, labels = len(calibration), calibration.labels
    mode = _mode(options, n, labels is not None, evaluation is not None)
    decide, held, folds, judged = np.arange(n), np.arange(0), (), n
    if mode == "split":
        decide, held = split(n, options.holdout, options.seed, labels)
        judged = len(held)
    elif mode == "kfold":
        k = max(2, min(int(round(1 / options.holdout)), n))
        folds = stratified_folds(n, k, labels, options.seed)
    elif mode == "eval":
        judged, labels = len(evaluation), evaluation.labels
    if options.lossless and options.folds >= 2 and n > 1:  # the lossless fold report
        folds = fold_indices(n, options.folds, options.seed)
    needed = 1 if mode == "lossless" else _needed(options, labels is not None)
    k = len(folds) if mode == "kfold" else 0
    plan = HoldoutPlan(mode, judged, k, labels is not None, needed, options.confidence)
    return Partition(decide, held, folds, plan)


def _grouped_order(n: int, labels: np.ndarray | None, seed: int) -> np.ndarray:
    """A seeded permutation of range(n), grouped by class when labels are given."""
    order = np.random.default_rng(seed).permutation(n)
    return order if labels is None else order[np.argsort(labels[order], kind="stable")]


def stratified_folds(
    n: int, folds: int, labels: np.ndarray | None = None, seed: int = 0
) -> tuple[np.ndarray, ...]:
    """``min(folds, n)`` disjoint sorted index sets covering range(n), each class split
    across them within one sample (module docstring)."""
    order, k = _grouped_order(n, labels, seed), min(folds, n)
    return tuple(np.sort(order[j::k]) for j in range(k))


def _apportion(counts: np.ndarray, total: int) -> np.ndarray:
    """Largest-remainder shares of ``total`` in proportion to ``counts`` (ties: first)."""
    exact = counts * total / counts.sum()
    share = np.floor(exact).astype(int)
    rest = np.argsort(-(exact - share), kind="stable")[: total - share.sum()]
    share[rest] += 1
    return share


def split(
    n: int, holdout: float, seed: int = 0, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Decision and held-out indices: round(n · holdout) held out (at most n − 1; none
    when n · holdout < 0.5), each class its proportional share when ``labels`` exist."""
    k = min(int(round(n * holdout)), n - 1)
    order = _grouped_order(n, labels, seed)
    if labels is None:
        held = order[:k]
    else:
        _, counts = np.unique(labels, return_counts=True)
        starts = np.cumsum(counts) - counts
        shares = _apportion(counts, k)
        held = np.concatenate([order[s : s + q] for s, q in zip(starts, shares, strict=True)])
    return np.setdiff1d(np.arange(n), held), np.sort(held)


def kfold_holdout(
    fold_stats: Sequence[ActivationStats],
    index: Sequence[np.ndarray],
    reference: Sequence[np.ndarray],
    labels: np.ndarray | None,
    *,
    plan_for: Callable[[ActivationStats], object],
    outputs_of: Callable[[object, np.ndarray], Sequence[np.ndarray]],
    atol: float,
    rtol: float,
) -> ParityReport:
    """The pooled k-fold held-out report: fold j's outputs from the model planned on the
    other folds' statistics, compared with the original's ``reference`` there."""
    reports = []
    for j, idx in enumerate(index):
        plan = plan_for(merge_stats([s for i, s in enumerate(fold_stats) if i != j]))
        ref = [r[idx] for r in reference]
        fold_labels = None if labels is None else labels[idx]
        got = outputs_of(plan, idx)
        reports.append(compare(ref, got, atol=atol, rtol=rtol, labels=fold_labels))
    return pool(reports)

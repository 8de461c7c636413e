"""From result rows to per-dataset cells, ensembles and paired statistics (numpy, scipy).

A *cell* is one (arch, dataset, variant) over the seeds it has. Its single-model numbers
are means over those seeds; its ensemble accuracy is that of the mean softmax over the
seeds (``p(x) = (1/M) Σ_m p_m(x)``, as LITETime/InceptionTime, from the probabilities each
task stored), formed when the cell has every seed of the sweep (``members``: the seeds in
its ``sweep.json``; without one, any) and M ≥ 2, so that every ensemble of a report has
the same M; the ensemble's params and MACs are the members' sums (the paper's accounting), and
its compression, 1 − Σ params / Σ params_dense, the members' mean.

A comparison of variant v against a baseline b (``dense``, or ``narrow`` for the DSP
variants) runs over the datasets where both cells exist, at one level (``single``: the
seed means; ``ensemble``), and gives the mean compression of v (1 − params/params of the
published dense architecture), the mean accuracy change v − b, wins/ties/losses counted
from v's side (a tie is an equal accuracy), and the two-sided Wilcoxon signed-rank p over
the paired accuracies (1 when every pair is equal; None with fewer than 2 datasets).

The paper's claim, checked per arch, level and compression variant (``targets``; the
variants ``tasks.CHECKED_VARIANTS``: the DSP ones and the post-training ones): mean
compression at least ``PAPER_COMPRESSION`` (its mean over the 128 UCR datasets), a mean
accuracy change against dense of at least ``-MAX_MEAN_LOSS``, and no significant loss
(p > ``ALPHA``, or a mean gain). Against ``narrow``, the control of the same size trained
from scratch, a variant that claims anything must win significantly.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dsp_deploy.errors import InputError
from dsp_experiments.results import Key, row_key
from dsp_experiments.tasks import CHECKED_VARIANTS, VARIANTS

LEVELS: tuple[str, ...] = ("single", "ensemble")
# The paper's mean compression: LITETime 58%, InceptionTime 75% (PAPER.md); its members
# are the single nets of our archs, and an ensemble's compression is its members' mean.
PAPER_COMPRESSION: Mapping[str, float] = {"lite": 0.58, "inception": 0.75}
MAX_MEAN_LOSS = 0.01  # one accuracy point
ALPHA = 0.05
ProbsLoader = Callable[[Key], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Cell:
    arch: str
    dataset: str
    variant: str
    seeds: tuple[str, ...]
    accuracy: float  # mean over seeds
    ensemble_accuracy: float | None  # mean softmax over the seeds (every seed of the sweep)
    params: float  # mean over seeds
    params_dense: float
    macs: float
    macs_dense: float
    latency_ms: float | None
    latency_ratio: float | None  # batch-1, against the dense architecture, paired in the task
    epochs: int

    @property
    def ensemble_params(self) -> float | None:
        """The ensemble's parameters: the sum over its members (None without an ensemble)."""
        return None if self.ensemble_accuracy is None else self.params * len(self.seeds)

    @property
    def ensemble_macs(self) -> float | None:
        return None if self.ensemble_accuracy is None else self.macs * len(self.seeds)

    @property
    def compression(self) -> float:
        return 1 - self.params / self.params_dense

    @property
    def macs_ratio(self) -> float:
        return self.macs / self.macs_dense

    def level(self, level: str) -> float | None:
        return self.accuracy if level == "single" else self.ensemble_accuracy


@dataclass(frozen=True)
class Comparison:
    arch: str
    variant: str
    baseline: str
    level: str
    n: int
    mean_compression: float
    mean_delta: float  # accuracy points (fraction), variant − baseline
    wins: int
    ties: int
    losses: int
    p_value: float | None


def _num(text: str | None) -> float | None:
    return None if text in (None, "") else float(text)


def _present(group: Sequence[Mapping[str, str]], column: str) -> list[float]:
    """The values of ``column`` in the rows that have one (older rows may lack it)."""
    return [x for x in (_num(r.get(column)) for r in group) if x is not None]


def cells(
    rows: Iterable[Mapping[str, str]],
    load_probs: ProbsLoader | None,
    members: Sequence[str] | None = None,
) -> tuple[Cell, ...]:
    """One cell per (arch, dataset, variant), in variant order within a dataset; an
    ensemble where the cell has every seed of ``members`` (None: at least two seeds)."""
    groups: dict[tuple[str, str, str], list[Mapping[str, str]]] = {}
    for r in rows:
        groups.setdefault((r["arch"], r["dataset"], r["variant"]), []).append(r)
    order = {v: i for i, v in enumerate(VARIANTS)}
    out = []
    for (arch, dataset, variant), group in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1].lower(), order.get(kv[0][2], 99))
    ):
        group = sorted(group, key=lambda r: r["seed"])
        latencies = _present(group, "latency_ms")
        latency_ratios = _present(group, "latency_ratio")
        out.append(
            Cell(
                arch=arch,
                dataset=dataset,
                variant=variant,
                seeds=tuple(r["seed"] for r in group),
                accuracy=float(np.mean([float(r["accuracy"]) for r in group])),
                ensemble_accuracy=_ensemble(group, load_probs, members),
                params=float(np.mean([float(r["params"]) for r in group])),
                params_dense=float(np.mean([float(r["params_dense"]) for r in group])),
                macs=float(np.mean([float(r["macs"]) for r in group])),
                macs_dense=float(np.mean([float(r["macs_dense"]) for r in group])),
                latency_ms=float(np.mean(latencies)) if latencies else None,
                latency_ratio=float(np.mean(latency_ratios)) if latency_ratios else None,
                epochs=int(group[0]["epochs"]),
            )
        )
    return tuple(out)


def _ensemble(
    group: Sequence[Mapping[str, str]],
    load_probs: ProbsLoader | None,
    members: Sequence[str] | None,
) -> float | None:
    seeds = {r["seed"] for r in group}
    complete = members is None or set(map(str, members)) <= seeds
    if load_probs is None or len(seeds) < 2 or not complete:
        return None
    return ensemble_accuracy([load_probs(row_key(r)) for r in group])


def ensemble_accuracy(members: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    """Accuracy of the mean of the members' (probabilities, labels); their labels must agree."""
    labels = members[0][1]
    if any(not np.array_equal(y, labels) for _, y in members):
        raise InputError(
            f"ensemble members hold different test labels (shapes {[y.shape for _, y in members]});"
            " expected the same test set for every seed"
        )
    probs = np.mean([p for p, _ in members], axis=0)
    return float(np.mean(probs.argmax(axis=1) == labels))


def ensemble_rows(table: Sequence[Cell], rows: Sequence[Mapping[str, str]]) -> list[dict]:
    """``seed=ensemble`` rows for the contract table (params/MACs summed over members)."""
    protocols = {r["dataset"]: r["protocol"] for r in rows}
    out = []
    for c in table:
        if c.ensemble_accuracy is None:
            continue
        m = len(c.seeds)
        out.append(
            {
                "dataset": c.dataset,
                "arch": c.arch,
                "variant": c.variant,
                "seed": "ensemble",
                "protocol": protocols.get(c.dataset, ""),
                "epochs": c.epochs,
                "accuracy": c.ensemble_accuracy,
                "params": round(c.ensemble_params),
                "macs": round(c.ensemble_macs),
                "params_dense": round(c.params_dense * m),
                "macs_dense": round(c.macs_dense * m),
                "compression": c.compression,
                "macs_reduction": 1 - c.macs_ratio,
            }
        )
    return out


def wilcoxon_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided Wilcoxon signed-rank p of paired samples; 1 when all pairs are equal."""
    from scipy.stats import wilcoxon

    if len(a) < 2:
        return None
    diff = np.asarray(a, float) - np.asarray(b, float)
    if np.all(diff == 0):
        return 1.0
    with warnings.catch_warnings():
        # Small samples and ties make scipy warn about its approximation; p is still right
        # for what it is, and the n beside it says how much to trust it.
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=RuntimeWarning)
        p = float(wilcoxon(a, b).pvalue)
    return None if math.isnan(p) else p


def compare(table: Sequence[Cell], variant: str, baseline: str, level: str) -> list[Comparison]:
    """``variant`` against ``baseline`` per arch, at ``level``; see the module docstring."""
    index = {(c.arch, c.dataset, c.variant): c for c in table}
    out = []
    for arch in sorted({c.arch for c in table}):
        pairs = [
            (index[(arch, d, variant)], index[(arch, d, baseline)])
            for (a, d, v) in index
            if a == arch and v == variant and (arch, d, baseline) in index
        ]
        pairs = [
            (x, y) for x, y in pairs if x.level(level) is not None and y.level(level) is not None
        ]
        if not pairs:
            continue
        acc = np.array([[x.level(level), y.level(level)] for x, y in pairs], dtype=float)
        diff = acc[:, 0] - acc[:, 1]
        out.append(
            Comparison(
                arch=arch,
                variant=variant,
                baseline=baseline,
                level=level,
                n=len(pairs),
                mean_compression=float(np.mean([x.compression for x, _ in pairs])),
                mean_delta=float(diff.mean()),
                wins=int((diff > 0).sum()),
                ties=int((diff == 0).sum()),
                losses=int((diff < 0).sum()),
                p_value=wilcoxon_p(acc[:, 0], acc[:, 1]),
            )
        )
    return out


def summary(table: Sequence[Cell]) -> tuple[Comparison, ...]:
    """Every variant against dense, and every compression variant against narrow, both levels."""
    out: list[Comparison] = []
    for level in LEVELS:
        for variant in VARIANTS[1:]:
            out += compare(table, variant, "dense", level)
        for variant in CHECKED_VARIANTS:
            out += compare(table, variant, "narrow", level)
    return tuple(out)


@dataclass(frozen=True)
class TargetCheck:
    """One compression variant of one arch at one level against the paper's claim (module
    doc): its comparison against dense, and the one against narrow where there is one."""

    arch: str
    variant: str
    level: str
    n: int
    compression: float
    target: float
    delta: float
    p_value: float | None
    met: bool
    versus_narrow: str  # "wins" | "tied" | "loses" (significance at ALPHA) | "–" (no narrow)
    dense: Comparison | None = None
    narrow: Comparison | None = None


def targets(comparisons: Sequence[Comparison]) -> tuple[TargetCheck, ...]:
    """The paper's claim checked for every compression variant against dense in ``comparisons``."""
    by_key = {(c.arch, c.variant, c.baseline, c.level): c for c in comparisons}
    out = []
    for c in comparisons:
        if c.baseline != "dense" or c.variant not in CHECKED_VARIANTS:
            continue
        target = PAPER_COMPRESSION.get(c.arch)
        if target is None:
            continue
        no_loss = c.mean_delta >= 0 or c.p_value is None or c.p_value > ALPHA
        narrow = by_key.get((c.arch, c.variant, "narrow", c.level))
        out.append(
            TargetCheck(
                arch=c.arch,
                variant=c.variant,
                level=c.level,
                n=c.n,
                compression=c.mean_compression,
                target=target,
                delta=c.mean_delta,
                p_value=c.p_value,
                met=c.mean_compression >= target and c.mean_delta >= -MAX_MEAN_LOSS and no_loss,
                versus_narrow="–" if narrow is None else _verdict(narrow),
                dense=c,
                narrow=narrow,
            )
        )
    return tuple(out)


def _verdict(c: Comparison) -> str:
    if c.p_value is None or c.p_value > ALPHA:
        return "tied"
    return "wins" if c.mean_delta > 0 else "loses"


@dataclass(frozen=True)
class CompensationRow:
    """One compensation of the paper's rule on ONNX, over the (dataset, seed) rows of an arch.

    ``delta``: mean test-accuracy change against the unpruned sparse model the rule row
    compressed (its ``accuracy_unpruned``); W/T/L against that model. A row written before
    that column is paired instead with the ``dsp-onnx`` row of the same dataset and seed
    (the same sparse model after lossless ``dead`` compression, which can still differ on
    the test set where a channel dead on the training set wakes); ``stand_ins`` counts them.
    """

    arch: str
    compensation: str
    n: int
    mean_accuracy: float
    delta: float
    wins: int
    ties: int
    losses: int
    p_value: float | None
    stand_ins: int  # pairs against dsp-onnx's accuracy (rows without accuracy_unpruned)


def compensations(rows: Iterable[Mapping[str, str]]) -> tuple[CompensationRow, ...]:
    """How each compensation (``accuracy_<mode>`` of dsp-onnx-rule rows) keeps accuracy."""
    from dsp_deploy.compress.plan import COMPENSATIONS

    rows = list(rows)
    dead_pruned = {
        (r["arch"], r["dataset"], r["seed"]): float(r["accuracy"])
        for r in rows
        if r["variant"] == "dsp-onnx"
    }
    rule = [(r, _unpruned(r, dead_pruned)) for r in rows if r["variant"] == "dsp-onnx-rule"]
    out = []
    for arch in sorted({r["arch"] for r in rows}):
        for mode in COMPENSATIONS:
            pairs = [
                (float(r[f"accuracy_{mode}"]), *unpruned)
                for r, unpruned in rule
                if unpruned is not None and r["arch"] == arch and r.get(f"accuracy_{mode}")
            ]
            if not pairs:
                continue
            acc = np.array([(a, b) for a, b, _ in pairs], dtype=float)
            diff = acc[:, 0] - acc[:, 1]
            out.append(
                CompensationRow(
                    arch=arch,
                    compensation=mode,
                    n=len(pairs),
                    mean_accuracy=float(acc[:, 0].mean()),
                    delta=float(diff.mean()),
                    wins=int((diff > 0).sum()),
                    ties=int((diff == 0).sum()),
                    losses=int((diff < 0).sum()),
                    p_value=wilcoxon_p(acc[:, 0], acc[:, 1]),
                    stand_ins=sum(stand_in for _, _, stand_in in pairs),
                )
            )
    return tuple(out)


def _unpruned(
    rule_row: Mapping[str, str], dead_pruned: Mapping[tuple[str, str, str], float]
) -> tuple[float, bool] | None:
    """(accuracy of the model the rule pruned, whether dsp-onnx's stands in for it)."""
    own = _num(rule_row.get("accuracy_unpruned"))
    if own is not None:
        return own, False
    stand_in = dead_pruned.get((rule_row["arch"], rule_row["dataset"], rule_row["seed"]))
    return None if stand_in is None else (stand_in, True)


@dataclass(frozen=True)
class DeadCheck:
    """``dead`` compression on the test set: compressed vs unpruned accuracy, per row."""

    n: int  # dsp-onnx and dsp-exact rows with accuracy_unpruned
    equal: int  # rows whose compressed model scores exactly the unpruned one's accuracy
    worst: float  # the change of largest magnitude, compressed − unpruned (0 when all equal)


def dead_check(rows: Iterable[Mapping[str, str]]) -> DeadCheck | None:
    """Whether ``dead`` compression kept test accuracy; None when no row records it."""
    deltas = [
        float(r["accuracy"]) - own
        for r in rows
        if r["variant"] in ("dsp-onnx", "dsp-exact")
        and (own := _num(r.get("accuracy_unpruned"))) is not None
    ]
    if not deltas:
        return None
    return DeadCheck(len(deltas), sum(d == 0 for d in deltas), max(deltas, key=abs))

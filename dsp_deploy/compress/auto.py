"""The plan of ``--criterion auto``: rank, then climb the depth against the gates.

Glue between the pipeline and ``compress.search``: the ranking (``compress.selection``)
of the decision part's statistics, the original's outputs on the decision and held-out
parts (one pass each), each candidate's cost (``dsp_deploy.cost``, measured on the
pruned model) and its gates (``compress.gates``, called in ``_gate`` only). Candidates
are judged where the written model is (``Judged``): a held-out part, an ``--eval`` set,
or — with too few series for one part — every series over k folds, fold j on the model
ranked, cut to the same share of MACs and reconstructed on the other folds only, so no
judged series ever shaped the model it judges. The k-fold judge costs k rankings once
and k reconstructions per candidate; the candidate refit on the whole part, which no
fold judges, is made once, for the plan chosen (``pipeline``: a candidate's model there
is only pruned, for its cost). Some judged series are required: without them
nothing could refuse a candidate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnxruntime import InferenceSession

from dsp_deploy.compress.calibrate import ActivationStats, merge_stats
from dsp_deploy.compress.gates import gates
from dsp_deploy.compress.groups import ChannelAnalysis
from dsp_deploy.compress.plan import PruningPlan
from dsp_deploy.compress.prune import prune_analysed
from dsp_deploy.compress.search import Candidate, Judge, SearchReport, search
from dsp_deploy.compress.selection import Ranking, prefix_plan, rank_units
from dsp_deploy.compress.verify import ParityReport, compare, pool
from dsp_deploy.errors import OptionError
from dsp_deploy.inference import run_model, session
from dsp_deploy.io import Calibration
from dsp_deploy.options import CompressOptions

__all__ = ["AutoSettings", "Judged", "auto_plan", "cumulative_macs"]


@dataclass(frozen=True)
class AutoSettings:
    """What the pipeline resolved: tolerances, batch size, the series length."""

    atol: float
    rtol: float
    batch_size: int
    length: int


def cumulative_macs(ranking: Ranking) -> np.ndarray:
    """cum[n]: the estimated share of the ranked units' MACs in the first n (cum[N] = 1;
    uniform in n when no unit's MACs are known)."""
    macs = np.array([ranking.macs[u] for u in ranking.order], dtype=np.float64)
    if not macs.size or macs.sum() <= 0:
        macs = np.ones(len(ranking.order))
    cum = np.concatenate([[0.0], np.cumsum(macs)])
    return cum / cum[-1] if cum[-1] > 0 else cum


@dataclass(frozen=True)
class Judged:
    """The series candidates are judged on (``compress.holdout.partition``'s mode):

    * ``split``: ``held``, a held-out part; the decision is ``part``;
    * ``eval``: ``held``, the ``--eval`` set; the decision is all of the calibration;
    * ``kfold``: every series of ``part`` once, each fold on the candidate ranked and
      reconstructed without it (``fold_stats``: the statistics of each fold of ``folds``).
    """

    part: Calibration
    held: Calibration | None = None
    folds: tuple[np.ndarray, ...] = ()
    fold_stats: tuple[ActivationStats, ...] = ()
    mode: str = "split"

    @property
    def labelled(self) -> bool:
        source = self.part if self.mode == "kfold" else self.held
        return source is not None and source.labels is not None


def _gate(opts: CompressOptions, judged: Judged, decision, held) -> tuple[str, ...]:
    """The gates a candidate must pass: exactly those the written model must pass."""
    if judged.mode == "eval":
        return gates(opts, decision, None, held)
    return gates(opts, decision, held, folds=len(judged.folds))


def auto_plan(
    model: onnx.ModelProto,
    analysis: ChannelAnalysis,
    stats: ActivationStats,
    judged: Judged,
    opts: CompressOptions,
    settings: AutoSettings,
    rewrite: Callable[[PruningPlan, Calibration], onnx.ModelProto],
    progress: Callable[[Candidate], None] | None = None,
) -> tuple[PruningPlan, SearchReport, onnx.ModelProto | None, ParityReport | None]:
    """The deepest plan down the ranking whose rewritten model passes the gates, the
    search's report, that plan's rewritten model (None: nothing removed) and its judged
    report (None: nothing removed)."""
    from dsp_deploy.cost import model_cost

    part = judged.part
    if judged.mode not in ("split", "eval", "kfold") or (
        judged.mode != "kfold" and (judged.held is None or not len(judged.held))
    ):
        raise OptionError(
            f"--criterion auto needs held-out samples to judge candidates; {len(part)} "
            f"calibration samples at --holdout {opts.holdout} hold none out"
        )
    ranking = rank_units(model, analysis, stats, settings.length, part.inputs)
    original = session(model, opts.threads, spin=False)  # batched runs: spinning saves nothing
    cum = cumulative_macs(ranking)

    def outputs_of(m, inputs) -> tuple[np.ndarray, ...]:
        run = m if isinstance(m, InferenceSession) else session(m, opts.threads, spin=False)
        return run_model(run, inputs, batch_size=settings.batch_size)

    def plan_at(s: ActivationStats, r: Ranking, n: int) -> PruningPlan:
        return prefix_plan(
            analysis, s, r, n, compensation=opts.applied_compensation, align=opts.align
        )

    before = model_cost(model, length=settings.length, sample=part.inputs)
    plans: dict[int, PruningPlan] = {}
    helds: dict[int, ParityReport] = {}

    kfold = judged.mode == "kfold"

    def build(n: int) -> tuple[onnx.ModelProto, int]:
        plans[n] = plan_at(stats, ranking, n)
        if kfold:  # the folds' models are judged; the whole part's refit is made once, at the end
            return prune_analysed(plans[n]), len(plans[n].remove)
        return rewrite(plans[n], part), len(plans[n].remove)

    def cost(m: onnx.ModelProto) -> tuple[float, float]:
        after = model_cost(m, length=settings.length, sample=part.inputs)
        return 1 - after.macs / max(before.macs, 1), 1 - after.params / max(before.params, 1)

    tol = (settings.atol, settings.rtol)
    mine = outputs_of(original, part.inputs)  # one pass: the decision's and the folds' reference
    if judged.mode == "kfold":
        held_of = _kfold_judge(model, analysis, judged, settings, cum, plan_at, rewrite,
                               mine, outputs_of, tol)  # fmt: skip
    else:
        reference = outputs_of(original, judged.held.inputs)

        def held_of(n: int, m: onnx.ModelProto) -> ParityReport:
            got = outputs_of(m, judged.held.inputs)
            return compare(reference, got, atol=tol[0], rtol=tol[1], labels=judged.held.labels)

    def remembered(n: int, m: onnx.ModelProto) -> ParityReport:
        helds[n] = held_of(n, m)
        return helds[n]

    decision = (mine, part.inputs, part.labels)
    judge = Judge(decision, remembered, judged.labelled, tol,
                  lambda d, h: _gate(opts, judged, d, h))  # fmt: skip
    report, chosen = search(len(ranking.order), cum, build, cost, judge, outputs_of, progress)
    plan = plans.get(report.chosen)
    if plan is None:  # depth 0: nothing removed
        plan = plan_at(stats, ranking, 0)
    return plan, report, None if kfold else chosen, helds.get(report.chosen)


def _kfold_judge(model, analysis, judged, settings, cum, plan_at, rewrite, reference,
                 outputs_of, tol) -> Callable[[int, onnx.ModelProto], ParityReport]:  # fmt: skip
    """``held(n, _)``: the pooled report of every fold, fold j on the model ranked,
    planned to the same share of MACs (cum[n]) and reconstructed without it."""
    part, folds = judged.part, judged.folds
    everything = np.arange(len(part))
    others = [np.setdiff1d(everything, idx) for idx in folds]
    fold_stats = [
        merge_stats([s for i, s in enumerate(judged.fold_stats) if i != j])
        for j in range(len(folds))
    ]
    rankings = [
        rank_units(model, analysis, s, settings.length, part.take(o).inputs)
        for s, o in zip(fold_stats, others, strict=True)
    ]

    def held(n: int, _model: onnx.ModelProto) -> ParityReport:
        reports = []
        for j, idx in enumerate(folds):
            depth = int(np.searchsorted(cumulative_macs(rankings[j]), cum[n] - 1e-12))
            fold_model = rewrite(plan_at(fold_stats[j], rankings[j], depth), part.take(others[j]))
            labels = None if part.labels is None else part.labels[idx]
            got = outputs_of(fold_model, part.take(idx).inputs)
            ref = [r[idx] for r in reference]
            reports.append(compare(ref, got, atol=tol[0], rtol=tol[1], labels=labels))
        return pool(reports)

    return held

"""The plan of ``--criterion auto``: rank, then bisect the depth against the gates.

Glue between the pipeline and ``compress.search``: the ranking (``compress.selection``)
of the decision part's statistics, the original's outputs on the decision and held-out
parts (one pass each), each candidate's cost (``dsp_deploy.cost``, measured on the
pruned model) and its gates (``compress.gates``, called in ``_gate`` only). A held-out
part is required: without one nothing could refuse a candidate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from dsp_deploy.compress.calibrate import ActivationStats
from dsp_deploy.compress.gates import gates
from dsp_deploy.compress.groups import ChannelAnalysis
from dsp_deploy.compress.plan import PruningPlan
from dsp_deploy.compress.search import Candidate, Judge, SearchReport, search
from dsp_deploy.compress.selection import Ranking, prefix_plan, rank_units
from dsp_deploy.errors import OptionError
from dsp_deploy.inference import run_model, session
from dsp_deploy.io import Calibration
from dsp_deploy.options import CompressOptions

__all__ = ["AutoSettings", "auto_plan", "cumulative_macs"]


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


def _gate(opts: CompressOptions, decision, holdout) -> tuple[str, ...]:
    """The gates a candidate must pass: exactly those the written model must pass."""
    return gates(opts, decision, holdout)


def auto_plan(
    model: onnx.ModelProto,
    analysis: ChannelAnalysis,
    stats: ActivationStats,
    parts: tuple[Calibration, Calibration],
    opts: CompressOptions,
    settings: AutoSettings,
    rewrite: Callable[[PruningPlan], onnx.ModelProto],
    progress: Callable[[Candidate], None] | None = None,
) -> tuple[PruningPlan, SearchReport, onnx.ModelProto | None]:
    """The deepest plan down the ranking whose rewritten model passes the gates, the
    search's report, and that plan's rewritten model (None: nothing removed)."""
    from dsp_deploy.cost import model_cost

    part, rest = parts
    if not len(rest):
        raise OptionError(
            f"--criterion auto needs held-out samples to judge candidates; {len(part)} "
            f"calibration samples at --holdout {opts.holdout} hold none out"
        )
    ranking = rank_units(model, analysis, stats, settings.length, part.inputs)
    original = session(model, opts.threads)

    def outputs_of(m, inputs) -> tuple[np.ndarray, ...]:
        return run_model(m, inputs, batch_size=settings.batch_size, threads=opts.threads)

    def measured(p: Calibration):
        return outputs_of(original, p.inputs), p.inputs, p.labels

    before = model_cost(model, length=settings.length, sample=part.inputs)
    plans: dict[int, PruningPlan] = {}

    def build(n: int) -> tuple[onnx.ModelProto, int]:
        plans[n] = prefix_plan(
            analysis, stats, ranking, n, compensation=opts.applied_compensation, align=opts.align
        )
        return rewrite(plans[n]), len(plans[n].remove)

    def cost(m: onnx.ModelProto) -> tuple[float, float]:
        after = model_cost(m, length=settings.length, sample=part.inputs)
        return 1 - after.macs / max(before.macs, 1), 1 - after.params / max(before.params, 1)

    judge = Judge(
        measured(part),
        measured(rest),
        (settings.atol, settings.rtol),
        lambda d, h: _gate(opts, d, h),
    )
    report, chosen = search(
        len(ranking.order), cumulative_macs(ranking), build, cost, judge, outputs_of, progress
    )
    plan = plans.get(report.chosen)
    if plan is None:  # depth 0: nothing removed
        plan = prefix_plan(analysis, stats, ranking, 0, compensation=opts.applied_compensation)
    return plan, report, chosen

"""``compress``: statistics → groups → plan → prune → verify, composition only.

Lossless (``dead``, threshold 0): channels are decided on *every* calibration sample
and the written model must reproduce every one of them within ``atol + rtol·|y|``; how
far that generalises is measured by a k-fold report (``compress.folds``), not traded
for exactness. Lossy criteria (``dsp``, ``dead`` with a threshold) decide the channels
on the *decision* series and are gated on series the decision did not see
(``compress.holdout``: a stratified held-out part, or, with few series, every series
held out once over k folds; or an ``evaluation`` set), each gate on a confidence bound
(``compress.gates``, ``compress.bounds``). The settings are one
``CompressOptions`` (``dsp_deploy.options``; the batch-size policy and the
architecture's keep rule: ``compress.policy``); the written model carries a ``dsp.compress`` record
(``compress.record``).

Random standard-normal inputs (``RANDOM_SAMPLES`` of them) are compared too, as a
report only: they wake channels that real data never does, so they would refuse sound
pruning.

Reference outputs come from a plain session of the original model, never from the
instrumented one: onnxruntime may compute a graph with extra outputs differently (other
fusions), and "unchanged" is about the model a user runs. Cost: the instrumented pass
(statistics), one pass of the plain original and one of the pruned model over the
calibration set (none when nothing changed: the bytes are the original's), plus one
pruning and one run over a fold per fold whose plan differs
(``benchmarks/compress_speed.py``); a lossy k-fold held-out check (few series) costs one
pruning and one run over its fold per fold.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort

from dsp_deploy.compress.calibrate import (
    ActivationStats,
    Probe,
    merge_stats,
)
from dsp_deploy.compress.folds import FoldReport, fold_report
from dsp_deploy.compress.gates import GateReport, gate_report
from dsp_deploy.compress.graph import copy_model
from dsp_deploy.compress.groups import ChannelAnalysis, find_groups
from dsp_deploy.compress.holdout import kfold_holdout, partition
from dsp_deploy.compress.layers import LayerReport, layer_reports
from dsp_deploy.compress.plan import PruningPlan, make_plan
from dsp_deploy.compress.policy import default_min_count, run_batch_size
from dsp_deploy.compress.prune import prune_analysed
from dsp_deploy.compress.record import record, stamp
from dsp_deploy.compress.verify import ParityReport, compare, verify
from dsp_deploy.errors import ModelError
from dsp_deploy.inference import run_model, session
from dsp_deploy.io import Calibration
from dsp_deploy.modelcheck import quantized_reason
from dsp_deploy.options import AUTO, RECONSTRUCT, CompressOptions, with_changes

if TYPE_CHECKING:
    from dsp_deploy.compress.search import Candidate, SearchReport

logger = logging.getLogger(__name__)

RANDOM_SAMPLES = 16


@dataclass(frozen=True)
class CompressResult:
    model: onnx.ModelProto
    plan: PruningPlan
    layers: tuple[LayerReport, ...]
    params: tuple[int, int]
    macs: tuple[int, int]
    decision: ParityReport
    holdout: ParityReport | None
    folds: FoldReport | None
    random: ParityReport | None
    failures: tuple[str, ...]
    seconds: float
    evaluation: ParityReport | None = None  # the ``evaluation`` set's report
    gate: GateReport | None = None  # the gates' bounds and notes (``compress.gates``)
    search: SearchReport | None = None  # criterion auto: every candidate evaluated

    @property
    def verified(self) -> bool:
        return not self.failures

    @property
    def changed(self) -> bool:
        return bool(self.plan.remove or self.plan.compensations)


def series_length(calibration: Calibration) -> int:
    """The time length of the calibration series: the last axis of the first input with
    (N, C, L…) rank, so a side input such as lengths (N,) is never taken for it."""
    arrays = list(calibration.inputs.values())
    return next((a for a in arrays if a.ndim >= 3), arrays[0]).shape[-1]


def probe_tensors(analysis: ChannelAnalysis) -> tuple[str, ...]:
    """Tensors whose statistics a plan needs: consumer inputs and taps."""
    return tuple(dict.fromkeys([*(c.tensor for c in analysis.consumers), *analysis.taps]))


def probe_segments(analysis: ChannelAnalysis) -> dict[str, np.ndarray]:
    """Per tap, each channel's group: the paper's rule compares a channel with the mean
    energy of its own group, not of every channel a tensor concatenates. Only taps: the
    plan reads ``active`` nowhere else, and each group costs a pass over the tensor.

    Pooling over a whole tensor lets the loudest layer decide for all: in LITE the 17
    fixed hand-crafted channels share a tensor with the 96 learned ones, and their energy
    alone put every learned channel of the shipped GunPoint model under the instance mean
    (0/96 kept, accuracy 0.98 → 0.51); the paper scores the learned channels only.
    """
    group = [analysis.units[u].group for u in analysis.unit_of]
    return {t: np.array([group[a] for a in layout]) for t, layout in analysis.taps.items()}


def _random_report(
    original: ort.InferenceSession,
    candidate: ort.InferenceSession,
    calibration: Calibration,
    **tol,
) -> ParityReport:
    # A report only, and a few samples say enough: random inputs wake channels that real
    # data never does. Drawn per dtype (``dtypes.random_feeds``); ``skipped`` notes inputs
    # fed calibration samples instead.
    from dataclasses import replace

    from dsp_deploy.dtypes import random_feeds

    drawn = random_feeds(calibration, RANDOM_SAMPLES, np.random.default_rng(1))
    reference = run_model(original, drawn.feeds, batch_size=tol["batch_size"])
    report = verify(reference, candidate, drawn.feeds, **tol)
    return replace(report, skipped=drawn.skipped)


def compress(
    model: onnx.ModelProto,
    calibration: Calibration,
    options: CompressOptions | None = None,
    *,
    evaluation: Calibration | None = None,
    progress: Callable[[Candidate], None] | None = None,
    **changes: Any,
) -> CompressResult:
    """Prune ``model`` with ``calibration``; ``model`` itself is not modified.

    ``options`` (default: ``CompressOptions()``) with keyword ``changes`` applied, e.g.
    ``compress(model, calib, criterion="dsp", holdout=0.3)``; an unknown or invalid
    value is an ``OptionError``. ``evaluation``: a separate set (labelled or not) the gates
    judge instead of held-out calibration series; the decision then sees all of the
    calibration. ``align``: kept channel counts rounded up to multiples
    of it (``compress.align``); ``conv2d``: qualifying 1-D convs written in 2-D form
    (``compress.layout``); ``fuse``: BatchNormalization folded into, and Relu moved
    before, a Concat of Convs (``compress.fuse``; before ``conv2d``, which would hide the
    Convs). All are checked by the same verification as the pruning. ``atol``/``rtol``:
    None takes ``tolerance.default_tolerance(model)`` (float16 outputs get float16's).
    ``auto`` (``compress.auto``): ``progress`` is called with each candidate evaluated.
    """
    from dsp_deploy.compress.tolerance import resolve_tolerance

    opts = with_changes(options, changes)
    if reason := quantized_reason(model):
        raise ModelError(f"{reason}; cannot prune quantized convs: compress, then quantize")
    start = time.perf_counter()
    atol, rtol = resolve_tolerance(model, opts.atol, opts.rtol)
    batch_size = run_batch_size(model, opts.batch_size)
    analysis = find_groups(model)
    parts = partition(opts, calibration, evaluation)
    decide, held, kfold = parts.decide, parts.held, parts.plan.mode == "kfold"
    part, rest = calibration.take(decide), calibration.take(held)
    index, fold_stats, stats = _measure(model, analysis, part, opts, batch_size, parts.folds)
    original = session(model, opts.threads)  # the plain original: the reference outputs
    plan_for = _planner(model, analysis, opts)
    searched = built = auto_held = None
    if opts.criterion == AUTO:
        from dsp_deploy.compress.auto import AutoSettings, Judged, auto_plan

        settings = AutoSettings(atol, rtol, batch_size, series_length(calibration))
        rewrite = partial(_pruned, model, opts=opts, batch_size=batch_size)
        mode = parts.plan.mode
        judged = Judged(part, evaluation if mode == "eval" else rest, tuple(index),
                        tuple(fold_stats), mode)  # fmt: skip
        plan, searched, built, auto_held = auto_plan(
            model, analysis, stats, judged, opts, settings, rewrite, progress
        )
    else:
        plan = plan_for(stats)
    pruned, fused, wrapped = _rewrite(model, plan, opts, part, batch_size, built)
    candidate = session(pruned, opts.threads)
    tol = {"atol": atol, "rtol": rtol, "batch_size": batch_size}
    reference = run_model(original, part.inputs, batch_size=batch_size)
    # Nothing changed (the common lossless outcome): the written bytes are the original's,
    # so the plain session's outputs are the written model's; no second pass over them.
    unchanged = pruned.SerializeToString() == model.SerializeToString()
    written = reference if unchanged else run_model(candidate, part.inputs, batch_size=batch_size)
    decision = compare(reference, written, atol=atol, rtol=rtol, labels=part.labels)
    fold_check = held_report = None
    outputs_of = partial(_fold_outputs, part, batch_size, opts.threads)
    if kfold and opts.criterion == AUTO:  # the chosen candidate's, from the search
        held_report = auto_held or _unchanged(reference, part.labels)
    elif kfold:  # every series judged once, on the model planned without its fold
        held_report = kfold_holdout(
            fold_stats, index, reference, part.labels, plan_for=plan_for,
            outputs_of=outputs_of, atol=atol, rtol=rtol,
        )  # fmt: skip
    elif index:
        fold_check = fold_report(
            fold_stats, index, plan, reference, written, plan_for=plan_for,
            outputs_of=outputs_of, atol=atol, rtol=rtol,
        )  # fmt: skip
    if len(rest):
        rest_reference = run_model(original, rest.inputs, batch_size=batch_size)
        held_report = verify(rest_reference, candidate, rest.inputs, labels=rest.labels, **tol)
    eval_report = None
    if evaluation is not None:
        eval_reference = run_model(original, evaluation.inputs, batch_size=batch_size)
        eval_report = verify(eval_reference, candidate, evaluation.inputs,
                             labels=evaluation.labels, **tol)  # fmt: skip
    gate = gate_report(opts, decision, held_report, eval_report, folds=parts.plan.folds)
    random = _random_report(original, candidate, calibration, **tol)
    before, after = _costs(model, pruned, calibration)
    stamp(
        pruned,
        model,
        record(
            opts,
            plan,
            costs=(before, after),
            rewrites=(fused, wrapped),
            decision=decision,
            samples=(len(decide), len(calibration) if kfold else len(held)),
            folds=fold_check,
        ),
    )
    seconds = time.perf_counter() - start
    logger.info("compressed in %.2f s: params %d → %d", seconds, before.params, after.params)
    return CompressResult(
        model=pruned,
        plan=plan,
        layers=layer_reports(analysis, plan, before, after),
        params=(before.params, after.params),
        macs=(before.macs, after.macs),
        decision=decision,
        holdout=held_report,
        folds=fold_check,
        random=random,
        failures=gate.failures,
        seconds=seconds,
        evaluation=eval_report,
        gate=gate,
        search=searched,
    )


def _measure(
    model: onnx.ModelProto,
    analysis: ChannelAnalysis,
    part: Calibration,
    opts: CompressOptions,
    batch_size: int,
    index: tuple[np.ndarray, ...] = (),
) -> tuple[tuple, list[ActivationStats], ActivationStats]:
    """(fold indices, per-fold statistics, statistics of all of ``part``): one probe pass
    over each fold of ``index`` (``compress.holdout.partition``), else over ``part``."""
    # Gram matrices cost more than the whole inference pass; only the rule's lstsq (of
    # pointwise consumers) and the ranking of a reconstructing auto (of every ungrouped
    # one: its losses assume the refit; without it, selection's refit-free share) read them.
    refit = opts.criterion == "dsp" and opts.compensation == "lstsq"
    gram = [c.tensor for c in analysis.consumers if c.pointwise] if refit else []
    if opts.criterion == AUTO and opts.applied_compensation == RECONSTRUCT:
        gram = list(dict.fromkeys(c.tensor for c in analysis.consumers if c.groups == 1))
    tensors = probe_tensors(analysis)
    probe = Probe(model, [*tensors, *gram], opts.threads)  # the original, with probe outputs
    measure = partial(
        probe.statistics,
        tensors=tensors,
        gram=gram,
        segments=probe_segments(analysis),
        batch_size=batch_size,
    )
    fold_stats = [measure(part.take(i).inputs) for i in index]
    stats = merge_stats(fold_stats) if fold_stats else measure(part.inputs)
    return index, fold_stats, stats


def _planner(model: onnx.ModelProto, analysis: ChannelAnalysis, opts: CompressOptions):
    """``stats → PruningPlan`` under the options (``min_count`` None: the arch's rule)."""
    return partial(
        make_plan,
        analysis,
        criterion=opts.criterion,
        threshold=opts.threshold,
        min_count=default_min_count(model) if opts.min_count is None else opts.min_count,
        compensation=opts.compensation,
        align=opts.align,
    )


def _fold_outputs(
    part: Calibration,
    batch_size: int,
    threads: int | None,
    plan: PruningPlan,
    fold: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """The outputs of the model pruned by a fold's ``plan`` on that fold's samples."""
    model = prune_analysed(plan, checked=False)  # only run: no shape check
    return run_model(model, part.take(fold).inputs, batch_size=batch_size, threads=threads)


def _rewrite(
    model: onnx.ModelProto,
    plan: PruningPlan,
    opts: CompressOptions,
    part: Calibration,
    batch_size: int,
    built: onnx.ModelProto | None = None,
):
    """The pruned (and, for ``reconstruct``, refitted on ``part``) model — ``built`` when
    the search made it already — then the fused and 2-D rewrites the options ask for:
    (model, the fuse ``Rewrite`` or None, convs written in 2-D)."""
    from dsp_deploy.compress.fuse import fuse_concat
    from dsp_deploy.compress.layout import conv1d_as_conv2d

    pruned = built or _pruned(model, plan, opts=opts, part=part, batch_size=batch_size)
    fused = fuse_concat(pruned) if opts.fuse else None
    if fused is not None:
        pruned = fused.model
    wrapped = 0
    if opts.conv2d:
        layout = conv1d_as_conv2d(pruned)
        pruned, wrapped = layout.model, len(layout.report.wrapped)
    return pruned, fused, wrapped


def _unchanged(reference: tuple[np.ndarray, ...], labels: np.ndarray | None) -> ParityReport:
    """The judged report of the model itself (auto at depth 0): every series agrees."""
    return compare(reference, reference, atol=0.0, rtol=0.0, labels=labels)


def _pruned(
    model: onnx.ModelProto,
    plan: PruningPlan,
    part: Calibration,
    *,
    opts: CompressOptions,
    batch_size: int,
) -> onnx.ModelProto:
    """``prune``, then (``reconstruct``) every consumer refitted on ``part``."""
    pruned = prune_analysed(plan) if plan.remove or plan.compensations else copy_model(model)
    if opts.applied_compensation == RECONSTRUCT and plan.remove and not opts.lossless:
        from dsp_deploy.compress.reconstruct import reconstruct

        pruned = reconstruct(
            model, pruned, plan, part.inputs, batch_size=batch_size, threads=opts.threads
        ).model
    return pruned


def _costs(model: onnx.ModelProto, pruned: onnx.ModelProto, calibration: Calibration):
    """(before, after) ``ModelCost`` at the calibration series' length."""
    from dsp_deploy.cost import model_cost

    length = series_length(calibration)
    before = model_cost(model, length=length, sample=calibration.inputs)
    after = model_cost(pruned, length=length, sample=calibration.inputs)
    return before, after


__all__ = [
    "CompressOptions",
    "CompressResult",
    "LayerReport",
    "compress",
    "layer_reports",
    "probe_segments",
    "probe_tensors",
    "series_length",
]

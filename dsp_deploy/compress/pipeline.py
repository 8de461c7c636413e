"""``compress``: statistics → groups → plan → prune → verify, composition only.

Lossless (``dead``, threshold 0): channels are decided on *every* calibration sample
and the written model must reproduce every one of them within ``atol + rtol·|y|``; how
far that generalises is measured by a k-fold report (``compress.folds``), not traded
for exactness. Lossy criteria (``dsp``, ``dead`` with a threshold) split the samples
once (seeded): channels are decided on the *decision* part (1 − holdout) and the model
is gated on the held-out part. Gates (any failing one is listed in ``failures``; the
CLI exits 1 and writes nothing unless ``--force``):

* lossless: outputs on every sample within ``atol + rtol·|y|``;
* held-out part: argmax agreement ≥ ``min_agreement``;
* with labels: accuracy drop (held-out part, or the decision part when nothing is held
  out) ≤ ``max_accuracy_drop``.

Random standard-normal inputs (``RANDOM_SAMPLES`` of them) are compared too, as a
report only: they wake channels that real data never does, so they would refuse sound
pruning.

Reference outputs come from a plain session of the original model, never from the
instrumented one: onnxruntime may compute a graph with extra outputs differently (other
fusions), and "unchanged" is about the model a user runs. Cost: the instrumented pass
(statistics), one pass of the plain original and one of the pruned model over the
calibration set, plus one pruning and one run over a fold per fold whose plan differs
(``benchmarks/compress_speed.py``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from functools import partial

import numpy as np
import onnx
import onnxruntime as ort

from dsp_deploy import metadata
from dsp_deploy.compress.calibrate import (
    ActivationStats,
    Probe,
    collect_stats,
    merge_stats,
)
from dsp_deploy.compress.folds import DEFAULT_FOLDS, FoldReport, fold_indices, fold_report
from dsp_deploy.compress.graph import copy_model
from dsp_deploy.compress.groups import ChannelAnalysis, find_groups
from dsp_deploy.compress.plan import DEFAULT_COMPENSATION, PruningPlan, make_plan
from dsp_deploy.compress.prune import prune
from dsp_deploy.compress.verify import ParityReport, compare, verify
from dsp_deploy.errors import ModelError
from dsp_deploy.inference import run_model, session
from dsp_deploy.io import Calibration, model_inputs
from dsp_deploy.modelcheck import quantized_reason

logger = logging.getLogger(__name__)

LITE_ARCHS = frozenset({"lite", "litetime"})
RANDOM_SAMPLES = 16


@dataclass(frozen=True)
class LayerReport:
    """One source node (a Conv creating channels): channels, params, MACs before/after."""

    name: str
    channels: tuple[int, int]
    params: tuple[int, int]
    macs: tuple[int, int]


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


def is_lossless(criterion: str, threshold: float) -> bool:
    """Whether ``criterion`` promises unchanged outputs: ``dead`` with threshold 0."""
    return criterion == "dead" and threshold == 0


def split(n: int, holdout: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Decision and held-out sample indices (held-out empty when n · holdout < 1)."""
    order = np.random.default_rng(seed).permutation(n)
    k = min(int(round(n * holdout)), n - 1)
    return np.sort(order[k:]), np.sort(order[:k])


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


def default_min_count(model: onnx.ModelProto) -> int:
    """The paper's keep rule: n_c > 1 for LITE-like models, n_c > 0 otherwise."""
    return 1 if metadata.read_metadata(model).get(metadata.ARCH) in LITE_ARCHS else 0


def _layers(analysis: ChannelAnalysis, plan: PruningPlan, before, after) -> tuple:
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


def _gates(criterion, threshold, decision, holdout, min_agreement, max_drop) -> tuple[str, ...]:
    failures = []
    if is_lossless(criterion, threshold) and not decision.within_tolerance:
        failures.append(
            f"outputs deviate on the calibration samples (max |Δ| {decision.max_abs_diff:.3g})"
        )
    if holdout is not None and holdout.agreement < min_agreement:
        failures.append(f"held-out prediction agreement {holdout.agreement:.4f} < {min_agreement}")
    judged = holdout if holdout is not None and holdout.accuracy else decision
    if judged.accuracy is not None and judged.accuracy[0] - judged.accuracy[1] > max_drop:
        before, after = judged.accuracy
        failures.append(f"accuracy drops {before:.4f} → {after:.4f} (> {max_drop})")
    return tuple(failures)


def _stamp(model: onnx.ModelProto, source: onnx.ModelProto, info: dict) -> None:
    digest = hashlib.sha256(source.SerializeToString()).hexdigest()
    metadata.write_metadata(model, {metadata.COMPRESS: {"source_sha256": digest, **info}})


def run_batch_size(model: onnx.ModelProto, batch_size: int) -> int:
    """``batch_size``, or 1 for a model whose batch dimension is fixed at 1.

    Calibration runs in batches of any size; a model exported with a fixed batch of 1
    runs one sample at a time, and a larger fixed batch is refused (the last batch could
    not be filled without changing the statistics).
    """
    fixed = set()
    for value in model_inputs(model):
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            fixed.add(int(dims[0].dim_value))
    if not fixed:
        return batch_size
    if fixed == {1}:
        return 1
    raise ModelError(
        f"the model's batch dimension is fixed at {max(fixed)}; compress needs a dynamic "
        "batch dimension or batch 1 (export the model with a dynamic batch axis)"
    )


def compress(
    model: onnx.ModelProto,
    calibration: Calibration,
    *,
    criterion: str = "dead",
    threshold: float = 0.0,
    min_count: int | None = None,
    compensation: str = DEFAULT_COMPENSATION,
    reconstruct: bool = False,
    holdout: float = 0.2,
    folds: int = DEFAULT_FOLDS,
    atol: float | None = None,
    rtol: float | None = None,
    min_agreement: float = 0.99,
    max_accuracy_drop: float = 0.01,
    batch_size: int = 64,
    threads: int | None = None,
    seed: int = 0,
    align: int = 1,
    conv2d: bool = False,
    fuse: bool = False,
) -> CompressResult:
    """Prune ``model`` with ``calibration``; ``model`` itself is not modified.

    ``align``: kept channel counts rounded up to multiples of it (``compress.align``);
    ``conv2d``: qualifying 1-D convs written in 2-D form (``compress.layout``); ``fuse``:
    BatchNormalization folded into, and Relu moved before, a Concat of Convs
    (``compress.fuse``; before ``conv2d``, which would hide the Convs). All are checked
    by the same verification as the pruning. ``atol``/``rtol``: None takes
    ``tolerance.default_tolerance(model)`` (float16 outputs get float16's).
    """
    from dsp_deploy.compress.fuse import fuse_concat
    from dsp_deploy.compress.layout import conv1d_as_conv2d
    from dsp_deploy.compress.tolerance import resolve_tolerance
    from dsp_deploy.cost import model_cost

    if reason := quantized_reason(model):
        raise ModelError(f"{reason}; cannot prune quantized convs: compress, then quantize")
    start = time.perf_counter()
    atol, rtol = resolve_tolerance(model, atol, rtol)
    batch_size = run_batch_size(model, batch_size)
    analysis = find_groups(model)
    exact = is_lossless(criterion, threshold)
    decide, held = split(len(calibration), 0.0 if exact else holdout, seed)
    part, rest = calibration.take(decide), calibration.take(held)
    mode = "lstsq" if reconstruct else compensation
    # Gram matrices cost more than the whole inference pass; only the rule's lstsq reads them.
    refit = criterion == "dsp" and mode == "lstsq"
    gram = [c.tensor for c in analysis.consumers if c.pointwise] if refit else []
    tensors = probe_tensors(analysis)
    probe = Probe(model, [*tensors, *gram], threads)  # the original, with probe outputs
    original = session(model, threads)  # the plain original: the reference outputs
    measure = partial(
        probe.statistics,
        tensors=tensors,
        gram=gram,
        segments=probe_segments(analysis),
        batch_size=batch_size,
    )
    index = fold_indices(len(part), folds, seed) if exact and folds >= 2 and len(part) > 1 else ()
    fold_stats = [measure(part.take(i).inputs) for i in index]
    stats = merge_stats(fold_stats) if fold_stats else measure(part.inputs)
    count = default_min_count(model) if min_count is None else min_count
    plan_for = partial(
        make_plan,
        analysis,
        criterion=criterion,
        threshold=threshold,
        min_count=count,
        compensation=mode,
        align=align,
    )
    plan = plan_for(stats)
    pruned = prune(model, plan) if plan.remove or plan.compensations else copy_model(model)
    fused = fuse_concat(pruned) if fuse else None
    if fused is not None:
        pruned = fused.model
    wrapped = 0
    if conv2d:
        pruned, wrapped = conv1d_as_conv2d(pruned)
    candidate = session(pruned, threads)
    tol = {"atol": atol, "rtol": rtol, "batch_size": batch_size}
    reference = run_model(original, part.inputs, batch_size=batch_size)
    written = run_model(candidate, part.inputs, batch_size=batch_size)
    decision = compare(reference, written, atol=atol, rtol=rtol, labels=part.labels)
    fold_check = None
    if index:
        fold_check = fold_report(
            fold_stats,
            index,
            plan,
            reference,
            written,
            plan_for=plan_for,
            outputs_of=lambda p, i: run_model(
                prune(model, p), part.take(i).inputs, batch_size=batch_size, threads=threads
            ),
            atol=atol,
            rtol=rtol,
        )
    held_report = None
    if len(rest):
        rest_reference = run_model(original, rest.inputs, batch_size=batch_size)
        held_report = verify(rest_reference, candidate, rest.inputs, labels=rest.labels, **tol)
    random = _random_report(original, candidate, calibration, **tol)
    length = series_length(calibration)
    before = model_cost(model, length=length, sample=calibration.inputs)
    after = model_cost(pruned, length=length, sample=calibration.inputs)
    failures = _gates(criterion, threshold, decision, held_report, min_agreement, max_accuracy_drop)
    _stamp(
        pruned,
        model,
        {
            "criterion": criterion,
            "threshold": threshold,
            "compensation": mode if criterion == "dsp" or threshold > 0 else "exact",
            "units_removed": len(plan.remove),
            "align": align,
            "conv2d": wrapped,
            "fuse": {
                "batchnorm": len(fused.batchnorms) if fused else 0,
                "relu": len(fused.relus) if fused else 0,
            },
            "params": [before.params, after.params],
            "macs": [before.macs, after.macs],
            "max_abs_diff": decision.max_abs_diff,
            "calibration_samples": [len(decide), len(held)],
            "folds": None if fold_check is None else fold_check.as_dict(),
        },
    )
    seconds = time.perf_counter() - start
    logger.info("compressed in %.2f s: params %d → %d", seconds, before.params, after.params)
    return CompressResult(
        model=pruned,
        plan=plan,
        layers=_layers(analysis, plan, before, after),
        params=(before.params, after.params),
        macs=(before.macs, after.macs),
        decision=decision,
        holdout=held_report,
        folds=fold_check,
        random=random,
        failures=failures,
        seconds=seconds,
    )


@dataclass(frozen=True)
class UnitStats:
    """A unit's statistics at one channel-mixing consumer reading it (one row per
    consumer and position), and whether ``dead`` drops the unit."""

    group: int
    unit: int
    consumer: str
    tensor: str
    position: int
    max_abs: float
    mean: float
    energy: float
    active: int | None
    dead: bool
    kept_by: str | None = None  # why a unit the criterion chose stays (``PruningPlan.held``)


@dataclass(frozen=True)
class Inspection:
    groups: tuple
    layers: tuple[LayerReport, ...]
    params: int
    macs: int
    units: tuple[UnitStats, ...]
    bytes: int = 0  # weight storage (``ModelCost.bytes``)
    unknown_macs: tuple[str, ...] = ()  # nodes whose MACs no shape tells (no --calib)

    def dead_units(self, group: int) -> int:
        """Units of ``group`` that the lossless ``dead`` criterion removes."""
        return len({u.unit for u in self.units if u.group == group and u.dead})


def _unit_stats(analysis: ChannelAnalysis, stats: ActivationStats, plan: PruningPlan):
    taps = {
        analysis.unit_of[a]: (t, p) for t, lay in analysis.taps.items() for p, a in enumerate(lay)
    }
    removed, held = set(plan.remove), dict(plan.held)
    rows = []
    for c in analysis.consumers:
        s = stats.tensors[c.tensor]
        for p, atom in enumerate(c.layout):
            u = analysis.unit_of[atom]
            tap = taps.get(u)
            rows.append(
                UnitStats(
                    group=analysis.units[u].group,
                    unit=u,
                    consumer=analysis.node_names[c.node],
                    tensor=c.tensor,
                    position=p,
                    max_abs=float(s.max_abs[p]),
                    mean=float(s.mean[p]),
                    energy=float(s.energy[p]),
                    active=None if tap is None else int(stats.tensors[tap[0]].active[tap[1]]),
                    dead=u in removed,
                    kept_by=held.get(u),
                )
            )
    return tuple(rows)


def inspect_model(
    model: onnx.ModelProto,
    calibration: Calibration | None = None,
    *,
    batch_size: int = 64,
    threads: int | None = None,
) -> Inspection:
    """Groups, per-layer cost and (with calibration) per-unit statistics and dead list."""
    from dsp_deploy.compress.plan import empty_plan
    from dsp_deploy.cost import model_cost

    analysis = find_groups(model)
    batch_size = run_batch_size(model, batch_size)
    length = None if calibration is None else series_length(calibration)
    sample = None if calibration is None else calibration.inputs
    cost = model_cost(model, length=length, sample=sample)
    units: tuple[UnitStats, ...] = ()
    plan = empty_plan(analysis)
    if calibration is not None:
        stats = collect_stats(
            model,
            calibration.inputs,
            probe_tensors(analysis),
            segments=probe_segments(analysis),
            batch_size=batch_size,
            threads=threads,
        )
        plan = make_plan(analysis, stats, criterion="dead")
        units = _unit_stats(analysis, stats, plan)
    layers = _layers(analysis, empty_plan(analysis), cost, cost)
    return Inspection(
        analysis.groups, layers, cost.params, cost.macs, units, cost.bytes, cost.unknown
    )


__all__ = ["CompressResult", "Inspection", "LayerReport", "compare", "compress", "inspect_model"]

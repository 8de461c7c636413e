"""``quantize``: prepare → equalise → ranges → INT8 → bias correction → fallback → gates.

1. Refused (``ModelError``, exit 2): a model already quantized
   (``modelcheck.quantized_reason``), a model without Conv, an installed onnxruntime
   without the integer kernels.
2. Which series decide and which are judged: ``compress.holdout.partition`` under
   quantize's gates, as ``compress`` does — ``eval`` (``--eval``: the decision sees every
   calibration series, the gates judge the separate set), ``split`` (stratified held-out
   part), ``kfold`` (few series: fold j judged on the model the whole procedure —
   ranges, equalisation, sensitivity, search — built without it, pooled over the k
   folds; the written model is built on every series; k + 1 runs), ``decision``
   (``--holdout 0``). The gates are compress's one-sided bounds (``compress.gates``);
   certifying a 2-point drop at 95 % needs ≥ 133 judged series (the CLI refuses fewer
   before the run unless ``--force``).
3. ``build.prepare`` folds BatchNormalization (after a Concat too), ``equalise`` scales
   Conv → Relu → Conv and depthwise → pointwise pairs by the decision samples' channel
   ranges, ``ranges.choose_range`` picks each activation's range (min/max, percentile or
   MSE-optimal clipping, per tensor), ``build.quantize_qdq`` writes QDQ in the target's
   flavour with per-channel weights (on x86 7-bit where a Conv reads a signed tensor:
   the int16 saturation of non-VNNI U8S8 kernels), ``bias`` corrects the Conv biases
   level by level and quantizes again.
4. On a host of the target's kind, Convs onnxruntime would not fuse into an integer op
   stay float from the start (``speed.fusions``); then ``fallback`` keeps layers in float
   in the order of their sensitivity (the class probabilities' MSE with that layer alone
   quantized), trying the convs that read the input first, until no decision series
   changes its prediction (``SEARCH_GATES``: point estimates, zero events — the decision
   part is too small for a bound, the bound is the judged gates' job, and at the
   smallest n that certifies a drop, 133 series at 95 %, only zero events pass; letting
   one newly wrong series of 50 through took a configuration that lost 5 points on
   Inception's eval set). With ``a16``, the layers
   it keeps in float are tried with 16-bit activations instead (A16W8), taken when that
   passes and runs faster (paired timing; only on a host of the target's kind).
   For another target the candidate is judged as written (DequantizeLinear → float ops:
   the values the target's kernels approximate), since this machine's kernels are not
   the target's.
5. On a host of the target's kind, a paired timing (batch 1 and 64): when INT8 is not
   faster than the float input, the float input is kept (``scheme: float``) and said so.

The written model carries ``dsp.quantize`` (``quantize.record``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial

import numpy as np
import onnx

from dsp_deploy.compress.gates import GateReport, gate_report, gates
from dsp_deploy.compress.holdout import Partition, partition
from dsp_deploy.compress.verify import ParityReport, compare, pool
from dsp_deploy.errors import ModelError
from dsp_deploy.inference import run_model, session
from dsp_deploy.io import Calibration
from dsp_deploy.modelcheck import quantized_reason, runtime_ops
from dsp_deploy.options import CompressOptions
from dsp_deploy.passes import copy_model
from dsp_deploy.quantize import bias, fallback, ranges, speed
from dsp_deploy.quantize.build import prepare, quantize_qdq, signed_input_convs
from dsp_deploy.quantize.equalise import equalise
from dsp_deploy.quantize.options import QuantizeOptions, host_target
from dsp_deploy.quantize.record import record, stamp

logger = logging.getLogger(__name__)

__all__ = ["QuantizeResult", "gate_options", "judged_partition", "quantize"]

WEIGHTED = ("Conv", "Gemm", "MatMul")
REQUIRED_KERNELS = (("QuantizeLinear", ""), ("DequantizeLinear", ""), ("QLinearConv", ""))
# The search's stopping rule (module doc, 4.): no decision series changes its prediction.
SEARCH_GATES = CompressOptions(
    criterion="dsp", min_agreement=1.0, max_accuracy_drop=0.0, confidence=0.5
)
A16_MARGIN = 0.97  # A16W8 taken only below this time ratio (paired timing noise)


@dataclass(frozen=True)
class QuantizeResult:
    model: onnx.ModelProto
    scheme: str  # the flavour's label, or "float" when INT8 was not kept
    kept_float: tuple[str, ...]
    wide: tuple[str, ...]  # layers with 16-bit activations (A16W8)
    unfused: tuple[str, ...]
    equalised: int
    decision: ParityReport
    holdout: ParityReport | None  # the held-out series (split, or pooled k-fold)
    evaluation: ParityReport | None  # the --eval set
    gate: GateReport
    latency_ratio: dict[int, float] | None
    notes: tuple[str, ...]
    failures: tuple[str, ...]
    tried: int
    seconds: float

    @property
    def verified(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class _Context:
    """What every trial needs: the float model to quantize, ranges, data, reference."""

    model: onnx.ModelProto
    ranges: dict
    options: QuantizeOptions
    inputs: dict
    reference: tuple
    labels: np.ndarray | None
    native: bool


@dataclass(frozen=True)
class _Built:
    """One run of the procedure (module doc, 3.–4.) on one set of series."""

    candidate: onnx.ModelProto
    decision: ParityReport
    kept_float: tuple[str, ...]
    wide: tuple[str, ...]
    unfused: tuple[str, ...]
    pairs: int
    tried: int
    notes: tuple[str, ...]
    narrow: tuple[str, ...] = ()  # Convs with 7-bit weights (``build``: signed inputs)


def check_quantizable(model: onnx.ModelProto) -> None:
    """``ModelError`` for a model ``quantize`` refuses (module doc, 1.)."""
    if reason := quantized_reason(model):
        raise ModelError(f"{reason}; it is already quantized: quantize the float model")
    if not any(n.op_type == "Conv" for n in model.graph.node):
        ops = sorted({n.op_type for n in model.graph.node})
        raise ModelError(f"expected a model with Conv nodes to quantize; it has only {ops}")
    kernels = runtime_ops()
    missing = [op for op, domain in REQUIRED_KERNELS if (domain, op) not in kernels]
    if missing:
        raise ModelError(f"the installed onnxruntime has no CPU kernel for {missing}")


def gate_options(options: QuantizeOptions, confidence: float | None = None) -> CompressOptions:
    """compress's gates under quantize's thresholds (lossy: no exactness gate)."""
    return CompressOptions(
        criterion="dsp",
        holdout=options.holdout,
        min_agreement=options.min_agreement,
        max_accuracy_drop=options.max_accuracy_drop,
        confidence=options.confidence if confidence is None else confidence,
        seed=options.seed,
    )


def judged_partition(
    options: QuantizeOptions, calibration: Calibration, evaluation: Calibration | None = None
) -> Partition:
    """The decision/judged series (``compress.holdout.partition``, module doc 2.)."""
    return partition(gate_options(options), calibration, evaluation)


def _outputs(ctx: _Context, model: onnx.ModelProto, inputs: dict) -> tuple:
    sess = session(model, ctx.options.threads, optimise=ctx.native)
    return run_model(sess, inputs, batch_size=ctx.options.batch_size)


def _corrected(ctx: _Context, kept: tuple[str, ...], wide: tuple[str, ...] = ()) -> onnx.ModelProto:
    """The INT8 model with ``kept`` in float (``wide`` A16W8), its Conv biases corrected
    level by level (``bias.corrected``)."""
    build = partial(quantize_qdq, ranges=ctx.ranges, flavour=ctx.options.flavour,
                    exclude=kept, wide=wide)  # fmt: skip
    first = build(ctx.model)
    if not ctx.options.bias_correction:
        return first
    run = partial(ranges.activations, inputs=ctx.inputs, batch_size=ctx.options.batch_size)
    second = bias.corrected(ctx.model, build, lambda m, names: run(m, names=names), kept)
    # Kept only where it helps the class scores (it corrects means, not the decision).
    deviations = [fallback.mean_deviation(ctx.reference, _outputs(ctx, m, ctx.inputs))
                  for m in (first, second)]  # fmt: skip
    return second if deviations[1] < deviations[0] else first


def _trial(
    ctx: _Context, kept: tuple[str, ...], wide: tuple[str, ...] = ()
) -> tuple[tuple, tuple[str, ...]]:
    """((model, decision report), failures of the gates' point estimates on the decision
    series) for ``kept`` in float."""
    candidate = _corrected(ctx, kept, wide)
    report = compare(ctx.reference, _outputs(ctx, candidate, ctx.inputs), atol=0, rtol=0,
                     labels=ctx.labels)  # fmt: skip
    return (candidate, report), gates(SEARCH_GATES, report, None)


def _alone(ctx: _Context, node: str, weighted: tuple[str, ...]) -> float:
    """Sensitivity of ``node``: probability MSE with it alone quantized (``fallback``)."""
    others = tuple(n for n in weighted if n != node)
    candidate = quantize_qdq(ctx.model, ctx.ranges, ctx.options.flavour, others)
    return fallback.probability_mse(ctx.reference, _outputs(ctx, candidate, ctx.inputs))


def _channel_ranges(acts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        k: np.abs(v).max(axis=tuple(a for a in range(v.ndim) if a != 1))
        for k, v in acts.items()
        if v.ndim >= 2
    }


def _ready(model: onnx.ModelProto, part: Calibration, options: QuantizeOptions):
    """(float model to quantize, its activation ranges, pairs equalised)."""
    prepared = prepare(model)
    names = ranges.float_tensors(prepared)
    run = partial(ranges.activations, inputs=part.inputs, batch_size=options.batch_size)
    pairs = 0
    if options.equalise:
        eq = equalise(prepared, _channel_ranges(run(prepared, names=names)))
        prepared, pairs = eq.model, len(eq.report.pairs)
    acts = run(prepared, names=ranges.float_tensors(prepared))
    return prepared, {k: ranges.choose_range(v) for k, v in acts.items()}, pairs


def input_nodes(model: onnx.ModelProto, nodes: tuple[str, ...]) -> tuple[str, ...]:
    """The ``nodes`` that read a graph input (the first convs)."""
    inputs = {i.name for i in model.graph.input}
    return tuple(n.name for n in model.graph.node
                 if n.name in nodes and any(i in inputs for i in n.input))  # fmt: skip


def _search(ctx: _Context, unfused: tuple[str, ...]) -> fallback.Attempt:
    """The fallback (``fallback``): the first passing configuration, unfused in float."""
    first, failures = _trial(ctx, unfused)
    if not failures:
        return fallback.Attempt(unfused, first, (), 1)
    weighted = tuple(
        n.name for n in ctx.model.graph.node if n.op_type in WEIGHTED and n.name not in unfused
    )
    order = fallback.sensitivity_order(weighted, lambda n: _alone(ctx, n, weighted))
    configs = fallback.configurations(input_nodes(ctx.model, weighted), order,
                                      ctx.options.max_float)[1:]  # fmt: skip
    if not configs:  # --max-float 0
        return fallback.Attempt(unfused, first, failures, 1)
    attempt = fallback.first_passing(configs, lambda kept: _trial(ctx, (*unfused, *kept)))
    return fallback.Attempt((*unfused, *attempt.kept_float), attempt.candidate,
                            attempt.failures, attempt.tried + 1)  # fmt: skip


def _wide(ctx: _Context, attempt: fallback.Attempt, unfused: tuple[str, ...]):
    """(candidate, decision report, kept, wide, note): A16W8 for the layers the fallback
    kept in float when that passes and runs faster than keeping them float (module doc, 4.)."""
    keep = (*attempt.candidate, attempt.kept_float, ())
    kept = tuple(n for n in attempt.kept_float if n not in unfused)
    if not (ctx.options.a16 and kept and attempt.passed and ctx.native):
        return (*keep, None)
    (model, report), failures = _trial(ctx, unfused, kept)
    what = f"A16W8 for the {len(kept)} layer(s) in float"
    if failures:
        return (*keep, f"{what}: not taken, the decision series fail ({'; '.join(failures)})")
    feeds = {k: np.resize(v, (64, *v.shape[1:])) for k, v in ctx.inputs.items()}
    ratio = speed.paired_ratio(attempt.candidate[0], model, feeds)
    if ratio < A16_MARGIN:
        return model, report, unfused, kept, f"{what}: taken, {ratio:.2f}x their float time"
    return (*keep, f"{what}: not taken, {ratio:.2f}x the time with them in float")


def _unfused(ctx: _Context) -> tuple[str, ...]:
    if not (ctx.native and ctx.options.speed_check):
        return ()
    found = speed.fusions(quantize_qdq(ctx.model, ctx.ranges, ctx.options.flavour))
    return tuple(n for n in found.unfused if any(n == m.name for m in ctx.model.graph.node))


def _build(model: onnx.ModelProto, part: Calibration, opts: QuantizeOptions) -> _Built:
    """The procedure (module doc, 3.–4.) on the series of ``part``."""
    float_model, chosen, pairs = _ready(model, part, opts)
    reference = run_model(session(model, opts.threads), part.inputs, batch_size=opts.batch_size)
    native = host_target() == opts.target
    ctx = _Context(float_model, chosen, opts, dict(part.inputs), reference, part.labels, native)
    unfused = _unfused(ctx)
    attempt = _search(ctx, unfused)
    candidate, decision, kept, wide, note = _wide(ctx, attempt, unfused)
    notes = () if note is None else (note,)
    narrow = signed_input_convs(float_model, chosen) if opts.flavour.narrow_signed else ()
    narrow = tuple(n for n in narrow if n not in (*kept, *wide))
    return _Built(candidate, decision, kept, wide, unfused, pairs, attempt.tried, notes, narrow)


def _latency(model: onnx.ModelProto, candidate: onnx.ModelProto, part: Calibration) -> dict:
    ratios = {}
    for batch in (1, 64):
        feeds = {k: np.resize(v, (batch, *v.shape[1:])) for k, v in part.inputs.items()}
        ratios[batch] = speed.paired_ratio(model, candidate, feeds)
    return ratios


def _report(
    model: onnx.ModelProto, candidate: onnx.ModelProto, part: Calibration, opts: QuantizeOptions
) -> ParityReport:
    """``candidate`` against ``model`` on the series of ``part``."""
    inputs = dict(part.inputs)
    native = host_target() == opts.target
    run = partial(run_model, inputs=inputs, batch_size=opts.batch_size)
    reference = run(session(model, opts.threads))
    return compare(reference, run(session(candidate, opts.threads, optimise=native)),
                   atol=0, rtol=0, labels=part.labels)  # fmt: skip


def _kfold(
    model: onnx.ModelProto, calibration: Calibration, folds: tuple, opts: QuantizeOptions
) -> ParityReport:
    """Pooled k-fold report: fold j judged on the model built without it (module doc, 2.)."""
    reports = []
    for j, fold in enumerate(folds):
        others = np.sort(np.concatenate([f for i, f in enumerate(folds) if i != j]))
        built = _build(model, calibration.take(others), opts)
        reports.append(_report(model, built.candidate, calibration.take(fold), opts))
        logger.info("fold %d of %d judged: %d series", j + 1, len(folds), len(fold))
    return pool(reports)


def _judge(model, built: _Built, calibration, evaluation, part: Partition, opts):
    """(held-out report, eval report) of the written candidate (module doc, 2.)."""
    mode = part.plan.mode
    if mode == "eval":
        return None, _report(model, built.candidate, evaluation, opts)
    if mode == "split":
        return _report(model, built.candidate, calibration.take(part.held), opts), None
    if mode == "kfold":
        return _kfold(model, calibration, part.folds, opts), None
    return None, None


def quantize(
    model: onnx.ModelProto,
    calibration: Calibration,
    options: QuantizeOptions | None = None,
    evaluation: Calibration | None = None,
) -> QuantizeResult:
    """INT8 ``model`` gated like ``compress`` (module doc); ``model`` is not modified."""
    opts = options or QuantizeOptions()
    check_quantizable(model)
    start = time.perf_counter()
    part = judged_partition(opts, calibration, evaluation)
    decide = calibration.take(part.decide)
    built = _build(model, decide, opts)
    native = host_target() == opts.target
    notes = [] if native else [f"judged as written: this host is not {opts.target}"]
    latency = _latency(model, built.candidate, decide) if native and opts.speed_check else None
    candidate, scheme = built.candidate, opts.flavour.label
    if latency and max(latency.values()) >= 1.0:
        notes.append(f"INT8 ran {max(latency.values()):.2f}x the float time here: "
                     "the float model is kept")  # fmt: skip
        candidate, scheme = copy_model(model), "float"
    if part.plan.mode == "kfold" and scheme != "float":
        notes.append(f"k-fold: the procedure ran {len(part.folds) + 1} times (once per fold)")
    held, evaluated = (
        (None, None)
        if scheme == "float"
        else _judge(model, built, calibration, evaluation, part, opts)
    )  # the float input needs no judging (nor k more runs)
    folds = len(part.folds) if part.plan.mode == "kfold" else 0
    gate = gate_report(gate_options(opts), built.decision, held, evaluated, folds=folds)
    failures = () if scheme == "float" else gate.failures
    kept, wide = (built.kept_float, built.wide) if scheme != "float" else ((), ())
    stamp(candidate, model, record(opts, scheme, kept, wide, built, held, evaluated, gate,
                                   latency, (len(part.decide), part.plan.samples)))  # fmt: skip
    judged_notes = gate.notes if scheme != "float" else ()
    return QuantizeResult(
        candidate, scheme, kept, wide, built.unfused, built.pairs, built.decision, held,
        evaluated, gate, latency, (*built.notes, *notes, *judged_notes), failures, built.tried,
        time.perf_counter() - start,
    )  # fmt: skip

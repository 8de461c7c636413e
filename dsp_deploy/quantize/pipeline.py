"""``quantize``: prepare → equalise → ranges → INT8 → bias correction → fallback → gates.

1. Refused (``ModelError``, exit 2): a model already quantized
   (``modelcheck.quantized_reason``), a model without Conv, an installed onnxruntime
   without the integer kernels.
2. The calibration samples split once (seeded, ``compress.gates.split``): the ranges,
   equalisation, bias correction and the fallback search use the *decision* part; the
   written model is gated on the *held-out* part (agreement, accuracy with labels).
3. ``build.prepare`` folds BatchNormalization (after a Concat too), ``equalise`` scales
   Conv → Relu → Conv and depthwise → pointwise pairs by the decision samples' channel
   ranges, ``ranges.choose_range`` picks each activation's range, ``build.quantize_qdq``
   writes QDQ in the target's flavour, ``bias`` corrects the Conv biases and quantizes
   again.
4. On a host of the target's kind, Convs onnxruntime would not fuse into an integer op
   stay float from the start (``speed.fusions``); then ``fallback`` keeps the most
   harmful nodes in float until the decision part passes the gates. For another target
   the candidate is judged as written (DequantizeLinear → float ops: the values the
   target's kernels approximate), since this machine's kernels are not the target's.
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

from dsp_deploy.compress.gates import gates, split
from dsp_deploy.compress.verify import ParityReport, compare
from dsp_deploy.errors import ModelError
from dsp_deploy.inference import run_model, session
from dsp_deploy.io import Calibration
from dsp_deploy.modelcheck import quantized_reason, runtime_ops
from dsp_deploy.options import CompressOptions
from dsp_deploy.quantize import bias, fallback, ranges, speed
from dsp_deploy.quantize.build import prepare, quantize_qdq
from dsp_deploy.quantize.equalise import equalise
from dsp_deploy.quantize.options import QuantizeOptions, host_target
from dsp_deploy.quantize.record import record, stamp

logger = logging.getLogger(__name__)

__all__ = ["QuantizeResult", "quantize"]

WEIGHTED = ("Conv", "Gemm", "MatMul")
REQUIRED_KERNELS = (("QuantizeLinear", ""), ("DequantizeLinear", ""), ("QLinearConv", ""))


@dataclass(frozen=True)
class QuantizeResult:
    model: onnx.ModelProto
    scheme: str  # the flavour's label, or "float" when INT8 was not kept
    kept_float: tuple[str, ...]
    unfused: tuple[str, ...]
    equalised: int
    decision: ParityReport
    holdout: ParityReport | None
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


def _gate_options(options: QuantizeOptions) -> CompressOptions:
    """compress's gates under quantize's thresholds (lossy: no exactness gate)."""
    return CompressOptions(
        criterion="dsp",
        min_agreement=options.min_agreement,
        max_accuracy_drop=options.max_accuracy_drop,
    )


def _outputs(ctx: _Context, model: onnx.ModelProto, inputs: dict) -> tuple:
    sess = session(model, ctx.options.threads, optimise=ctx.native)
    return run_model(sess, inputs, batch_size=ctx.options.batch_size)


def _corrected(ctx: _Context, kept: tuple[str, ...]) -> onnx.ModelProto:
    """The INT8 model with ``kept`` in float, its Conv biases corrected (``bias``)."""
    first = quantize_qdq(ctx.model, ctx.ranges, ctx.options.flavour, kept)
    if not ctx.options.bias_correction:
        return first
    ours, theirs = _conv_outputs(ctx.model), _conv_outputs(first)
    common = [n for n in ours if n in theirs and n not in kept]
    run = partial(ranges.activations, inputs=ctx.inputs, batch_size=ctx.options.batch_size)
    floats = run(ctx.model, names=[ours[n] for n in common])
    emulated = run(first, names=[theirs[n] for n in common])
    pairs = {ours[n]: emulated[theirs[n]] for n in common}
    shifted = bias.with_bias_shifts(ctx.model, bias.bias_shifts(floats, pairs))
    second = quantize_qdq(shifted, ctx.ranges, ctx.options.flavour, kept)
    # One-shot correction of every layer can overshoot: kept only where it helps.
    deviations = [fallback.mean_deviation(ctx.reference, _outputs(ctx, m, ctx.inputs))
                  for m in (first, second)]  # fmt: skip
    return second if deviations[1] < deviations[0] else first


def _conv_outputs(model: onnx.ModelProto) -> dict[str, str]:
    """Conv node name → its output (onnxruntime's quantizer keeps node names; it may
    rename an output, when it drops the Relu after a Conv)."""
    return {n.name: n.output[0] for n in model.graph.node if n.op_type == "Conv" and n.name}


def _trial(ctx: _Context, kept: tuple[str, ...]) -> tuple[tuple, tuple[str, ...]]:
    """((model, decision report), failures on the decision part) for ``kept`` in float."""
    candidate = _corrected(ctx, kept)
    report = compare(ctx.reference, _outputs(ctx, candidate, ctx.inputs), atol=0, rtol=0,
                     labels=ctx.labels)  # fmt: skip
    return (candidate, report), gates(_gate_options(ctx.options), report, report)


def _deviation(ctx: _Context, kept: tuple[str, ...]) -> float:
    candidate = quantize_qdq(ctx.model, ctx.ranges, ctx.options.flavour, kept)
    return fallback.mean_deviation(ctx.reference, _outputs(ctx, candidate, ctx.inputs))


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


def _search(ctx: _Context, unfused: tuple[str, ...]):
    """The fallback (``fallback``): the first passing configuration, unfused in float."""
    first, failures = _trial(ctx, unfused)
    if not failures:
        return fallback.Attempt(unfused, first, (), 1)
    nodes = [
        n.name for n in ctx.model.graph.node if n.op_type in WEIGHTED and n.name not in unfused
    ]
    order = fallback.harm_order(nodes, lambda kept: _deviation(ctx, (*unfused, *kept)))
    attempt = fallback.first_passing(
        order, lambda kept: _trial(ctx, (*unfused, *kept)), ctx.options.max_float
    )
    return fallback.Attempt((*unfused, *attempt.kept_float), attempt.candidate,
                            attempt.failures, attempt.tried + 1)  # fmt: skip


def _unfused(ctx: _Context) -> tuple[str, ...]:
    if not (ctx.native and ctx.options.speed_check):
        return ()
    found = speed.fusions(quantize_qdq(ctx.model, ctx.ranges, ctx.options.flavour))
    return tuple(n for n in found.unfused if any(n == m.name for m in ctx.model.graph.node))


def _latency(model: onnx.ModelProto, candidate: onnx.ModelProto, part: Calibration) -> dict:
    ratios = {}
    for batch in (1, 64):
        feeds = {k: np.resize(v, (batch, *v.shape[1:])) for k, v in part.inputs.items()}
        ratios[batch] = speed.paired_ratio(model, candidate, feeds)
    return ratios


def quantize(
    model: onnx.ModelProto, calibration: Calibration, options: QuantizeOptions | None = None
) -> QuantizeResult:
    """INT8 ``model`` gated on held-out calibration samples; ``model`` is not modified."""
    opts = options or QuantizeOptions()
    check_quantizable(model)
    start = time.perf_counter()
    decide, held = split(len(calibration), opts.holdout, opts.seed)
    part, rest = calibration.take(decide), calibration.take(held)
    float_model, chosen, pairs = _ready(model, part, opts)
    native = host_target() == opts.target
    reference = run_model(session(model, opts.threads), part.inputs, batch_size=opts.batch_size)
    ctx = _Context(float_model, chosen, opts, dict(part.inputs), reference, part.labels, native)
    unfused = _unfused(ctx)
    attempt = _search(ctx, unfused)
    candidate, decision = attempt.candidate
    notes = [] if native else [f"judged as written: this host is not {opts.target}"]
    latency = _latency(model, candidate, part) if native and opts.speed_check else None
    scheme = opts.flavour.label
    if latency and max(latency.values()) >= 1.0:
        worst = max(latency.values())
        notes.append(f"INT8 ran {worst:.2f}x the float time here: the float model is kept")
        candidate, scheme = _copy(model), "float"
    held_report = _held_report(ctx, model, candidate, rest)
    failures = () if scheme == "float" else gates(_gate_options(opts), decision, held_report)
    kept = attempt.kept_float if scheme != "float" else ()
    stamp(candidate, model, record(opts, scheme, kept, unfused, pairs, decision, held_report,
                                   latency, (len(decide), len(held))))  # fmt: skip
    return QuantizeResult(
        candidate, scheme, kept, unfused, pairs, decision, held_report, latency,
        tuple(notes), failures, attempt.tried, time.perf_counter() - start,
    )  # fmt: skip


def _held_report(
    ctx: _Context, model: onnx.ModelProto, candidate: onnx.ModelProto, rest: Calibration
) -> ParityReport | None:
    if not len(rest):
        return None
    inputs = dict(rest.inputs)
    reference = run_model(session(model, ctx.options.threads), inputs,
                          batch_size=ctx.options.batch_size)  # fmt: skip
    return compare(reference, _outputs(ctx, candidate, inputs), atol=0, rtol=0, labels=rest.labels)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out

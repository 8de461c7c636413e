"""Benchmark records, their summary statistics and the comparison between models.

For each (model, batch, threads) the timed calls of all rounds are pooled::

    pXX_ms           XX-th percentile of per-call latency (linear interpolation)
    throughput_per_s batch / p50
    round_p50_ms     the median of each round (fresh process) separately: the spread
    overhead_ms      median cost of the timing harness itself (timer reads + Python call)

Comparisons are against the first model, at the same (batch, threads)::

    latency_ratio = median over paired rounds of t(model) / t(first)
    p50_ratio     = p50(model) / p50(first)      (separate processes, wall clock)
    macs_ratio    = macs(model) / macs(first)
    gap           = latency_ratio / macs_ratio    (1.0: latency fell exactly as MACs did)

and likewise params, file size and peak RSS (``rss_ratio``; ``rss_above_baseline_ratio``
subtracts the RSS of an empty onnxruntime process first). The paired rounds run every
model in one process, back to back (``worker.measure_paired``), so each round's ratio sees
one state of the machine; ``p50_ratio`` divides medians taken in different processes at
different times, which on a shared or emulated host differ by more than a pruned model
saves. ``latency_ratio_iqr`` holds the quartiles of the per-round ratios.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MIB = 1024 * 1024


@dataclass(frozen=True)
class Platform:
    """Where the measurement ran (as the worker process saw it)."""

    target: str  # native | pi4-emulated
    emulated: bool
    machine: str
    cpu: str
    cpu_count: int
    system: str
    python: str
    numpy: str
    onnxruntime: str
    provider: str
    graph_optimization_level: str


@dataclass(frozen=True)
class ConfigResult:
    """Latency, throughput and memory of one model at one (batch, threads)."""

    batch: int
    threads: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    mean_ms: float
    round_p50_ms: tuple[float, ...]
    throughput_per_s: float
    peak_rss_mb: float
    overhead_ms: float


@dataclass(frozen=True)
class ModelBench:
    """One model: its static cost and a result per configuration."""

    model: str
    params: int
    macs: int  # per sample
    size_bytes: int
    input_shape: tuple[int, ...]  # of the first input, at batch 1
    platform: Platform
    results: tuple[ConfigResult, ...]


@dataclass(frozen=True)
class Comparison:
    """One model against the first, at one (batch, threads)."""

    model: str
    reference: str
    batch: int
    threads: int
    latency_ratio: float
    latency_ratio_iqr: tuple[float, float]
    clock: str  # of the paired rounds: thread-cpu (one thread) | wall
    paired_calls: int  # timed calls per model in each paired round
    p50_ratio: float
    macs_ratio: float
    gap: float
    params_ratio: float
    size_ratio: float
    rss_ratio: float
    rss_above_baseline_ratio: float


@dataclass(frozen=True)
class PairedTimes:
    """One (batch, threads) of the paired rounds: ns per call, per model then per round."""

    clock: str
    calls: int  # per model and round
    ns_per_call: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class BenchReport:
    """Everything one ``bench`` run measured."""

    platform: Platform
    baseline_rss_mb: float  # an empty process that imported numpy + onnxruntime
    runs: int
    warmup: int
    rounds: int
    paired_rounds: int  # 0 with one model
    models: tuple[ModelBench, ...]
    comparison: tuple[Comparison, ...]

    @property
    def max_overhead_fraction(self) -> float:
        """Largest harness overhead relative to the latency it sits in (p50 of that config)."""
        return max(r.overhead_ms / r.p50_ms for m in self.models for r in m.results)


def summarise(
    batch: int,
    threads: int,
    rounds_ns: Sequence[Sequence[int]],
    peak_rss_bytes: int,
    overhead_ns: int,
) -> ConfigResult:
    """Pool the timed calls of every round into one ``ConfigResult``."""
    ms = np.concatenate([np.asarray(r, dtype=np.float64) for r in rounds_ns]) / 1e6
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return ConfigResult(
        batch=batch,
        threads=threads,
        runs=int(ms.size),
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        min_ms=float(ms.min()),
        mean_ms=float(ms.mean()),
        round_p50_ms=tuple(float(np.median(r)) / 1e6 for r in rounds_ns),
        throughput_per_s=float(batch / (p50 / 1e3)),
        peak_rss_mb=peak_rss_bytes / MIB,
        overhead_ms=overhead_ns / 1e6,
    )


def compare(
    models: Sequence[ModelBench],
    baseline_rss_mb: float,
    paired: Mapping[tuple[int, int], PairedTimes],
) -> tuple[Comparison, ...]:
    """Each model after the first against the first, per shared (batch, threads).

    ``paired`` holds the paired rounds of every model (in ``models``' order) per config.
    """
    if len(models) < 2:
        return ()
    ref = models[0]
    ref_results = {(r.batch, r.threads): r for r in ref.results}
    out = []
    for i, m in enumerate(models[1:], start=1):
        for r in m.results:
            base = ref_results.get((r.batch, r.threads))
            rounds = paired.get((r.batch, r.threads))
            if base is None or rounds is None:
                continue
            per_round = np.divide(rounds.ns_per_call[i], rounds.ns_per_call[0])
            q1, latency, q3 = (float(q) for q in np.percentile(per_round, [25, 50, 75]))
            macs = _ratio(m.macs, ref.macs)
            out.append(
                Comparison(
                    model=m.model,
                    reference=ref.model,
                    batch=r.batch,
                    threads=r.threads,
                    latency_ratio=latency,
                    latency_ratio_iqr=(q1, q3),
                    clock=rounds.clock,
                    paired_calls=rounds.calls,
                    p50_ratio=_ratio(r.p50_ms, base.p50_ms),
                    macs_ratio=macs,
                    gap=_ratio(latency, macs),
                    params_ratio=_ratio(m.params, ref.params),
                    size_ratio=_ratio(m.size_bytes, ref.size_bytes),
                    rss_ratio=_ratio(r.peak_rss_mb, base.peak_rss_mb),
                    rss_above_baseline_ratio=_ratio(
                        r.peak_rss_mb - baseline_rss_mb, base.peak_rss_mb - baseline_rss_mb
                    ),
                )
            )
    return tuple(out)


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def to_json(report: BenchReport) -> dict[str, Any]:
    """The JSON document of ``bench --json``.

    One model: that model's object (model, params, macs, size_bytes, platform, results)
    plus the run's settings. Several: ``{"models": [...], "comparison": [...], ...}``, with
    the paired rounds' settings too.
    """
    settings = {
        "baseline_rss_mb": report.baseline_rss_mb,
        "runs": report.runs,
        "warmup": report.warmup,
        "rounds": report.rounds,
        "max_overhead_fraction": report.max_overhead_fraction,
    }
    models = [dataclasses.asdict(m) for m in report.models]
    if len(models) == 1:
        return {**models[0], **settings}
    return {
        "platform": dataclasses.asdict(report.platform),
        **settings,
        "paired_rounds": report.paired_rounds,
        "models": models,
        "comparison": [dataclasses.asdict(c) for c in report.comparison],
    }

"""Human-readable tables of a ``BenchReport`` (rich), for the CLI and the benchmark script."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from dsp_deploy.bench.results import BenchReport, ConfigResult


def _table(title: str, columns: tuple[str, ...]) -> Table:
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    return table


def _ms(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:#.3g}"


def spread_pct(r: ConfigResult) -> float:
    """(max - min) of the per-round medians, relative to the pooled p50."""
    return 100 * (max(r.round_p50_ms) - min(r.round_p50_ms)) / r.p50_ms


def models_table(report: BenchReport) -> Table:
    p = report.platform
    title = (
        f"{p.machine} ({p.cpu}){' EMULATED' if p.emulated else ''}, onnxruntime "
        f"{p.onnxruntime}, opt level {p.graph_optimization_level}"
    )
    table = _table(title, ("model", "params", "MACs/sample", "size KiB"))
    for m in report.models:
        table.add_row(
            Path(m.model).name, f"{m.params:,}", f"{m.macs:,}", f"{m.size_bytes / 1024:.1f}"
        )
    return table


def results_table(report: BenchReport) -> Table:
    """One row per (model, batch, threads): latency percentiles, throughput, memory."""
    title = (
        f"latency ms ({report.runs} timed runs in {report.rounds} fresh processes; spread: "
        f"of the rounds' medians); RSS MiB (empty onnxruntime process: "
        f"{report.baseline_rss_mb:.1f})"
    )
    columns = ("model", "batch", "thr", "p50", "p90", "p99", "spread", "per s", "RSS")
    table = _table(title, columns)
    for m in report.models:
        for r in m.results:
            table.add_row(
                Path(m.model).name,
                str(r.batch),
                str(r.threads),
                _ms(r.p50_ms),
                _ms(r.p90_ms),
                _ms(r.p99_ms),
                f"{spread_pct(r):.0f}%",
                f"{r.throughput_per_s:,.0f}",
                f"{r.peak_rss_mb:.1f}",
            )
    return table


def comparison_table(report: BenchReport) -> Table:
    """Each model against the first: paired latency ratio beside the MACs ratio (the ideal)."""
    ref = Path(report.models[0].model).name
    clocks = " or ".join(sorted({_CLOCKS[c.clock] for c in report.comparison}))
    title = (
        f"ratios to {ref}. latency: median \\[quartiles] of {report.paired_rounds} paired "
        f"rounds in one process ({clocks}); p50: of the separate processes; RSS above an "
        f"empty process"
    )
    columns = (
        "model", "batch", "thr", "latency", "p50", "MACs", "lat/MACs", "params", "size", "RSS"
    )  # fmt: skip
    table = _table(title, columns)
    for c in report.comparison:
        q1, q3 = c.latency_ratio_iqr
        table.add_row(
            Path(c.model).name,
            str(c.batch),
            str(c.threads),
            f"{c.latency_ratio:.3f} [{q1:.2f}, {q3:.2f}]",
            f"{c.p50_ratio:.3f}",
            f"{c.macs_ratio:.3f}",
            f"{c.gap:.2f}",
            f"{c.params_ratio:.2f}",
            f"{c.size_ratio:.2f}",
            f"{c.rss_above_baseline_ratio:.2f}",
        )
    return table


_CLOCKS = {"thread-cpu": "thread CPU time", "wall": "wall clock"}


def render(report: BenchReport, console: Console) -> None:
    console.print(models_table(report))
    console.print(results_table(report))
    if report.comparison:
        console.print(comparison_table(report))
    console.print(
        f"timing harness overhead: at most {report.max_overhead_fraction:.2%} of a reported p50"
    )
    if report.platform.emulated:
        console.print(
            "emulated Cortex-A72 (qemu): compare models within this run; these are not "
            "Raspberry Pi timings"
        )

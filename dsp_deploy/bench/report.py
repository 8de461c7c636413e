"""Human-readable tables of a ``BenchReport`` (rich), for the CLI and the benchmark script.

Three tables, each fitted to the console (80 columns included): the models (params,
MACs per sample and file size, each later model's ratio to the first in brackets: they
do not depend on batch or threads), the measurements per (model, batch, threads), and
the ratios measured per (batch, threads): latency (paired rounds, with quartiles), p50
(separate processes), lat/MACs and RSS. A batch or threads column that holds one value
on every row is said in the title instead; model names are shortened in the middle
(``render.fit``) when the rest does not leave them room. ``--json`` is not affected.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dsp_deploy.bench.results import BenchReport, ConfigResult
from dsp_deploy.render import fit

Cells = list[list[str]]
# Columns that may hold one value on every row, and how a title says that value.
_SAID: dict[str, Callable[[str], str]] = {
    "batch": lambda v: f"batch {v}",
    "thr": lambda v: f"{v} thread{'' if v == '1' else 's'}",
}


def _ms(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:#.3g}"


def spread_pct(r: ConfigResult) -> float:
    """(max - min) of the per-round medians, relative to the pooled p50."""
    return 100 * (max(r.round_p50_ms) - min(r.round_p50_ms)) / r.p50_ms


def said_in_title(
    title: str, header: Sequence[str], rows: Cells
) -> tuple[str, tuple[str, ...], Cells]:
    """``_SAID`` columns with one value on every row moved into the title."""
    keep = [i for i, col in enumerate(header) if col not in _SAID or len({r[i] for r in rows}) > 1]
    said = [_SAID[col](rows[0][i]) for i, col in enumerate(header) if i not in keep and rows]
    title = f"{title}; {', '.join(said)}" if said else title
    return title, tuple(header[i] for i in keep), [[r[i] for i in keep] for r in rows]


def _table(
    title: str, header: Sequence[str], rows: Cells, width: int | None, caption: str | None = None
) -> Table:
    """A table of ``rows``; with ``width``, constant columns in the title and names fitted."""
    if width is not None:
        title, header, rows = said_in_title(title, header, rows)
        rows = fit(header, rows, [0], width)
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for col in header:
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


def models_table(report: BenchReport, width: int | None = None) -> Table:
    """One row per model: params, MACs/sample, size, and (in brackets) the ratio to the first."""
    p = report.platform
    title = (
        f"{p.machine} ({p.cpu}){' EMULATED' if p.emulated else ''}, onnxruntime "
        f"{p.onnxruntime}, opt level {p.graph_optimization_level}"
    )
    static = {c.model: c for c in report.comparison}  # the same at every (batch, threads)

    def cell(text: str, model: str, ratio: str) -> str:
        c = static.get(model)
        return f"{text} ({getattr(c, ratio):.2f})" if c is not None else text

    rows = [
        [
            Path(m.model).name,
            cell(f"{m.params:,}", m.model, "params_ratio"),
            cell(f"{m.macs:,}", m.model, "macs_ratio"),
            cell(f"{m.size_bytes / 1024:.1f}", m.model, "size_ratio"),
        ]
        for m in report.models
    ]
    ref = Path(report.models[0].model).name
    caption = f"in brackets: the ratio to {ref}" if static else None
    return _table(title, ("model", "params", "MACs/sample", "size KiB"), rows, width, caption)


def results_table(report: BenchReport, width: int | None = None) -> Table:
    """One row per (model, batch, threads): latency percentiles, throughput, memory."""
    title = (
        f"latency ms ({report.runs} timed runs in {report.rounds} fresh processes); RSS MiB "
        f"(an empty onnxruntime process: {report.baseline_rss_mb:.1f})"
    )
    columns = ("model", "batch", "thr", "p50", "p90", "p99", "spread", "per s", "RSS")
    rows = [
        [
            Path(m.model).name,
            str(r.batch),
            str(r.threads),
            _ms(r.p50_ms),
            _ms(r.p90_ms),
            _ms(r.p99_ms),
            f"{spread_pct(r):.0f}%",
            f"{r.throughput_per_s:,.0f}",
            f"{r.peak_rss_mb:.1f}",
        ]
        for m in report.models
        for r in m.results
    ]
    return _table(title, columns, rows, width)


def comparison_table(report: BenchReport, width: int | None = None) -> Table:
    """Each model against the first: paired latency ratio, p50 ratio, lat/MACs, RSS ratio."""
    ref = Path(report.models[0].model).name
    clocks = " or ".join(sorted({_CLOCKS[c.clock] for c in report.comparison}))
    title = (
        f"ratios to {ref}. latency: median \\[quartiles] of {report.paired_rounds} paired "
        f"rounds in one process ({clocks}); p50: of the separate processes; RSS above an "
        f"empty process"
    )
    columns = ("model", "batch", "thr", "latency", "p50", "lat/MACs", "RSS")
    rows = [
        [
            Path(c.model).name,
            str(c.batch),
            str(c.threads),
            f"{c.latency_ratio:.3f} [{c.latency_ratio_iqr[0]:.2f}, {c.latency_ratio_iqr[1]:.2f}]",
            f"{c.p50_ratio:.3f}",
            f"{c.gap:.2f}",
            f"{c.rss_above_baseline_ratio:.2f}",
        ]
        for c in report.comparison
    ]
    return _table(title, columns, rows, width)


_CLOCKS = {"thread-cpu": "thread CPU time", "wall": "wall clock"}


def render(report: BenchReport, console: Console) -> None:
    width = console.width
    console.print(models_table(report, width))
    console.print(results_table(report, width))
    if report.comparison:
        console.print(comparison_table(report, width))
    console.print(
        f"timing harness overhead: at most {report.max_overhead_fraction:.2%} of a reported p50"
    )
    if report.platform.emulated:
        console.print(
            "emulated Cortex-A72 (qemu): compare models within this run; these are not "
            "Raspberry Pi timings"
        )

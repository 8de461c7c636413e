"""Latency against batch size, and the latency ratio to the first model (matplotlib).

Left panel: p50 latency per sample against batch, one line per model and thread count,
log-log; the bars span the rounds' medians (min to max: the run-to-run spread the
``spread`` column reports). Right panel (two models or more): each model's paired
latency ratio to the first, median with quartile bars, beside its MACs ratio (dashed: the
ideal a pruned model's latency would reach), linear, with 1 marked. The x ticks are the
batch sizes measured; tick labels are plain numbers (``0.145``, not ``1.45×10⁻¹``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dsp_deploy.bench.results import BenchReport, Comparison, ModelBench
from dsp_deploy.errors import InputError, require


def _plain(value: float, _position: int = 0) -> str:
    """A tick label without scientific notation: 0.145, 2, 1,024."""
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _batch_axis(ax: Any, batches: list[int]) -> None:
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(batches))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0f}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("batch size")
    if len(batches) == 1:  # a log axis around one point needs room
        ax.set_xlim(batches[0] / 2, batches[0] * 2)


def _latency_panel(ax: Any, models: tuple[ModelBench, ...], title: str) -> None:
    from matplotlib.ticker import FuncFormatter

    for m in models:
        for threads in sorted({r.threads for r in m.results}):
            rs = sorted((r for r in m.results if r.threads == threads), key=lambda r: r.batch)
            x = [r.batch for r in rs]
            y = [r.p50_ms / r.batch for r in rs]
            low = [(r.p50_ms - min(r.round_p50_ms)) / r.batch for r in rs]
            high = [(max(r.round_p50_ms) - r.p50_ms) / r.batch for r in rs]
            ax.errorbar(
                x, y, yerr=[[max(v, 0) for v in low], [max(v, 0) for v in high]],
                marker="o", capsize=3, label=f"{Path(m.model).name}, {threads} thr",
            )  # fmt: skip
    ax.set_yscale("log")
    for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis(FuncFormatter(_plain))
    ax.set_ylabel("p50 ms per sample (bars: rounds' medians)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)


def _ratio_lines(ax: Any, cs: list[Comparison], label: str) -> None:
    x = [c.batch for c in cs]
    y = [c.latency_ratio for c in cs]
    below = [c.latency_ratio - c.latency_ratio_iqr[0] for c in cs]
    above = [c.latency_ratio_iqr[1] - c.latency_ratio for c in cs]
    bars = ax.errorbar(
        x, y, yerr=[[max(v, 0) for v in below], [max(v, 0) for v in above]],
        marker="o", capsize=3, label=f"{label}: latency",
    )  # fmt: skip
    color = bars.lines[0].get_color()
    ax.plot(x, [c.macs_ratio for c in cs], linestyle="--", color=color, label=f"{label}: MACs")


def _ratio_panel(ax: Any, report: BenchReport) -> None:
    from matplotlib.ticker import FuncFormatter

    for name in dict.fromkeys(c.model for c in report.comparison):
        for threads in sorted({c.threads for c in report.comparison}):
            cs = sorted(
                (c for c in report.comparison if c.model == name and c.threads == threads),
                key=lambda c: c.batch,
            )
            _ratio_lines(ax, cs, f"{Path(name).name}, {threads} thr")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.yaxis.set_major_formatter(FuncFormatter(_plain))
    reference = Path(report.models[0].model).name
    ax.set_ylabel(f"ratio to {reference}")
    ax.set_title(
        f"ratio to {reference}: paired latency (median, quartile bars)\n"
        "and MACs (dashed: the ideal)",
        fontsize=10,
    )
    ax.legend(fontsize=7)


def _title(report: BenchReport) -> str:
    p = report.platform
    where = f"{p.machine}{' (emulated)' if p.emulated else ''}, onnxruntime {p.onnxruntime}"
    return f"p50 latency per sample\n{where}"


def plot_report(report: BenchReport, path: str | os.PathLike) -> None:
    """Write the PNG: the latency panel, and the ratio panel when there are two models."""
    require("matplotlib", "sweep")
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    target = Path(path)
    if not target.parent.is_dir():
        raise InputError(f"plot folder {target.parent} does not exist")
    panels = 2 if report.comparison else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.6), squeeze=False)
    batches = sorted({r.batch for m in report.models for r in m.results})
    _latency_panel(axes[0][0], report.models, _title(report))
    _batch_axis(axes[0][0], batches)
    if report.comparison:
        _ratio_panel(axes[0][1], report)
        _batch_axis(axes[0][1], batches)
    fig.tight_layout()
    fig.savefig(target, dpi=120)
    plt.close(fig)

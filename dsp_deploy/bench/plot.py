"""Latency against batch size, and the latency ratio to the first model (matplotlib)."""

from __future__ import annotations

import os
from pathlib import Path

from dsp_deploy.bench.results import BenchReport
from dsp_deploy.errors import InputError, require


def plot_report(report: BenchReport, path: str | os.PathLike) -> None:
    """Write a PNG: left, p50 latency per sample vs batch (log-log) per model and thread
    count; right (≥ 2 models), latency ratio and MACs ratio to the first model vs batch."""
    require("matplotlib", "sweep")
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    target = Path(path)
    if not target.parent.is_dir():
        raise InputError(f"plot folder {target.parent} does not exist")
    panels = 2 if report.comparison else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.2), squeeze=False)
    ax = axes[0][0]
    for m in report.models:
        for threads in sorted({r.threads for r in m.results}):
            rs = sorted((r for r in m.results if r.threads == threads), key=lambda r: r.batch)
            ax.plot(
                [r.batch for r in rs],
                [r.p50_ms / r.batch for r in rs],
                marker="o",
                label=f"{Path(m.model).name}, {threads} thr",
            )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="batch",
        ylabel="p50 ms per sample",
        title=f"{report.platform.machine}{' (emulated)' if report.platform.emulated else ''}",
    )
    ax.legend(fontsize=7)
    if report.comparison:
        ax = axes[0][1]
        for name in dict.fromkeys(c.model for c in report.comparison):
            for threads in sorted({c.threads for c in report.comparison}):
                cs = sorted(
                    (c for c in report.comparison if c.model == name and c.threads == threads),
                    key=lambda c: c.batch,
                )
                (line,) = ax.plot(
                    [c.batch for c in cs],
                    [c.latency_ratio for c in cs],
                    marker="o",
                    label=f"{Path(name).name}, {threads} thr: latency",
                )
                ax.plot(
                    [c.batch for c in cs],
                    [c.macs_ratio for c in cs],
                    linestyle="--",
                    color=line.get_color(),
                    label="MACs (ideal)",
                )
        ax.set(xscale="log", xlabel="batch", ylabel=f"ratio to {Path(report.models[0].model).name}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(target, dpi=120)
    plt.close(fig)

"""The sweep report's figures (matplotlib, Agg backend): one PNG per arch and kind.

* ``accuracy_{arch}.png``: dense accuracy (x) against each DSP variant's and narrow's (y),
  per dataset (seed means); points under the diagonal lost accuracy.
* ``compression_{arch}.png``: histogram of the per-dataset compression of each variant.
* ``latency_{arch}.png``: batch-1 latency ratio against MACs ratio (variant / dense);
  on the diagonal, time falls in proportion to the arithmetic.
* ``cd_{arch}.png``: critical-difference diagram of the variants' accuracies over the
  datasets where every variant ran (``aeon.visualisation.plot_critical_difference``),
  drawn only with at least ``CD_MIN_DATASETS`` such datasets and two variants.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from dsp_experiments.stats import Cell
from dsp_experiments.tasks import VARIANTS

log = logging.getLogger(__name__)

CD_MIN_DATASETS = 5


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _by_variant(table: Sequence[Cell], arch: str) -> dict[str, dict[str, Cell]]:
    out: dict[str, dict[str, Cell]] = {}
    for c in table:
        if c.arch == arch:
            out.setdefault(c.variant, {})[c.dataset] = c
    return out


def plot_all(table: Sequence[Cell], folder: Path) -> tuple[tuple[str, str], ...]:
    """Write every figure for every arch; returns (file name, caption) pairs. A figure
    with nothing to draw is not written, and removed if an earlier report left one."""
    written = []
    for arch in sorted({c.arch for c in table}):
        cells = _by_variant(table, arch)
        for name, draw in (
            ("accuracy", _accuracy),
            ("compression", _compression),
            ("latency", _latency),
            ("cd", _critical_difference),
        ):
            path = folder / f"{name}_{arch}.png"
            caption = draw(cells, arch, path)
            if caption:
                written.append((path.name, caption))
            else:  # not drawn this time: an older report's figure would outlive its data
                path.unlink(missing_ok=True)
    return tuple(written)


def _accuracy(cells: dict[str, dict[str, Cell]], arch: str, path: Path) -> str | None:
    dense = cells.get("dense", {})
    others = [v for v in VARIANTS[1:] if v in cells]
    if not dense or not others:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
    for v in others:
        pts = [(dense[d].accuracy, c.accuracy) for d, c in cells[v].items() if d in dense]
        if pts:
            ax.scatter(*zip(*pts, strict=True), s=14, label=v, alpha=0.8)
    ax.set(xlabel="dense accuracy", ylabel="variant accuracy", title=f"{arch}: accuracy")
    ax.set(xlim=(0, 1.02), ylim=(0, 1.02))
    ax.legend(fontsize=7)
    _save(fig, path, plt)
    return f"{arch}: accuracy of each variant against dense, per dataset (seed means)"


def _compression(cells: dict[str, dict[str, Cell]], arch: str, path: Path) -> str | None:
    variants = [v for v in VARIANTS[1:] if v in cells]
    if not variants:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    data = [[c.compression for c in cells[v].values()] for v in variants]
    ax.hist(data, bins=20, range=(0, 1), label=variants)
    ax.set(xlabel="compression (1 − params / dense params)", ylabel="datasets")
    ax.set_title(f"{arch}: compression per dataset")
    ax.legend(fontsize=7)
    _save(fig, path, plt)
    return f"{arch}: per-dataset compression of each variant"


def _latency(cells: dict[str, dict[str, Cell]], arch: str, path: Path) -> str | None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1.1], [0, 1.1], color="grey", lw=0.8)
    drawn = False
    for v in VARIANTS[1:]:
        pts = [
            (c.macs_ratio, c.latency_ratio)
            for c in cells.get(v, {}).values()
            if c.latency_ratio is not None
        ]
        if pts:
            ax.scatter(*zip(*pts, strict=True), s=14, label=v, alpha=0.8)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set(
        xlabel="MACs ratio (variant / dense)",
        ylabel="batch-1 latency ratio (x86, 1 thread, paired)",
    )
    ax.set_title(f"{arch}: latency vs arithmetic")
    ax.legend(fontsize=7)
    _save(fig, path, plt)
    return f"{arch}: batch-1 latency ratio against MACs ratio, variant / dense"


def _critical_difference(cells: dict[str, dict[str, Cell]], arch: str, path: Path) -> str | None:
    variants = [v for v in VARIANTS if v in cells]
    common = sorted(set.intersection(*(set(cells[v]) for v in variants))) if variants else []
    # aeon's Friedman test needs at least 3 variants
    if len(variants) < 3 or len(common) < CD_MIN_DATASETS:
        log.info(
            "no CD diagram for %s: %d variants on %d datasets", arch, len(variants), len(common)
        )
        return None
    import numpy as np
    from aeon.visualisation import plot_critical_difference

    scores = np.array([[cells[v][d].accuracy for v in variants] for d in common])
    plt = _pyplot()
    fig, _ = plot_critical_difference(scores, list(variants))
    _save(fig, path, plt)
    return f"{arch}: critical-difference diagram over {len(common)} datasets (Wilcoxon, Holm)"


def _save(fig, path: Path, plt) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)

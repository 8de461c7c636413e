"""The report's rows, shared by its CSV files and ``report.md``: one row per cell at both
levels (``per_dataset.csv``) and the dense nets beside the published ensembles
(``published.csv``); :class:`SweepReport` holds what they are made from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dsp_experiments import stats


@dataclass(frozen=True)
class SweepReport:
    rows: tuple[Mapping[str, str], ...]
    cells: tuple[stats.Cell, ...]
    summary: tuple[stats.Comparison, ...]
    published: Mapping[str, Mapping[str, float]]  # arch -> dataset -> accuracy
    missing_published: tuple[str, ...]  # why a published source is absent
    protocol: str
    members: tuple[str, ...] = ()  # the seeds an ensemble needs (the sweep's)

    def published_of(self, cell: stats.Cell) -> float | None:
        return self.published.get(cell.arch, {}).get(cell.dataset)


CELL_COLUMNS = (
    "arch",
    "dataset",
    "variant",
    "seeds",
    "epochs",
    "accuracy",
    "ensemble_accuracy",
    "delta_vs_dense",
    "ensemble_delta_vs_dense",
    "params",
    "macs",
    "ensemble_params",
    "ensemble_macs",
    "compression",
    "macs_ratio",
    "latency_ms",
    "latency_ratio",
    "published",
)
PUB_COLUMNS = (
    "arch",
    "dataset",
    "dense_accuracy",
    "dense_ensemble",
    "published",
    "delta_single",
    "delta_ensemble",
)


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def cell_rows(report: SweepReport) -> list[dict]:
    """``per_dataset.csv``'s rows: one per cell, both levels (see the module docstring)."""
    dense = {(c.arch, c.dataset): c for c in report.cells if c.variant == "dense"}
    out = []
    for c in report.cells:
        d = dense.get((c.arch, c.dataset))
        out.append(
            {
                "arch": c.arch,
                "dataset": c.dataset,
                "variant": c.variant,
                "seeds": len(c.seeds),
                "epochs": c.epochs,
                "accuracy": c.accuracy,
                "ensemble_accuracy": c.ensemble_accuracy,
                "delta_vs_dense": None if d is None else c.accuracy - d.accuracy,
                "ensemble_delta_vs_dense": _minus(c.ensemble_accuracy, d and d.ensemble_accuracy),
                "params": round(c.params),
                "macs": round(c.macs),
                "ensemble_params": c.ensemble_params and round(c.ensemble_params),
                "ensemble_macs": c.ensemble_macs and round(c.ensemble_macs),
                "compression": c.compression,
                "macs_ratio": c.macs_ratio,
                "latency_ms": c.latency_ms,
                "latency_ratio": c.latency_ratio,
                "published": report.published_of(c),
            }
        )
    return out


def published_rows(report: SweepReport) -> list[dict]:
    """Our dense accuracy (single, ensemble) beside the published ensemble, per dataset."""
    out = []
    for c in report.cells:
        if c.variant != "dense":
            continue
        pub = report.published_of(c)
        out.append(
            {
                "arch": c.arch,
                "dataset": c.dataset,
                "dense_accuracy": c.accuracy,
                "dense_ensemble": c.ensemble_accuracy,
                "published": pub,
                "delta_single": _minus(c.accuracy, pub),
                "delta_ensemble": _minus(c.ensemble_accuracy, pub),
            }
        )
    return out


def fmt(value: object, digits: int = 4) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e6 else f"{value:.0f}"
    return str(value)

"""What a sweep plan costs, in core-hours and GPU-hours, from measured per-task times.

The model, fitted per (arch, variant, device kind) on the rows of a measured sweep
(``results.csv``; by default ``benchmarks/results/ucr_cpu-small/results.csv``)::

    train_seconds           ≈ a · E·n·L + b · S            (n: training series, L: length,
    task_seconds − train    ≈ c · (n + n_test)·L + d        E: epochs, S: optimiser steps)

Training touches every training series once per epoch, at a cost linear in its length
(convolutions), plus a fixed cost per optimiser step (the step itself, the launch of
small kernels: what dominates on a GPU); the rest of a task (export, compression
calibrated on the training set, test predictions, batch-1 latency) is linear in the
values it reads, plus a constant. Each part is a non-negative least-squares fit
(``scipy.optimize.nnls``); ``loo`` is the median relative error of the task time with
each row left out of its own fit. A plan's task then costs the model at its own n, n_test,
L, E and S (the protocol's epochs: ``paper`` trains 1500 epochs, ``S = E·⌈n/64⌉``), so the
estimate extrapolates from the measured budget (≈1500 steps per task) in the two
quantities the model is linear in.

Core-seconds = wall seconds × the row's ``threads`` (empty: 1, as the committed rows ran);
GPU-seconds = wall × the row's GPU share (``gpus``; empty in rows from before it was
recorded: ``MEASURED_GPU_SHARE``, the twelve tasks per GPU of the committed H200 rows), so
a GPU-hour is one whole GPU for an hour, whatever the packing. Stand-ins, each named in
the estimate's ``basis``: a variant without rows takes those of ``VARIANT_STAND_INS``; the
training part of dsp-retrain takes narrow's (a net of its size, retrained for the same
epochs: a retrain task now reads dsp-onnx's weights, while most measured retrain rows
trained their own DSP net first); a device kind without rows for an arch takes the other
arch's (LITE has no GPU rows: an upper bound, its steps being cheaper). Not counted:
loading data, Ray's scheduling, tasks waiting for their upstream.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dsp_deploy.errors import InputError
from dsp_experiments.datasets import DatasetShape

if TYPE_CHECKING:
    from dsp_experiments.protocols import Protocol
    from dsp_experiments.runner import Plan, SweepRequest
    from dsp_experiments.tasks import Task

DEFAULT_MEASURED = (
    Path(__file__).resolve().parent.parent / "benchmarks/results/ucr_cpu-small/results.csv"
)
MEASURED_GPU_SHARE = 1 / 12
VARIANT_STAND_INS: Mapping[str, str] = {
    "dsp-onnx-auto": "dsp-onnx-rule",  # compression only, of the upstream's model
    "dense-onnx-auto": "dsp-onnx-rule",
}
TRAIN_STAND_INS: Mapping[str, str] = {"dsp-retrain": "narrow"}
DEVICES: tuple[str, ...] = ("cpu", "cuda")
_NEEDED = ("train_seconds", "task_seconds", "n_train", "n_test", "length", "epochs", "steps")


@dataclass(frozen=True)
class Fit:
    """``train ≈ a·E·n·L + b·S``, ``rest ≈ c·(n+n_test)·L + d`` in resource-seconds."""

    rows: int
    train: tuple[float, float]  # (a, b)
    rest: tuple[float, float]  # (c, d)
    loo: float  # median relative error of the task time, each row left out
    basis: str  # which rows: "own", or the stand-in used


@dataclass(frozen=True)
class CostLine:
    arch: str
    variant: str
    tasks: int
    pending: int
    core_hours: float | None  # every pending task on CPU
    gpu_hours: float | None  # every pending task training on a GPU share
    cpu_basis: str
    gpu_basis: str


def device_kind(row: Mapping[str, str]) -> str:
    return "cuda" if (row.get("device") or "cpu").startswith("cuda") else "cpu"


def _features(n: int, n_test: int, length: int, epochs: int, steps: int) -> np.ndarray:
    """``[E·n·L, S, (n+n_test)·L, 1]`` (see the module docstring)."""
    return np.array([epochs * n * length, steps, (n + n_test) * length, 1.0], float)


def _row_data(row: Mapping[str, str]) -> tuple[np.ndarray, float, float]:
    """(features, training resource-seconds, rest resource-seconds) of a measured row."""
    x = _features(*(int(float(row[k])) for k in ("n_train", "n_test", "length", "epochs", "steps")))
    if device_kind(row) == "cuda":
        scale = float(row.get("gpus") or MEASURED_GPU_SHARE)
    else:
        scale = float(row.get("threads") or 1)
    train = float(row["train_seconds"])
    return x, train * scale, (float(row["task_seconds"]) - train) * scale


def _nnls(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    scale = np.maximum(np.abs(a).max(axis=0), 1e-12)  # columns of very different sizes
    return nnls(a / scale, y)[0] / scale


def _solve(x: np.ndarray, train: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """The four coefficients ``[a, b, c, d]`` from the rows' features and targets."""
    return np.concatenate([_nnls(x[:, :2], train), _nnls(x[:, 2:], np.maximum(rest, 0))])


def fit_rows(rows: Sequence[Mapping[str, str]], basis: str = "own") -> Fit:
    """The model fitted on ``rows`` (one arch, variant and device kind)."""
    data = [_row_data(r) for r in rows]
    x = np.array([d[0] for d in data])
    train, rest = np.array([d[1] for d in data]), np.array([d[2] for d in data])
    coef = _solve(x, train, rest)
    total = train + np.maximum(rest, 0)
    errors = []
    for i in range(len(rows)) if len(rows) > 2 else ():
        keep = np.arange(len(rows)) != i
        errors.append(abs(x[i] @ _solve(x[keep], train[keep], rest[keep]) - total[i]) / total[i])
    loo = float(np.median(errors)) if errors else math.nan
    return Fit(len(rows), (coef[0], coef[1]), (coef[2], coef[3]), loo, basis)


def fit_costs(rows: Iterable[Mapping[str, str]]) -> dict[tuple[str, str, str], Fit]:
    """One fit per (arch, variant, device kind) with at least two usable rows."""
    groups: dict[tuple[str, str, str], list[Mapping[str, str]]] = {}
    for r in rows:
        if all(r.get(k) not in (None, "") for k in _NEEDED) and float(r["task_seconds"]) > 0:
            groups.setdefault((r["arch"], r["variant"], device_kind(r)), []).append(r)
    return {key: fit_rows(group) for key, group in groups.items() if len(group) >= 2}


def resolve(
    fits: Mapping[tuple[str, str, str], Fit], arch: str, variant: str, device: str
) -> Fit | None:
    """The fit to cost ``variant`` with, after the stand-ins of the module docstring."""
    archs = (arch, *sorted({a for a, _, _ in fits} - {arch}))
    for other_arch in archs:
        fit = _resolve_variant(fits, other_arch, variant, device)
        if fit is not None:
            where = "" if other_arch == arch else f"{other_arch}'s {device} rows; "
            return _with_basis(fit, where + fit.basis) if where else fit
    return None


def _resolve_variant(fits, arch: str, variant: str, device: str) -> Fit | None:
    own = fits.get((arch, VARIANT_STAND_INS.get(variant, variant), device))
    if own is None:
        return None
    if variant in VARIANT_STAND_INS:
        own = _with_basis(own, f"as {VARIANT_STAND_INS[variant]} (no rows)")
    stand_in = TRAIN_STAND_INS.get(variant)
    trainer = fits.get((arch, stand_in, device)) if stand_in else None
    if trainer is None:
        return own
    basis = f"training as {stand_in}"
    return Fit(own.rows, trainer.train, own.rest, own.loo, basis)


def _with_basis(fit: Fit, basis: str) -> Fit:
    return Fit(fit.rows, fit.train, fit.rest, fit.loo, basis)


def task_seconds(fit: Fit, shape: DatasetShape, epochs: int, batch_size: int) -> float:
    """Resource-seconds (core- or GPU-) of one task on ``shape`` under ``fit``."""
    steps = epochs * math.ceil(shape.n_train / batch_size)
    x = _features(shape.n_train, shape.n_test, shape.length, epochs, steps)
    return float(x @ np.array([*fit.train, *fit.rest]))


def estimate(
    plan: Plan, shapes: Mapping[str, DatasetShape], fits: Mapping[tuple[str, str, str], Fit]
) -> tuple[CostLine, ...]:
    """Per (arch, variant) of ``plan``: tasks, pending, core- and GPU-hours of the pending."""
    by_name = {s.name: s for s in shapes.values()}
    lines = []
    for arch, variant in dict.fromkeys((t.arch, t.variant) for t in plan.tasks):
        pending = [t for t in plan.pending if (t.arch, t.variant) == (arch, variant)]
        cpu, gpu = (resolve(fits, arch, variant, device) for device in DEVICES)
        total = sum((arch, variant) == (t.arch, t.variant) for t in plan.tasks)
        lines.append(
            CostLine(
                arch,
                variant,
                total,
                len(pending),
                _hours(cpu, pending, by_name),
                _hours(gpu, pending, by_name),
                _basis(cpu),
                _basis(gpu),
            )  # fmt: skip
        )
    return tuple(lines)


def _hours(
    fit: Fit | None, tasks: Sequence[Task], shapes: Mapping[str, DatasetShape]
) -> float | None:
    if fit is None:
        return None
    seconds = (task_seconds(fit, shapes[t.dataset], t.epochs, t.batch_size) for t in tasks)
    return sum(seconds) / 3600


def _basis(fit: Fit | None) -> str:
    return "no rows" if fit is None else f"{fit.basis}, {fit.rows} rows, loo {fit.loo:.2f}"


def read_measured(path: Path) -> tuple[dict[str, str], ...]:
    """The rows of a measured ``results.csv`` (any sweep folder's, or the file itself)."""
    from dsp_experiments.results import ResultsStore

    folder = path if path.is_dir() else path.parent
    if not (folder / "results.csv").is_file():
        raise InputError(
            f"--costs {path}: no results.csv there; expected a sweep's results.csv with "
            "measured task times"
        )
    rows = ResultsStore(folder).rows()
    if not rows:
        raise InputError(f"--costs {path}: holds no rows; expected measured task times")
    return rows


@dataclass(frozen=True)
class CostPlan:
    """A dry run: the plan's counts and its estimated cost (see the module docstring)."""

    lines: tuple[CostLine, ...]
    tasks: int
    pending: int
    datasets: Mapping[str, int]  # arch -> datasets the protocol admits
    skipped: tuple[tuple[str, str, str], ...]
    measured: str  # the results.csv the model was fitted on
    measured_rows: int

    def total(self, field: str) -> float | None:
        """Σ ``core_hours`` or ``gpu_hours`` over the lines (None when one has no fit)."""
        values = [getattr(line, field) for line in self.lines]
        return None if any(v is None for v in values) else sum(values)


def cost_plan(plan: Plan, shapes: Mapping[str, DatasetShape], measured: Path) -> CostPlan:
    """``plan`` costed with the model fitted on the rows of ``measured``."""
    rows = read_measured(measured)
    datasets: dict[str, set[str]] = {}
    for t in plan.tasks:
        datasets.setdefault(t.arch, set()).add(t.dataset)
    return CostPlan(
        lines=estimate(plan, shapes, fit_costs(rows)),
        tasks=len(plan.tasks),
        pending=len(plan.pending),
        datasets={arch: len(names) for arch, names in datasets.items()},
        skipped=plan.skipped,
        measured=str(measured),
        measured_rows=len(rows),
    )


def cost_summary(request: SweepRequest, result: CostPlan) -> dict[str, Any]:
    """The dry run as a JSON-ready dict (what ``sweep --dry-run --json`` prints)."""
    p = request.protocol
    return {
        "protocol": p.name,
        "epochs": _epochs(p),
        "datasets": len(request.datasets),
        "datasets_per_arch": dict(result.datasets),
        "seeds": list(p.seeds),
        "archs": list(request.archs),
        "variants": list(request.variants),
        "tasks": result.tasks,
        "pending": result.pending,
        "skipped": [{"dataset": d, "arch": a, "why": w} for d, a, w in result.skipped],
        "measured": result.measured,
        "measured_rows": result.measured_rows,
        "model": "train ≈ a·E·n·L + b·S, rest ≈ c·(n+n_test)·L + d, per arch, variant "
        "and device (dsp_experiments.costs)",
        "lines": [asdict(line) for line in result.lines],
        "core_hours": result.total("core_hours"),
        "gpu_hours": result.total("gpu_hours"),
    }


def _epochs(protocol: Protocol) -> str:
    if protocol.target_steps is None:
        return f"{protocol.max_epochs} epochs"
    return f"≈{protocol.target_steps} steps, {protocol.min_epochs}–{protocol.max_epochs} epochs"

"""``sweep-report DIR``: tables, statistics, plots and published accuracies → ``DIR/report``.

Files written:

* ``table.csv``: the results rows plus one ``seed=ensemble`` row per (dataset, arch,
  variant) with ≥ 2 seeds (the CLI contract's table);
* ``per_dataset.csv``: one row per (arch, dataset, variant) — seed-mean and ensemble
  accuracy, change against dense, params, MACs, compression, batch-1 latency ratio to the
  dense architecture (paired in the task, ``measure.paired_latency``);
* ``summary.csv``: every variant against dense and each DSP variant against ``narrow``
  (:mod:`dsp_experiments.stats`);
* ``published.csv``: our dense accuracies beside the published ensembles (resample 0 =
  the official split): InceptionTime from aeon's results fixture, LITETime from
  ``tsml-eval`` when it is installed (otherwise the report says it is missing);
* ``report.md`` and the PNGs of :mod:`dsp_experiments.plots`.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import logging
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from dsp_deploy.errors import InputError
from dsp_experiments import stats
from dsp_experiments.results import COLUMNS, ResultsStore

log = logging.getLogger(__name__)

# (package, path inside it, our arch): published ensemble accuracies per dataset
PUBLISHED: tuple[tuple[str, str, str], ...] = (
    (
        "aeon",
        "testing/example_results_files/classification/accuracy/InceptionTime_accuracy.csv",
        "inception",
    ),
    (
        "tsml_eval",
        "publications/2023/tsc_bakeoff/results/deeplearning/LITETime_accuracy.csv",
        "lite",
    ),
)


# Only the results files are read (the package is never imported), so no dependencies.
INSTALL_HINTS = {"tsml_eval": "pip install --no-deps tsml-eval==0.6.0"}


@dataclass(frozen=True)
class SweepReport:
    rows: tuple[Mapping[str, str], ...]
    cells: tuple[stats.Cell, ...]
    summary: tuple[stats.Comparison, ...]
    published: Mapping[str, Mapping[str, float]]  # arch -> dataset -> accuracy
    missing_published: tuple[str, ...]  # why a published source is absent
    protocol: str


def build_report(folder: str | Path) -> SweepReport:
    """Read a sweep folder and compute everything the report shows."""
    store = ResultsStore(folder)
    rows = store.rows()
    if not rows:
        raise InputError(f"{store.csv} holds no results; run dsp-deploy sweep --out {folder}")
    table = stats.cells(rows, store.load_probs)
    published, missing = published_accuracies()
    protocol = store.protocol()
    return SweepReport(
        rows=rows,
        cells=table,
        summary=stats.summary(table),
        published=published,
        missing_published=missing,
        protocol=protocol.name if protocol else "?",
    )


def published_accuracies() -> tuple[dict[str, dict[str, float]], tuple[str, ...]]:
    """Per arch, the published ensemble accuracy (resample 0) of each dataset."""
    found: dict[str, dict[str, float]] = {}
    missing = []
    for package, inner, arch in PUBLISHED:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            hint = INSTALL_HINTS.get(package, f"pip install {package}")
            missing.append(f"{arch}: {package} is not installed ({hint}; file {inner})")
            continue
        path = Path(next(iter(spec.submodule_search_locations))) / inner
        if not path.is_file():
            missing.append(f"{arch}: {path} is missing")
            continue
        with path.open() as f:
            lines = list(csv.reader(f))
        # Header "Resamples:,0,1,...": then one line per dataset, resample 0 first.
        found[arch] = {ln[0]: float(ln[1]) for ln in lines[1:] if len(ln) > 1 and ln[1]}
    return found, tuple(missing)


def write_report(report: SweepReport, out: str | Path) -> tuple[Path, ...]:
    """Write the CSVs, PNGs and ``report.md`` into ``out``; returns the files."""
    from dsp_experiments.plots import plot_all

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    table_rows = [*report.rows, *stats.ensemble_rows(report.cells, report.rows)]
    files = [
        _write_csv(folder / "table.csv", COLUMNS, table_rows),
        _write_csv(folder / "per_dataset.csv", _CELL_COLUMNS, _cell_rows(report.cells)),
        _write_csv(
            folder / "summary.csv",
            tuple(stats.Comparison.__dataclass_fields__),
            [asdict(c) for c in report.summary],
        ),
        _write_csv(folder / "published.csv", _PUB_COLUMNS, _published_rows(report)),
    ]
    figures = plot_all(report.cells, folder)
    files += [folder / name for name, _ in figures]
    (folder / "report.md").write_text(markdown(report, figures))
    files.append(folder / "report.md")
    log.info("wrote the sweep report to %s (%d files)", folder, len(files))
    return tuple(files)


_CELL_COLUMNS = (
    "arch",
    "dataset",
    "variant",
    "seeds",
    "epochs",
    "accuracy",
    "ensemble_accuracy",
    "delta_vs_dense",
    "params",
    "macs",
    "compression",
    "macs_ratio",
    "latency_ms",
    "latency_ratio",
)
_PUB_COLUMNS = ("arch", "dataset", "dense_accuracy", "dense_ensemble", "published", "delta")


def _cell_rows(cells: Sequence[stats.Cell]) -> list[dict]:
    dense = {(c.arch, c.dataset): c for c in cells if c.variant == "dense"}
    out = []
    for c in cells:
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
                "params": round(c.params),
                "macs": round(c.macs),
                "compression": c.compression,
                "macs_ratio": c.macs_ratio,
                "latency_ms": c.latency_ms,
                "latency_ratio": c.latency_ratio,
            }
        )
    return out


def _published_rows(report: SweepReport) -> list[dict]:
    out = []
    for c in report.cells:
        if c.variant != "dense":
            continue
        pub = report.published.get(c.arch, {}).get(c.dataset)
        ours = c.ensemble_accuracy if c.ensemble_accuracy is not None else c.accuracy
        out.append(
            {
                "arch": c.arch,
                "dataset": c.dataset,
                "dense_accuracy": c.accuracy,
                "dense_ensemble": c.ensemble_accuracy,
                "published": pub,
                "delta": None if pub is None else ours - pub,
            }
        )
    return out


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _fmt(r.get(k)) for k in columns})
    return path


def _fmt(value: object, digits: int = 4) -> str:
    if value is None or value == "":
        return "" if value is None else ""
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e6 else f"{value:.0f}"
    return str(value)


def _md_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    out = io.StringIO()
    out.write("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n")
    for r in rows:
        out.write("| " + " | ".join(_fmt(v) or "–" for v in r) + " |\n")
    return out.getvalue()


def _wall_rows(rows: Sequence[Mapping[str, str]]) -> list[tuple[object, ...]]:
    """Per (arch, variant, device): rows, median, mean and total seconds per task."""
    seconds: dict[tuple[str, str, str], list[float]] = {}
    for r in rows:
        if r.get("task_seconds"):
            kind = (r["arch"], r["variant"], r.get("device") or "cpu")  # older rows: CPU
            seconds.setdefault(kind, []).append(float(r["task_seconds"]))
    return [
        (*kind, len(s), statistics.median(s), statistics.fmean(s), sum(s) / 3600)
        for kind, s in sorted(seconds.items())
    ]


def _dead_line(rows: Sequence[Mapping[str, str]]) -> str:
    """One line: did ``dead`` compression keep the unpruned model's test accuracy?"""
    check = stats.dead_check(rows)
    if check is None:
        return "`dead` compression on the test set: no row records `accuracy_unpruned`.\n"
    return (
        f"`dead` compression on the test set (dsp-onnx, dsp-exact): the unpruned sparse "
        f"model's accuracy kept in {check.equal} of {check.n} rows; largest change "
        f"{check.worst:+.4f}.\n"
    )


def markdown(report: SweepReport, figures: Sequence[tuple[str, str]] = ()) -> str:
    """The human-readable report."""
    parts = [
        f"# Sweep report ({report.protocol} protocol)\n",
        f"{len(report.rows)} task rows; accuracies are test-set; compression is "
        "1 − params / params of the published dense net; Δ is in accuracy (fraction); "
        "W/T/L from the variant's side; p: two-sided Wilcoxon signed-rank.\n",
        "## Summary\n",
        _md_table(
            ("arch", "variant", "vs", "level", "n", "compression", "Δ acc", "p", "W/T/L"),
            [
                (
                    c.arch,
                    c.variant,
                    c.baseline,
                    c.level,
                    c.n,
                    c.mean_compression,
                    c.mean_delta,
                    c.p_value,
                    f"{c.wins}/{c.ties}/{c.losses}",
                )
                for c in report.summary
            ],
        ),  # fmt: skip
        "## Against the paper's claim\n",
        f"Met: mean compression at least the paper's (LITETime "
        f"{stats.PAPER_COMPRESSION['lite']:.0%}, InceptionTime "
        f"{stats.PAPER_COMPRESSION['inception']:.0%}), mean Δ accuracy against dense at least "
        f"−{stats.MAX_MEAN_LOSS:g}, and no significant loss (p > {stats.ALPHA:g}). vs narrow: "
        "the same variant against the control of its size trained from scratch (`wins` or "
        f"`loses` at p ≤ {stats.ALPHA:g}).\n",
        _md_table(
            (
                "arch",
                "variant",
                "level",
                "n",
                "compression",
                "paper",
                "Δ acc",
                "p",
                "met",
                "vs narrow",
            ),
            [
                (
                    t.arch,
                    t.variant,
                    t.level,
                    t.n,
                    t.compression,
                    t.target,
                    t.delta,
                    t.p_value,
                    "yes" if t.met else "no",
                    t.versus_narrow,
                )
                for t in stats.targets(report.summary)
            ],
        ),  # fmt: skip
        "## Per dataset\n",
        "Latency ratio: batch 1, the variant's model against the dense architecture, timed "
        "back to back in paired rounds inside the task (one onnxruntime thread, thread CPU "
        "time, as `dsp-deploy bench` times ratios); mean over the seeds that recorded it. "
        "'–' where no row did: rows from before it was recorded have only a `latency_ms` "
        "timed on its own, beside other tasks, which is no ground for a ratio.\n",
        _md_table(
            (
                "arch",
                "dataset",
                "variant",
                "seeds",
                "acc",
                "ens acc",
                "Δ vs dense",
                "params",
                "MACs",
                "compression",
                "latency ratio",
            ),
            [
                (
                    r["arch"],
                    r["dataset"],
                    r["variant"],
                    r["seeds"],
                    r["accuracy"],
                    r["ensemble_accuracy"],
                    r["delta_vs_dense"],
                    r["params"],
                    r["macs"],
                    r["compression"],
                    r["latency_ratio"],
                )
                for r in _cell_rows(report.cells)
            ],
        ),  # fmt: skip
        "## Compensation of the paper's rule without retraining (dsp-onnx-rule)\n",
        "Test accuracy of the rule's pruned model under each compensation, against the "
        "unpruned sparse model it pruned (the row's `accuracy_unpruned`). Rows written "
        "before that column was recorded use the `dsp-onnx` row's accuracy of the same "
        "dataset and seed instead (that model after `dead` compression); `vs dsp-onnx` "
        "counts them.\n",
        _md_table(
            ("arch", "compensation", "n", "accuracy", "Δ vs unpruned", "p", "W/T/L", "vs dsp-onnx"),
            [
                (
                    c.arch,
                    c.compensation,
                    c.n,
                    c.mean_accuracy,
                    c.delta,
                    c.p_value,
                    f"{c.wins}/{c.ties}/{c.losses}",
                    c.stand_ins,
                )
                for c in stats.compensations(report.rows)
            ],
        ),  # fmt: skip
        _dead_line(report.rows),
        "## Wall time per task\n",
        "Seconds per task on its worker (training, export, compression, evaluation, "
        "latency), over the rows of each kind. `dsp-onnx-rule` reads its sparse model from "
        "`dsp-onnx`, and `dsp-retrain` its DSP weights where `dsp-onnx` saved them "
        "(`models/KEY.state.pt`; rows from before that include their own DSP training). "
        "CPU tasks ran on one core each (`--cpus-per-task`); GPU tasks shared one GPU "
        "with the tasks beside them.\n",
        _md_table(
            ("arch", "variant", "device", "n", "median s", "mean s", "total h"),
            _wall_rows(report.rows),
        ),
        "## Dense against the published ensembles\n",
        _md_table(
            _PUB_COLUMNS, [tuple(r[k] for k in _PUB_COLUMNS) for r in _published_rows(report)]
        ),
    ]
    if report.missing_published:
        parts.append("Not available: " + "; ".join(report.missing_published) + ".\n")
    if figures:
        parts.append("## Figures\n")
        parts += [f"![{caption}]({name})\n" for name, caption in figures]
    return "\n".join(parts)

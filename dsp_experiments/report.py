"""``sweep-report DIR``: tables, statistics, plots and published accuracies → ``DIR/report``.

Every table is given at two levels: *single* (one network per seed, seed means) and
*ensemble* (the mean softmax of the sweep's seeds, :mod:`dsp_experiments.stats`; a cell has
one only when every seed of the sweep is in). Files written:

* ``table.csv``: the results rows plus one ``seed=ensemble`` row per (dataset, arch,
  variant) with every seed (the CLI contract's table; params and MACs summed over the
  members), with the published ensemble's accuracy (``published``) beside those rows;
* ``per_dataset.csv``: one row per (arch, dataset, variant) — seed-mean and ensemble
  accuracy, each one's change against dense, params, MACs (single and ensemble),
  compression, batch-1 latency ratio to the dense architecture (paired in the task,
  ``measure.paired_latency``), and the published ensemble of the dataset;
* ``summary.csv``: every variant against dense and each compression variant against
  ``narrow``, at both levels (:mod:`dsp_experiments.stats`);
* ``published.csv``: our dense accuracies, single and ensemble, beside the published
  ensembles (LITETime, InceptionTime: :mod:`dsp_experiments.published`);
* ``report.md`` and the PNGs of :mod:`dsp_experiments.plots`.

The compensation and wall-time tables are per task: only the final model's probabilities
are stored, so the rule's other compensations have no ensemble.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from dsp_deploy.errors import InputError
from dsp_experiments import stats
from dsp_experiments.published import published_accuracies
from dsp_experiments.report_md import render
from dsp_experiments.results import COLUMNS, ResultsStore
from dsp_experiments.tables import (
    CELL_COLUMNS,
    PUB_COLUMNS,
    SweepReport,
    cell_rows,
    fmt,
    published_rows,
)

log = logging.getLogger(__name__)


def build_report(folder: str | Path, published: Path | None = None) -> SweepReport:
    """Read a sweep folder and compute everything the report shows; ``published``: a CSV
    of published accuracies for archs whose package is not installed."""
    store = ResultsStore(folder)
    rows = store.rows()
    if not rows:
        raise InputError(f"{store.csv} holds no results; run dsp-deploy sweep --out {folder}")
    protocol = store.protocol()
    members = tuple(map(str, protocol.seeds)) if protocol else None
    table = stats.cells(rows, store.load_probs, members)
    values, missing = published_accuracies(published)
    return SweepReport(
        rows=rows,
        cells=table,
        summary=stats.summary(table),
        published=values,
        missing_published=missing,
        protocol=protocol.name if protocol else "?",
        members=members or (),
    )


def write_report(report: SweepReport, out: str | Path) -> tuple[Path, ...]:
    """Write the CSVs, PNGs and ``report.md`` into ``out``; returns the files."""
    from dsp_experiments.plots import plot_all

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    files = [
        _write_csv(folder / "table.csv", (*COLUMNS, "published"), _table_rows(report)),
        _write_csv(folder / "per_dataset.csv", CELL_COLUMNS, cell_rows(report)),
        _write_csv(
            folder / "summary.csv",
            tuple(stats.Comparison.__dataclass_fields__),
            [asdict(c) for c in report.summary],
        ),
        _write_csv(folder / "published.csv", PUB_COLUMNS, published_rows(report)),
    ]
    figures = plot_all(report.cells, folder)
    files += [folder / name for name, _ in figures]
    (folder / "report.md").write_text(markdown(report, figures))
    files.append(folder / "report.md")
    log.info("wrote the sweep report to %s (%d files)", folder, len(files))
    return tuple(files)


def _table_rows(report: SweepReport) -> list[dict]:
    """The task rows, then the ``seed=ensemble`` rows with the published accuracy beside."""
    ensembles = stats.ensemble_rows(report.cells, report.rows)
    published = {(c.arch, c.dataset, c.variant): report.published_of(c) for c in report.cells}
    for row in ensembles:
        row["published"] = published[(row["arch"], row["dataset"], row["variant"])]
    return [*report.rows, *ensembles]


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: fmt(r.get(k)) for k in columns})
    return path


def markdown(report: SweepReport, figures: Sequence[tuple[str, str]] = ()) -> str:
    """The human-readable report (:mod:`dsp_experiments.report_md`)."""
    return render(report, figures)

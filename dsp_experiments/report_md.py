"""``report.md``: the sweep report for people, one function per section.

Every comparison table is at both levels, single networks (seed means) and ensembles (the
sweep's seeds, :mod:`dsp_experiments.stats`); the per-task tables (compensations, wall
time) are at the single level only (see :mod:`dsp_experiments.report`).
"""

from __future__ import annotations

import io
import statistics
from collections.abc import Mapping, Sequence

from dsp_experiments import stats
from dsp_experiments.published import PUBLISHED_NAMES
from dsp_experiments.tables import SweepReport, cell_rows, fmt, published_rows


def render(report: SweepReport, figures: Sequence[tuple[str, str]] = ()) -> str:
    """The human-readable report."""
    parts = [
        *_intro(report),
        *_summary(report),
        *_claim(report),
        *_per_dataset_single(report),
        *_per_dataset_ensemble(report),
        *_compensation(report),
        *_wall(report),
        *_published(report),
    ]
    if figures:
        parts.append("## Figures\n")
        parts += [f"![{caption}]({name})\n" for name, caption in figures]
    return "\n".join(parts)


def table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    out = io.StringIO()
    out.write("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n")
    for r in rows:
        out.write("| " + " | ".join(fmt(v) or "–" for v in r) + " |\n")
    return out.getvalue()


def _wtl(c: stats.Comparison | None) -> str | None:
    return None if c is None else f"{c.wins}/{c.ties}/{c.losses}"


def _intro(report: SweepReport) -> list[str]:
    members = ", ".join(report.members) or "any two or more"
    ensembles = sum(c.ensemble_accuracy is not None for c in report.cells)
    return [
        f"# Sweep report ({report.protocol} protocol)\n",
        f"{len(report.rows)} task rows; accuracies are test-set; compression is "
        "1 − params / params of the published dense net; Δ is in accuracy (fraction); "
        "W/T/L from the variant's side; p: two-sided Wilcoxon signed-rank. Level `single`: "
        "single networks, means over their seeds; level `ensemble`: the mean softmax of "
        f"the sweep's seeds ({members}), for the {ensembles} of {len(report.cells)} "
        "(dataset, arch, variant) that have every one; an ensemble's params and MACs are "
        "its members' sums.\n",
    ]


def _summary(report: SweepReport) -> list[str]:
    columns = ("arch", "variant", "vs", "level", "n", "compression", "Δ acc", "p", "W/T/L")
    rows = [
        (c.arch, c.variant, c.baseline, c.level, c.n, c.mean_compression, c.mean_delta,
         c.p_value, _wtl(c))
        for c in report.summary
    ]  # fmt: skip
    return ["## Summary\n", table(columns, rows)]


def _claim(report: SweepReport) -> list[str]:
    text = (
        f"Met: mean compression at least the paper's (LITETime "
        f"{stats.PAPER_COMPRESSION['lite']:.0%}, InceptionTime "
        f"{stats.PAPER_COMPRESSION['inception']:.0%}), mean Δ accuracy against dense at least "
        f"−{stats.MAX_MEAN_LOSS:g}, and no significant loss (p > {stats.ALPHA:g}). vs narrow: "
        "the same variant against the control of its size trained from scratch (`wins` or "
        f"`loses` at p ≤ {stats.ALPHA:g}), with its Δ, p and W/T/L.\n"
    )
    columns = (
        "arch", "variant", "level", "n", "compression", "paper", "Δ acc", "p", "W/T/L", "met",
        "vs narrow", "Δ", "p", "W/T/L",
    )  # fmt: skip
    rows = [
        (t.arch, t.variant, t.level, t.n, t.compression, t.target, t.delta, t.p_value,
         _wtl(t.dense), "yes" if t.met else "no", t.versus_narrow,
         t.narrow and t.narrow.mean_delta, t.narrow and t.narrow.p_value, _wtl(t.narrow))
        for t in stats.targets(report.summary)
    ]  # fmt: skip
    return ["## Against the paper's claim\n", text, table(columns, rows)]


def _per_dataset_single(report: SweepReport) -> list[str]:
    text = (
        "Single networks, means over the seeds. Latency ratio: batch 1, the variant's model "
        "against the dense architecture, timed back to back in paired rounds inside the task "
        "(one onnxruntime thread, thread CPU time, as `dsp-deploy bench` times ratios); '–' "
        "where no row recorded it (older rows have only a `latency_ms` timed on its own, "
        "beside other tasks, which is no ground for a ratio).\n"
    )
    columns = (
        "arch", "dataset", "variant", "seeds", "acc", "Δ vs dense", "params", "MACs",
        "compression", "latency ratio",
    )  # fmt: skip
    keys = ("arch", "dataset", "variant", "seeds", "accuracy", "delta_vs_dense", "params",
            "macs", "compression", "latency_ratio")  # fmt: skip
    rows = [tuple(r[k] for k in keys) for r in cell_rows(report)]
    return ["## Per dataset, single networks\n", text, table(columns, rows)]


def _per_dataset_ensemble(report: SweepReport) -> list[str]:
    head = "## Per dataset, ensembles\n"
    rows = [r for r in cell_rows(report) if r["ensemble_accuracy"] is not None]
    if not rows:
        seeds = ", ".join(report.members) or "two or more"
        return [head, f"No ensemble: no (dataset, arch, variant) has every seed ({seeds}).\n"]
    names = " / ".join(f"{PUBLISHED_NAMES[a]} ({a})" for a in sorted({r["arch"] for r in rows}))
    text = (
        "The ensemble of every seed; params and MACs are the members' sums; `published`: "
        f"the published ensemble of the architecture on the same split ({names}), beside "
        "every variant's ensemble.\n"
    )
    columns = (
        "arch", "dataset", "variant", "members", "ens acc", "Δ vs dense", "params", "MACs",
        "published", "Δ vs published",
    )  # fmt: skip
    body = [
        (r["arch"], r["dataset"], r["variant"], r["seeds"], r["ensemble_accuracy"],
         r["ensemble_delta_vs_dense"], r["ensemble_params"], r["ensemble_macs"], r["published"],
         None if r["published"] is None else r["ensemble_accuracy"] - r["published"])
        for r in rows
    ]  # fmt: skip
    return [head, text, table(columns, body)]


def _compensation(report: SweepReport) -> list[str]:
    text = (
        "Single networks only (the other compensations' probabilities are not stored). Test "
        "accuracy of the rule's pruned model under each compensation, against the unpruned "
        "sparse model it pruned (the row's `accuracy_unpruned`). Rows written before that "
        "column was recorded use the `dsp-onnx` row's accuracy of the same dataset and seed "
        "instead (that model after `dead` compression); `vs dsp-onnx` counts them.\n"
    )
    columns = ("arch", "compensation", "n", "accuracy", "Δ vs unpruned", "p", "W/T/L",
               "vs dsp-onnx")  # fmt: skip
    rows = [
        (c.arch, c.compensation, c.n, c.mean_accuracy, c.delta, c.p_value,
         f"{c.wins}/{c.ties}/{c.losses}", c.stand_ins)
        for c in stats.compensations(report.rows)
    ]  # fmt: skip
    title = "## Compensation of the paper's rule without retraining (dsp-onnx-rule)\n"
    return [title, text, table(columns, rows), _dead_line(report.rows)]


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


def wall_rows(rows: Sequence[Mapping[str, str]]) -> list[tuple[object, ...]]:
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


def _wall(report: SweepReport) -> list[str]:
    text = (
        "Seconds per task on its worker (training, export, compression, evaluation, "
        "latency), over the rows of each kind. `dsp-onnx-rule` reads its sparse model from "
        "`dsp-onnx`, and `dsp-retrain` its DSP weights where `dsp-onnx` saved them "
        "(`models/KEY.state.pt`; rows from before that include their own DSP training). "
        "CPU tasks ran on `threads` cores each (`--cpus-per-task`); GPU tasks shared one GPU "
        "with the tasks beside them.\n"
    )
    columns = ("arch", "variant", "device", "n", "median s", "mean s", "total h")
    return ["## Wall time per task\n", text, table(columns, wall_rows(report.rows))]


def _published(report: SweepReport) -> list[str]:
    rows = published_rows(report)
    columns = ("arch", "dataset", "dense (single)", "dense ensemble", "published",
               "Δ single", "Δ ensemble")  # fmt: skip
    keys = ("arch", "dataset", "dense_accuracy", "dense_ensemble", "published",
            "delta_single", "delta_ensemble")  # fmt: skip
    parts = ["## Dense against the published ensembles\n", "".join(_published_means(rows))]
    parts.append(table(columns, [tuple(r[k] for k in keys) for r in rows]))
    if report.missing_published:
        parts.append("Not available: " + "; ".join(report.missing_published) + ".\n")
    return parts


def _published_means(rows: Sequence[Mapping[str, object]]) -> list[str]:
    """One line per arch and level: the mean Δ against the published ensemble."""
    lines = []
    for arch in sorted({str(r["arch"]) for r in rows}):
        for level in ("single", "ensemble"):
            deltas = [r[f"delta_{level}"] for r in rows if r["arch"] == arch]
            deltas = [float(d) for d in deltas if d is not None]
            if deltas:
                lines.append(
                    f"- {arch}, {level}: dense − {PUBLISHED_NAMES.get(arch, 'published')} "
                    f"{statistics.fmean(deltas):+.4f} on average over {len(deltas)} datasets\n"
                )
    return lines

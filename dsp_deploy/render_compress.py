"""What ``dsp-deploy compress`` prints: the layer table, the gates, the search, the JSON.

Pure rendering of a ``CompressResult`` (``compress.pipeline``); the command
(``commands.compress``) decides what is written and when.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from dsp_deploy.render import Folded
from dsp_deploy.render_auto import render_search

if TYPE_CHECKING:
    from dsp_deploy.compress.layers import LayerReport
    from dsp_deploy.compress.pipeline import CompressResult

__all__ = ["NOTHING_TO_PRUNE", "as_dict", "render"]

NOTHING_TO_PRUNE = (
    "nothing to prune: no channel is zero (or a foldable constant) on every calibration "
    "sample, so the model is written unchanged. Normally trained models rarely have dead "
    "channels: train with a sparsity loss (dsp-deploy train --sparsity; for your own "
    "network, dsp_deploy.train.sparsity.dsp_penalty: README, Bring your own model), or try "
    "--criterion auto (as much as the gates allow, with every consumer refitted)."
)


def as_dict(result: CompressResult, model: str, out: Path, written: bool) -> dict:
    return {
        "input": model,
        "output": str(out) if written else None,
        "verified": result.verified,
        "changed": result.changed,
        "criterion": result.plan.criterion,
        "max_abs_diff": result.decision.max_abs_diff,
        "params": list(result.params),
        "macs": list(result.macs),
        "channels": {r.name: list(r.channels) for r in result.layers},
        "layers": [
            {
                "name": r.name,
                "channels": list(r.channels),
                "params": list(r.params),
                "macs": list(r.macs),
            }
            for r in result.layers
        ],
        "decision": result.decision.as_dict(),
        "holdout": None if result.holdout is None else result.holdout.as_dict(),
        "eval": None if result.evaluation is None else result.evaluation.as_dict(),
        "gates": None if result.gate is None else result.gate.as_dict(),
        "folds": None if result.folds is None else result.folds.as_dict(),
        "random_inputs": None if result.random is None else result.random.as_dict(),
        "failures": list(result.failures),
        "seconds": result.seconds,
        "search": None if result.search is None else result.search.as_dict(),
    }


def _pct(before: int, after: int) -> str:
    return f"{100 * (after - before) / before:+.1f}%" if before else "-"


_HEADER = ("layer", "channels", "params", "MACs")


def _cells(row: LayerReport | Folded[LayerReport], compact: bool) -> list[str]:
    """One table row: a layer, or a fold of one-channel convs left at one channel."""
    from dsp_deploy.render import count

    def n(value: int) -> str:
        return count(value, compact=compact)

    if isinstance(row, Folded):
        return [
            row.label(lambda r: r.name),
            f"{len(row.rows)} × 1",
            n(row.total(lambda r: r.params[0])),
            n(row.total(lambda r: r.macs[0])),
        ]
    return [
        row.name,
        f"{row.channels[0]} → {row.channels[1]}",
        f"{n(row.params[0])} → {n(row.params[1])}",
        f"{n(row.macs[0])} → {n(row.macs[1])}",
    ]


def _table_cells(result: CompressResult, rows: list, width: int) -> list[list[str]]:
    """The rows' cells and the total's (last), exact numbers when they fit in ``width``,
    else compact ones (``6.14M``), names shortened in the middle to fit."""
    from dsp_deploy.render import count, fit, names_fit

    (pb, pa), (mb, ma) = result.params, result.macs
    for compact in (False, True):
        n = partial(count, compact=compact)
        total = ["total", "", f"{n(pb)} → {n(pa)}", f"{n(mb)} → {n(ma)}"]
        cells = [*(_cells(r, compact) for r in rows), total]
        if names_fit(_HEADER, cells, width, least=24):
            break
    return fit(_HEADER, cells, [0], width)


def render(result: CompressResult, model: str, out: Path, written: bool) -> None:
    from rich.table import Table

    from dsp_deploy.render import console as make_console
    from dsp_deploy.render import fold_one_channel

    console = make_console()
    (pb, pa), (mb, ma) = result.params, result.macs
    rows = fold_one_channel(result.layers, lambda r: r.channels == (1, 1))
    cells = _table_cells(result, rows, console.width)
    table = Table(
        title=f"compress {model} ({result.plan.criterion})",
        caption=f"params {_pct(pb, pa)}, MACs {_pct(mb, ma)}",
    )
    for column in _HEADER:
        table.add_column(column, justify="left" if column == "layer" else "right", no_wrap=True)
    for row, text in zip(rows, cells, strict=False):
        shrunk = not isinstance(row, Folded) and row.channels[1] < row.channels[0]
        table.add_row(*text, style="bold" if shrunk else None)
    table.add_section()
    table.add_row(*cells[-1], style="bold")
    console.print(table)
    if result.search is not None:
        render_search(result.search, console)
    for label, report in (
        ("calibration" if result.holdout is None else "decision", result.decision),
        ("held-out", result.holdout),
        ("eval", result.evaluation),
        ("random inputs (report only)", result.random),
    ):
        if report is None:
            continue
        acc = (
            ""
            if report.accuracy is None
            else (f", accuracy {report.accuracy[0]:.4f} → {report.accuracy[1]:.4f}")
        )
        console.print(
            f"{label}: {report.samples} samples, max |Δ| {report.max_abs_diff:.3g}, "
            f"agreement {report.agreement:.4f}{acc}"
        )
        for note in report.skipped:
            console.print(f"  {note}")
    if result.folds is not None:
        console.print(result.folds.summary())
    _render_gates(console, result)
    if not result.changed:
        console.print(NOTHING_TO_PRUNE)
    if written:  # forced; when nothing is written, the error line names the failures once
        for failure in result.failures:
            console.print(f"[red]gate failed (--force: written anyway):[/red] {failure}")
    where = f"wrote {out}" if written else "nothing written"
    console.print(f"{where} in {result.seconds:.2f} s")


def _render_gates(console, result: CompressResult) -> None:
    """The bounds the gates read, and what the judged series can resolve."""
    gate = result.gate
    if gate is None or not gate.bounds and not gate.notes:
        return
    for b in gate.bounds:
        mark = "≤" if b.passed else ">"
        console.print(
            f"gate {b.gate}: {b.events}; upper bound {100 * b.upper:.1f}% at "
            f"{100 * gate.confidence:g}% {mark} {100 * b.threshold:g}%"
        )
    for note in gate.notes:
        console.print(note)

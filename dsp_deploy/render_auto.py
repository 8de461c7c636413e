"""What ``dsp-deploy compress --criterion auto`` shows: a progress bar while candidates
are evaluated (stderr, a terminal only, never with ``--json``) and the
compression-vs-fidelity curve as a table after the per-layer one."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from dsp_deploy.compress.search import Candidate, SearchReport


@contextmanager
def auto_progress(enabled: bool) -> Iterator[Callable[[Candidate], None] | None]:
    """A transient bar while candidates run, pulsing (the climb stops at its first
    failure: how many candidates there will be is not known); None when disabled or
    stderr is no terminal."""
    from dsp_deploy.render import console

    err = console(stderr=True)
    if not enabled or not err.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("auto"),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("ranking, first candidate", total=None)

        def update(c: Candidate) -> None:
            verdict = "passes" if c.passed else "fails"
            bar.update(task, advance=1, description=f"-{100 * c.macs:.0f}% MACs {verdict}")

        yield update


def render_search(search: SearchReport, console: Console) -> None:
    """The candidates by depth: MACs and params removed, held-out agreement, accuracy."""
    from rich.table import Table

    table = Table(title=f"auto: candidates (gated on {search.as_dict()['gated_on']})")
    for column in ("units", "MACs", "params", "agreement", "accuracy", "gates"):
        table.add_column(column, justify="right")
    for c in search.curve():
        acc = "-" if c.accuracy is None else f"{c.accuracy[0]:.4f} → {c.accuracy[1]:.4f}"
        chosen = c.units == search.chosen
        table.add_row(
            f"{c.units}/{search.ranked}",
            f"-{100 * c.macs:.1f}%",
            f"-{100 * c.params:.1f}%",
            f"{c.agreement:.4f}",
            acc,
            "pass" if c.passed else "fail",
            style="bold" if chosen else None,
        )
    console.print(table)

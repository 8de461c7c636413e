"""Rich consoles, progress bars and table cells for the CLI's human-readable output.

``progress_bar(what, enabled=...)`` is the CLI's ``progress.Reporter``: a transient rich
bar on stderr, only when stderr is a terminal and ``enabled`` (commands pass
``not (as_json or quiet)``). Use it around a library call::

    from dsp_deploy import progress
    from dsp_deploy.render import progress_bar

    with progress_bar("compress", enabled=not (as_json or quiet)) as bar, \
            progress.reporting(bar):
        result = compress(model, calibration, options)

Each labelled ``progress.task`` is one line; unlabelled ones (every batched onnxruntime
pass) read "<what> pass <k>", and each disappears when it ends.

Tables that fit the terminal (80 columns included): ``fit`` shortens the name columns
with ``middle``, which cuts a name's middle, where long layer names repeat themselves
(``/inception_blocks.2/bottleneck/Conv`` keeps both ends); ``fold_one_channel`` shows
many one-channel convs (LITE's fixed hybrid filters) as one ``Folded`` row.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from rich.console import Console

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

# Rich falls back to 80 columns when output is piped, which truncates our per-layer
# tables; logs and CI captures are read in wide viewers.
_PIPED_WIDTH = 160
ELLIPSIS = "…"
R = TypeVar("R")


def console(*, stderr: bool = False) -> Console:
    """A console for tables and progress; wide when the stream is not a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or "COLUMNS" in os.environ else _PIPED_WIDTH
    return Console(stderr=stderr, width=width)


def middle(text: str, width: int) -> str:
    """``text`` if it fits in ``width`` characters, else its two ends around an ellipsis."""
    if len(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    head = width // 2  # of the width - 1 characters kept, the start gets the odd one
    tail = width - 1 - head
    return text[:head] + ELLIPSIS + (text[-tail:] if tail else "")


MIN_NAME = 12  # a shortened name keeps at least this many characters


def table_width(header: Sequence[str], rows: Sequence[Sequence[str]]) -> int:
    """Columns a rich table of these cells takes, unshortened (padding and borders too)."""
    natural = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]
    return sum(natural) + 3 * len(header) + 1


def names_fit(header: Sequence[str], rows: Sequence[Sequence[str]], width: int, least: int) -> bool:
    """Whether column 0 keeps ``least`` characters (or all of its text) in ``width``."""
    natural = max(len(c) for c in [header[0], *(r[0] for r in rows)])
    others = table_width(header, [["", *r[1:]] for r in rows]) - len(header[0])
    return width - others >= min(natural, least)


def count(n: int, *, compact: bool = False) -> str:
    """``n`` with thousands separators; ``compact``: 3 significant digits and k or M
    from 10,000 on (``6.14M``, ``192k``, ``4,096``), for tables on narrow terminals."""
    if not compact or abs(n) < 10_000:
        return f"{n:,}"
    if abs(n) < 1_000_000:
        return f"{n / 1e3:.3g}k"
    return f"{n / 1e6:.3g}M"


def fit(
    header: Sequence[str], rows: Sequence[Sequence[str]], flexible: Sequence[int], width: int
) -> list[list[str]]:
    """``rows`` with the cells of the ``flexible`` columns shortened in the middle so a
    rich table of them (one space of padding each side, one-character borders) is at most
    ``width`` wide; the other columns keep their text. Narrow flexible columns keep
    theirs and leave the room to the wide ones; none goes below ``MIN_NAME``. A path all
    of a column's cells start with goes first (``/net/``, shown as an ellipsis)."""
    if table_width(header, rows) <= width:
        return [list(r) for r in rows]
    rows = [[_unprefixed(c, rows, i) if i in flexible else c for i, c in enumerate(r)]
            for r in rows]  # fmt: skip
    natural = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]
    room = (
        width - (3 * len(header) + 1) - sum(w for i, w in enumerate(natural) if i not in flexible)
    )
    limits = dict.fromkeys(range(len(header)), None)
    order = sorted(flexible, key=lambda i: natural[i])
    for k, i in enumerate(order):
        share = max(MIN_NAME, room // (len(order) - k))
        limits[i] = min(natural[i], share)
        room -= limits[i]
    return [[middle(c, limits[i]) if limits[i] else c for i, c in enumerate(r)] for r in rows]


def _unprefixed(cell: str, rows: Sequence[Sequence[str]], column: int) -> str:
    """``cell`` without the path its column's every cell starts with (``/net/``), marked
    by an ellipsis: the first thing to go when names are too long."""
    cells = {r[column] for r in rows if r[column]}
    prefix = os.path.commonprefix(sorted(cells)) if len(cells) > 1 else ""
    cut = prefix.rfind("/") + 1
    return ELLIPSIS + cell[cut:] if cut > 1 and cell.startswith(prefix[:cut]) else cell


def fold_one_channel(rows: Sequence[R], fold: Callable[[R], bool], least: int = 3) -> list:
    """``rows`` with those ``fold`` accepts (LITE's 17 fixed one-channel hybrid convs)
    replaced, where the first of them was, by one ``Folded`` of them, when there are at
    least ``least``; a row that ``fold`` refuses stays, in order."""
    chosen = [r for r in rows if fold(r)]
    if len(chosen) < least:
        return list(rows)
    out: list = []
    for r in rows:
        if r is chosen[0]:
            out.append(Folded(tuple(chosen)))
        elif not fold(r):
            out.append(r)
    return out


@dataclass(frozen=True)
class Folded(Generic[R]):
    """Several table rows shown as one."""

    rows: tuple[R, ...]

    def label(self, names: Callable[[R], str], what: str = "one-channel convs") -> str:
        """The names' common start and ``*`` (``/net/hybrid/convs.*``), else "17 <what>"."""
        prefix = os.path.commonprefix([names(r) for r in self.rows])
        return f"{prefix}*" if prefix else f"{len(self.rows)} {what}"

    def total(self, value: Callable[[R], int]) -> int:
        return sum(value(r) for r in self.rows)


class _Bar:
    """A ``progress.Reporter`` drawing on a rich ``Progress``."""

    def __init__(self, bar: Progress, what: str) -> None:
        self.bar, self.what, self.passes = bar, what, 0

    def start(self, label: str | None, total: int | None) -> TaskID:
        if label is None:
            self.passes += 1
            label = f"{self.what} pass {self.passes}"
        return self.bar.add_task(label, total=total)

    def advance(self, handle: object, n: int) -> None:
        self.bar.advance(handle, n)  # type: ignore[arg-type]

    def finish(self, handle: object) -> None:
        self.bar.remove_task(handle)  # type: ignore[arg-type]


@contextmanager
def progress_bar(what: str, *, enabled: bool = True) -> Iterator[_Bar | None]:
    """A ``progress.Reporter`` on stderr when it is a terminal and ``enabled``; else None."""
    err = console(stderr=True)
    if not (enabled and err.is_terminal):
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        yield _Bar(bar, what)

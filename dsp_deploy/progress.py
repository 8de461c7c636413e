"""Progress of long library work, reported to whichever front end listens, or to nobody.

Library code never draws anything: it opens a ``task(label, total)`` and calls the
``advance(n)`` it yields. Nothing is shown and nothing is paid (one ``ContextVar`` read)
unless a front end has installed a ``Reporter`` around the call with ``reporting``; the
CLI installs a rich bar on stderr when stderr is a terminal (``render.progress_bar``).

Tasks nest: an outer task (a search over candidate plans) stays on screen while inner
tasks (the calibration passes of each candidate) come and go. ``inference.batches`` opens
one task per batched pass, so every onnxruntime pass over calibration data is counted in
samples without its callers knowing (those tasks have no label: the front end names
them, e.g. "calibration pass 3")::

    from dsp_deploy import progress

    with progress.task("search", total=len(candidates)) as advance:
        for candidate in candidates:
            evaluate(candidate)  # its passes show as their own bars, under "search"
            advance(1)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

__all__ = ["Reporter", "reporting", "task"]


class Reporter(Protocol):
    """What a front end implements; ``start`` returns a handle passed back to the others."""

    def start(self, label: str | None, total: int | None) -> object: ...

    def advance(self, handle: object, n: int) -> None: ...

    def finish(self, handle: object) -> None: ...


_REPORTER: ContextVar[Reporter | None] = ContextVar("dsp_deploy_progress", default=None)


def _ignore(n: int) -> None:
    """``advance`` when nobody listens."""


@contextmanager
def reporting(reporter: Reporter | None) -> Iterator[None]:
    """Send the tasks opened inside this block to ``reporter`` (None: to nobody)."""
    token = _REPORTER.set(reporter)
    try:
        yield
    finally:
        _REPORTER.reset(token)


@contextmanager
def task(label: str | None = None, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """A unit of work of ``total`` steps (None: unknown); yields ``advance(n)``."""
    reporter = _REPORTER.get()
    if reporter is None:
        yield _ignore
        return
    handle = reporter.start(label, total)
    try:
        yield lambda n: reporter.advance(handle, n)
    finally:
        reporter.finish(handle)

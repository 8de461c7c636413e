"""One module per CLI command; each defines ``register(app: typer.Typer) -> None``.

Command modules import heavy libraries (torch, aeon, ray) inside the command body only,
so ``dsp-deploy --help`` and the deploy-side commands never import them.

This package module also holds the checks every command runs on its options *before*
doing any work, so a bad value fails in milliseconds, not after a training run, and is
one ``InputError`` line naming the option (exit 2):

* ``positive`` / ``at_least``: integers (batch sizes, runs, threads, epochs);
* ``finite_at_least`` / ``fraction``: floats, which must also be finite (``nan`` slips
  through every ``<`` comparison);
* ``choice``: a word from a fixed list;
* ``check_output``: an output file path is not a directory, its folder exists and is
  writable, and it is none of the run's input files (also through a symlink or a hard
  link), so a run can never write over what it reads.

``naming(path)`` prefixes a ``ModelError`` raised by library code that never saw the file
(e.g. onnxruntime failing on the calibration data) with the model's path.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from dsp_deploy.errors import InputError, ModelError

__all__ = [
    "at_least",
    "check_output",
    "choice",
    "finite_at_least",
    "fraction",
    "naming",
    "positive",
]


@contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise a ``ModelError`` that does not name ``path`` as ``"<path>: <message>"``."""
    try:
        yield
    except ModelError as e:
        if str(path) in str(e):
            raise
        raise type(e)(f"{path}: {e}") from e


def at_least(option: str, value: int | None, low: int) -> None:
    """``value`` (when given) is an integer ``>= low``."""
    if value is not None and value < low:
        raise InputError(f"{option} {value}: expected an integer >= {low}")


def positive(option: str, *values: int | None) -> None:
    """Every given value is an integer ``>= 1``."""
    for value in values:
        at_least(option, value, 1)


def finite_at_least(option: str, value: float | None, low: float = 0.0) -> None:
    """``value`` (when given) is a finite number ``>= low``."""
    if value is not None and not (math.isfinite(value) and value >= low):
        raise InputError(f"{option} {value}: expected a finite number >= {low:g}")


def fraction(option: str, value: float, *, closed: bool = True) -> None:
    """``value`` lies in [0, 1] (``closed``) or [0, 1)."""
    inside = 0 <= value <= 1 if closed else 0 <= value < 1
    if not inside:  # also catches NaN
        raise InputError(f"{option} {value}: expected a fraction in [0, 1{']' if closed else ')'}")


def choice(option: str, value: str, choices: Sequence[str]) -> None:
    """``value`` is one of ``choices``."""
    if value not in choices:
        raise InputError(f"{option} {value!r}: expected one of {', '.join(choices)}")


def check_output(
    path: str | os.PathLike, option: str, inputs: Iterable[str | os.PathLike | None] = ()
) -> Path:
    """``path`` can be written as a new file and is none of ``inputs``; returns it."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{option} {p} is a directory; expected a file path")
    folder = p.resolve().parent
    if not folder.is_dir():
        raise InputError(f"{option} {p}: folder {p.parent} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{option} {p}: folder {p.parent} is not writable")
    for source in inputs:
        if source is not None and _same_file(p, Path(source)):
            raise InputError(f"{option} {p} is the input file {source}; choose another path")
    return p


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:  # hard links and bind mounts: same inode
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False

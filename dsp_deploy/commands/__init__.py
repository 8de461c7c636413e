"""One module per CLI command; each defines ``register(app: typer.Typer) -> None``.

Command modules import heavy libraries (torch, aeon, ray) inside the command body only,
so ``dsp-deploy --help`` and the deploy-side commands never import them.

This package module also holds the checks every command runs on its options *before*
doing any work, so a bad value fails in milliseconds, not after a training run, and is
one ``InputError`` line naming the option (exit 2):

* ``positive`` / ``at_least``, ``finite_at_least`` / ``fraction``, ``choice``: the value
  checks of ``dsp_deploy.checks`` (shared with the library's option objects, such as
  ``compress.options.CompressOptions``);
* ``check_output``: an output file path is not a directory, its folder exists and is
  writable, and it is none of the run's input files (also through a symlink or a hard
  link), so a run can never write over what it reads; optionally, its name has the
  right suffix (``-o out.txt`` for a model is refused) and it does not exist yet
  (``--no-overwrite``).

``beside(model, suffix)`` is a command's default output, ``<stem><suffix>`` next to its
input (``model.pruned.onnx``, ``model.int8.onnx``).

``naming(path)`` prefixes a ``ModelError`` raised by library code that never saw the file
(e.g. onnxruntime failing on the calibration data) with the model's path.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from dsp_deploy.checks import at_least, choice, finite_at_least, fraction, positive
from dsp_deploy.errors import InputError, ModelError

__all__ = [
    "at_least",
    "beside",
    "EvalOption",
    "check_output",
    "load_eval",
    "choice",
    "finite_at_least",
    "fraction",
    "naming",
    "positive",
]


def beside(model: str | os.PathLike, suffix: str) -> Path:
    """``<stem><suffix>`` in the folder of ``model`` (``net.onnx`` → ``net.pruned.onnx``)."""
    p = Path(model)
    return p.with_name(f"{p.stem}{suffix}")


@contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise a ``ModelError`` that does not name ``path`` as ``"<path>: <message>"``."""
    try:
        yield
    except ModelError as e:
        if str(path) in str(e):
            raise
        raise type(e)(f"{path}: {e}") from e


def check_output(
    path: str | os.PathLike,
    option: str,
    inputs: Iterable[str | os.PathLike | None] = (),
    *,
    suffix: str | None = None,
    overwrite: bool = True,
) -> Path:
    """``path`` can be written as a new file and is none of ``inputs``; returns it.
    ``suffix``: the name must end in it; ``overwrite=False``: the file must not exist."""
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
    if suffix is not None and p.suffix.lower() != suffix:
        raise InputError(f"{option} {p}: expected a file name ending in {suffix}")
    if not overwrite and p.exists():
        raise InputError(f"{option} {p} exists (--no-overwrite); remove it or choose another")
    return p


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:  # hard links and bind mounts: same inode
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def load_eval(path: str | None, model):
    """The ``--eval`` set, checked like a calibration file; its errors name ``--eval``."""
    from dsp_deploy import io
    from dsp_deploy.errors import CalibrationError

    if path is None:
        return None
    try:
        return io.load_calibration(path, model)
    except CalibrationError as e:
        raise CalibrationError(f"--eval: {e}") from e


# ``--eval`` of compress and quantize: one declaration, one help text.
EvalOption = Annotated[
    str | None,
    typer.Option(
        "--eval",
        help="A separate .npz (x, optional labels y, as --calib) the gates judge "
        "instead of held-out calibration series; the decision then sees all of --calib.",
    ),
]

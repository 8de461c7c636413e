"""The ``dsp-deploy`` command line: parse, call one library function, render.

Each command lives in ``dsp_deploy.commands.<name>`` and keeps heavy imports (torch,
aeon, ray) inside its body, so the deploy-side commands start without them. Library
errors (``DspDeployError``) become one line on stderr and the error's exit code here,
and only here; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

# Before torch can load: spinning OpenMP threads lose their cores on shared or small CPUs
# (measured here: 2 spinning threads made a LITE step 3.5x slower than 1 thread).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import typer

from dsp_deploy import __version__
from dsp_deploy.errors import DspDeployError

app = typer.Typer(
    name="dsp-deploy",
    help="Make time-series classification CNNs small and fast for devices, as ONNX.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dsp-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(
        False, "--debug", help="Show tracebacks instead of one-line errors."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Make time-series classification CNNs small and fast for devices, as ONNX."""


def _register() -> None:
    import importlib
    import pkgutil

    import dsp_deploy.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(app)


_register()


def error_line(message: str) -> None:
    """Write one line to stderr (newlines in the message are flattened)."""
    sys.stderr.write("error: " + " ".join(str(message).split()) + "\n")
    sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns (and exits with) the exit code.

    SIGINT (Ctrl-C), SIGTERM and SIGHUP all unwind the command as ``KeyboardInterrupt``,
    so its clean-up runs (temporary files removed, worker processes killed, Ray shut
    down), then end in one stderr line and exit ``128 + signal``: 130, 143, 129.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    caught: list[int] = []
    with _signals_as_interrupts(caught):
        try:
            # Not standalone: typer returns the code of typer.Exit instead of exiting
            # (and 130 for a KeyboardInterrupt, without a word: hence `caught`).
            result = app(args=args, prog_name="dsp-deploy", standalone_mode=False)
            code = result if isinstance(result, int) else 0
        except DspDeployError as e:
            if debug:
                raise
            error_line(str(e))
            code = e.exit_code
        except (typer.Abort, KeyboardInterrupt):  # raised with no signal of ours: Ctrl-C
            if not caught:
                caught.append(signal.SIGINT)
            code = 130
        except typer.TyperException as e:  # usage errors: bad option, missing argument
            command = e.ctx.command_path if getattr(e, "ctx", None) else "dsp-deploy"
            message = e.format_message() if hasattr(e, "format_message") else str(e)
            error_line(f"{message} (see '{command} --help')")
            code = e.exit_code
        except typer.Exit as e:
            code = e.exit_code
    if caught:
        error_line(_SIGNAL_WORDS.get(caught[0], "interrupted"))
        code = 128 + caught[0]
    if argv is None:
        sys.exit(code)
    return code


_SIGNAL_WORDS = {
    signal.SIGINT: "interrupted",
    signal.SIGTERM: "terminated",
    signal.SIGHUP: "hung up",
}


@contextmanager
def _signals_as_interrupts(caught: list[int]) -> Iterator[None]:
    """Turn SIGINT, SIGTERM and SIGHUP into ``KeyboardInterrupt``, recording each in
    ``caught``; the previous handlers come back on exit. A signal that is ignored
    (``nohup``, a background job's SIGINT) stays ignored; off the main thread, nothing
    can be installed and nothing is."""

    def interrupt(signum: int, frame: object) -> None:
        caught.append(signum)
        raise KeyboardInterrupt

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in _SIGNAL_WORDS:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    main()

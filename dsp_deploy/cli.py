"""The ``dsp-deploy`` command line: parse, call one library function, render.

Each command lives in ``dsp_deploy.commands.<name>`` and keeps heavy imports (torch,
aeon, ray) inside its body, so the deploy-side commands start without them. Library
errors (``DspDeployError``) become one line on stderr and the error's exit code here,
and only here; ``--debug`` shows the traceback instead. With ``--json`` an error is also
one JSON object on stdout, ``{"error": MESSAGE, "exit_code": CODE}`` (usage errors too),
so a script reads stdout alone; the exit code is the same. A signal (exit 130, 143, 129)
writes only its stderr line: whoever reads stdout may be gone with the terminal.

Logging: while a command runs, the package's loggers write to stderr, warnings and above
everywhere and also ``info`` from the modules whose steps a person waits for
(``_INFO_LOGGERS``: the emulator's downloads and builds).
"""

from __future__ import annotations

import json
import logging
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
from dsp_deploy.clihelp import Group
from dsp_deploy.errors import DspDeployError

app = typer.Typer(
    name="dsp-deploy",
    cls=Group,
    help="Make time-series classification CNNs small and fast for devices, as ONNX.",
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


def error_line(message: str, *, as_json: bool = False, code: int = 2) -> None:
    """Write one line to stderr (newlines in the message are flattened); with
    ``as_json``, also ``{"error": ..., "exit_code": code}`` on stdout."""
    line = " ".join(str(message).split())
    sys.stderr.write("error: " + line + "\n")
    sys.stderr.flush()
    if as_json:
        sys.stdout.write(json.dumps({"error": line, "exit_code": code}) + "\n")
        sys.stdout.flush()


_INFO_LOGGERS = ("dsp_deploy.emulator",)


@contextmanager
def _logging_to_stderr() -> Iterator[None]:
    """The package's warnings, and ``_INFO_LOGGERS``' info lines, on stderr as bare lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(lambda r: r.levelno >= logging.WARNING or r.name.startswith(_INFO_LOGGERS))
    package = logging.getLogger("dsp_deploy")
    levels = {name: logging.getLogger(name).level for name in _INFO_LOGGERS}
    package.addHandler(handler)
    for name in _INFO_LOGGERS:
        if logging.getLogger(name).getEffectiveLevel() > logging.INFO:
            logging.getLogger(name).setLevel(logging.INFO)
    try:
        yield
    finally:
        package.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns (and exits with) the exit code.

    SIGINT (Ctrl-C), SIGTERM and SIGHUP all unwind the command as ``KeyboardInterrupt``,
    so its clean-up runs (temporary files removed, worker processes killed, Ray shut
    down), then end in one stderr line and exit ``128 + signal``: 130, 143, 129.
    """
    args = list(sys.argv[1:] if argv is None else argv) or ["--help"]
    debug, as_json = "--debug" in args, "--json" in args
    caught: list[int] = []
    with _signals_as_interrupts(caught), _logging_to_stderr():
        try:
            # Not standalone: typer returns the code of typer.Exit instead of exiting
            # (and 130 for a KeyboardInterrupt, without a word: hence `caught`).
            result = app(args=args, prog_name="dsp-deploy", standalone_mode=False)
            code = result if isinstance(result, int) else 0
        except DspDeployError as e:
            if debug:
                raise
            code = e.exit_code
            error_line(str(e), as_json=as_json, code=code)
        except (typer.Abort, KeyboardInterrupt):  # raised with no signal of ours: Ctrl-C
            if not caught:
                caught.append(signal.SIGINT)
            code = 130
        except typer.TyperException as e:  # usage errors: bad option, missing argument
            command = e.ctx.command_path if getattr(e, "ctx", None) else "dsp-deploy"
            message = e.format_message() if hasattr(e, "format_message") else str(e)
            code = e.exit_code
            error_line(f"{message} (see '{command} --help')", as_json=as_json, code=code)
        except typer.Exit as e:
            code = e.exit_code
    if caught:
        code = 128 + caught[0]
        error_line(_SIGNAL_WORDS.get(caught[0], "interrupted"))  # stdout may be gone too
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

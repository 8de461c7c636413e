"""The ``dsp-deploy`` command line: parse, call one library function, render.

Each command lives in ``dsp_deploy.commands.<name>`` and keeps heavy imports (torch,
aeon, ray) inside its body, so the deploy-side commands start without them. Library
errors (``DspDeployError``) become one line on stderr and the error's exit code here,
and only here; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys

# Before torch can load: spinning OpenMP threads lose their cores on shared or small CPUs
# (measured here: 2 spinning threads made a LITE step 3.5x slower than 1 thread).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from collections.abc import Sequence

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
    """Entry point of the console script; returns (and exits with) the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        # Not standalone: typer returns the code of typer.Exit instead of exiting.
        result = app(args=args, prog_name="dsp-deploy", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except DspDeployError as e:
        if debug:
            raise
        error_line(str(e))
        code = e.exit_code
    except typer.Abort:  # Ctrl-C (typer turns KeyboardInterrupt into Abort)
        error_line("interrupted")
        code = 130
    except KeyboardInterrupt:
        error_line("interrupted")
        code = 130
    except typer.TyperException as e:  # usage errors: bad option, missing argument
        e.show()
        code = e.exit_code
    except typer.Exit as e:
        code = e.exit_code
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()

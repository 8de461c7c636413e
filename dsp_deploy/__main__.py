"""``dsp-deploy`` and ``python -m dsp_deploy``: import the command line, then run it.

Importing ``dsp_deploy.cli`` takes about half a second (typer, rich, every command
module), before ``cli.main`` turns signals into one-line errors. A Ctrl-C in that window
ends the same way, not in a traceback of whichever import it interrupted.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from dsp_deploy.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)
    run()


if __name__ == "__main__":
    main()

"""Rich consoles for the CLI's human-readable output."""

from __future__ import annotations

import os
import sys

from rich.console import Console

# Rich falls back to 80 columns when output is piped, which truncates our per-layer
# tables; logs and CI captures are read in wide viewers.
_PIPED_WIDTH = 160


def console(*, stderr: bool = False) -> Console:
    """A console for tables and progress; wide when the stream is not a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or "COLUMNS" in os.environ else _PIPED_WIDTH
    return Console(stderr=stderr, width=width)

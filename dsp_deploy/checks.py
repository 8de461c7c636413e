"""Value checks for options, shared by the CLI and the library's option objects.

Each raises one ``OptionError`` line (an ``InputError`` and a ``ValueError``; exit 2 in
the CLI) naming the option as the CLI spells it and saying what was expected:

* ``positive`` / ``at_least``: integers (batch sizes, runs, threads, epochs);
* ``finite_at_least`` / ``fraction``: floats, which must also be finite (``nan`` slips
  through every ``<`` comparison);
* ``choice``: a word from a fixed list.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from dsp_deploy.errors import OptionError

__all__ = ["at_least", "choice", "finite_at_least", "fraction", "positive"]


def at_least(option: str, value: int | None, low: int) -> None:
    """``value`` (when given) is an integer ``>= low``."""
    if value is not None and value < low:
        raise OptionError(f"{option} {value}: expected an integer >= {low}")


def positive(option: str, *values: int | None) -> None:
    """Every given value is an integer ``>= 1``."""
    for value in values:
        at_least(option, value, 1)


def finite_at_least(option: str, value: float | None, low: float = 0.0) -> None:
    """``value`` (when given) is a finite number ``>= low``."""
    if value is not None and not (math.isfinite(value) and value >= low):
        raise OptionError(f"{option} {value}: expected a finite number >= {low:g}")


def fraction(option: str, value: float, *, closed: bool = True) -> None:
    """``value`` lies in [0, 1] (``closed``) or [0, 1)."""
    inside = 0 <= value <= 1 if closed else 0 <= value < 1
    if not inside:  # also catches NaN
        raise OptionError(f"{option} {value}: expected a fraction in [0, 1{']' if closed else ')'}")


def choice(option: str, value: str, choices: Sequence[str]) -> None:
    """``value`` is one of ``choices``."""
    if value not in choices:
        raise OptionError(f"{option} {value!r}: expected one of {', '.join(choices)}")

"""One exception hierarchy for everything a user can get wrong or a check can refuse.

The library raises these; only the CLI turns them into a one-line message and an exit
code (``exit_code``). Messages say what was expected and what was found, and name the
file concerned.
"""

from __future__ import annotations


class DspDeployError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code: int = 2


class InputError(DspDeployError):
    """Bad user input: a file, option or value that cannot be used (exit 2)."""


class ModelError(InputError):
    """An ONNX model that is missing, unreadable, invalid or unsupported."""


class CalibrationError(InputError):
    """A calibration file that is missing, unreadable or does not fit the model."""


class DatasetError(InputError):
    """A dataset that cannot be found or loaded."""


class MissingExtraError(InputError):
    """An optional dependency is not installed; the message says which extra to install."""


class OptionError(InputError, ValueError):
    """An option outside its choices or range, given to a library function (exit 2).

    Also a ``ValueError``, so code that caught the bare ``ValueError`` still does.
    """


class PlanError(DspDeployError, ValueError):
    """A pruning plan that does not fit the model it is applied to (exit 2): made for
    another model, or leaving a node without the channels it needs. Also a ``ValueError``.
    """


class VerificationError(DspDeployError):
    """A check on a result failed (e.g. compressed outputs deviate); exit 1."""

    exit_code = 1


def require(module: str, extra: str):
    """Import an optional dependency or raise MissingExtraError naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"{module} is not installed; install it with: pip install 'dsp-deploy[{extra}]'"
        ) from e

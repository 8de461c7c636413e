"""``CompressOptions``: every setting of ``compress``, validated once, shared by all callers.

The CLI (``dsp-deploy compress``), the library (``compress(model, calibration, options,
**changes)``), the sweep and the benchmarks build the same frozen object; its
construction checks every value (``dsp_deploy.checks``) and raises one ``OptionError``
line naming the option as the CLI spells it (``--holdout 1.0: expected a fraction in
[0, 1)``). ``with_changes(options, changes)`` applies keyword changes with
``dataclasses.replace``, so ``compress(model, calib, criterion="dsp")`` keeps working.
The choices (``CRITERIA``, ``COMPENSATIONS``) and defaults live here, for the library
and the CLI alike; this module imports neither onnx nor onnxruntime, so the CLI starts
fast.

``reconstruct=True`` (``--reconstruct``) is a deprecated alias of ``compensation="lstsq"``
(the default): given with another compensation it is an ``OptionError``, never a silent
override. The settings that depend on the model (the batch size a fixed batch dim
allows, the keep rule of the architecture) are resolved in ``compress.policy``.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dsp_deploy.checks import at_least, choice, finite_at_least, fraction, positive
from dsp_deploy.errors import OptionError

__all__ = [
    "AUTO",
    "COMPENSATIONS",
    "CRITERIA",
    "DEFAULT_COMPENSATION",
    "DEFAULT_FOLDS",
    "RECONSTRUCT",
    "CompressOptions",
    "cli_name",
    "with_changes",
]

UNLABELLED_AGREEMENT = 0.98  # the agreement gate without labels (agreement_gate)
CRITERIA = ("dead", "dsp", "auto")
AUTO = "auto"  # compress.search: as much as the gates allow
COMPENSATIONS = ("none", "mean", "lstsq", "reconstruct")
RECONSTRUCT = "reconstruct"  # compress.reconstruct: every consumer refitted in order
DEFAULT_COMPENSATION = LSTSQ = "lstsq"  # see compress.plan's docstring
DEFAULT_FOLDS = 5  # see compress.folds


@dataclass(frozen=True)
class CompressOptions:
    """The settings of one ``compress`` run; see ``compress.pipeline`` for their effect."""

    criterion: str = "dead"  # CRITERIA: dead (lossless at threshold 0) | dsp (paper's rule)
    # | auto (a fixed ladder of cuts down one global ranking, climbed until the gates fail)
    threshold: float = 0.0  # dead: also drop channels with rms <= T·layer rms
    min_count: int | None = None  # dsp: keep n_c > this; None: the architecture's rule
    compensation: str = DEFAULT_COMPENSATION  # COMPENSATIONS, for lossy criteria
    holdout: float = 0.2  # lossy criteria: fraction of samples held out to gate on
    folds: int = DEFAULT_FOLDS  # lossless: k-fold report (0: off)
    atol: float | None = None  # None: tolerance.default_tolerance(model)
    rtol: float | None = None
    # gate: upper bound of the disagreement rate <= 1 - this; None: UNLABELLED_AGREEMENT
    # without labels, no agreement gate with them (accuracy decides: agreement_gate)
    min_agreement: float | None = None
    max_accuracy_drop: float = 0.02  # gate (with labels): upper bound of the drop <= this
    confidence: float = 0.95  # one-sided level of the gates' bounds (compress.bounds)
    batch_size: int = 64
    threads: int | None = None  # onnxruntime intra-op threads
    seed: int = 0  # the decision/held-out split and the folds
    align: int = 1  # kept channels rounded up to a multiple of this
    conv2d: bool = False  # qualifying 1-D convs written in 2-D form
    fuse: bool = False  # BatchNormalization folded into, Relu moved before, a Concat

    def __post_init__(self) -> None:
        choice(cli_name("criterion"), self.criterion, CRITERIA)
        choice(cli_name("compensation"), self.compensation, COMPENSATIONS)
        fraction(cli_name("holdout"), self.holdout, closed=False)
        for name in ("min_agreement", "max_accuracy_drop"):
            if getattr(self, name) is not None:
                fraction(cli_name(name), getattr(self, name))
        if not 0.5 <= self.confidence < 1:  # also catches NaN
            raise OptionError(f"--confidence {self.confidence}: expected a number in [0.5, 1)")
        for name in ("batch_size", "threads", "align"):
            positive(cli_name(name), getattr(self, name))
        for name in ("min_count", "folds", "seed"):
            at_least(cli_name(name), getattr(self, name), 0)
        for name in ("threshold", "atol", "rtol"):
            finite_at_least(cli_name(name), getattr(self, name))

    def agreement_gate(self, labelled: bool) -> float:
        """The agreement a lossy result must show (0: none). Unset, it is
        ``UNLABELLED_AGREEMENT`` without labels and none with them: with labels the
        accuracy gate is what a user asked for, and a model that fixes as many series as
        it breaks must not be refused for disagreeing."""
        if self.min_agreement is not None:
            return self.min_agreement
        return 0.0 if labelled else UNLABELLED_AGREEMENT

    @property
    def applied_compensation(self) -> str:
        """The compensation the run applies: ``auto`` with the default ``lstsq`` reconstructs
        (``compress.reconstruct``); ``none`` / ``mean`` give auto without reconstruction."""
        if self.criterion == AUTO and self.compensation == LSTSQ:
            return RECONSTRUCT
        return self.compensation

    @property
    def lossless(self) -> bool:
        """Whether these options promise unchanged outputs: ``dead`` with threshold 0."""
        return self.criterion == "dead" and self.threshold == 0


def cli_name(field: str) -> str:
    """The CLI option of a field: ``max_accuracy_drop`` → ``--max-accuracy-drop``."""
    return "--" + field.replace("_", "-")


def with_changes(options: CompressOptions | None, changes: Mapping[str, Any]) -> CompressOptions:
    """``options`` (default: all defaults) with ``changes`` applied, validated."""
    changes = dict(changes)
    base = options or CompressOptions()
    if changes.pop("reconstruct", False):
        changes["compensation"] = _reconstruct(changes.get("compensation", base.compensation))
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(CompressOptions)})
    if unknown:
        raise OptionError(
            f"unknown compress option {unknown[0]!r}; expected one of "
            f"{', '.join(f.name for f in dataclasses.fields(CompressOptions))}"
        )
    return dataclasses.replace(base, **changes) if changes else base


def _reconstruct(compensation: str) -> str:
    """The deprecated ``reconstruct`` alias: ``lstsq``, or an error for another choice."""
    if compensation != LSTSQ:
        raise OptionError(
            f"--reconstruct means --compensation {LSTSQ}; it contradicts --compensation "
            f"{compensation} (give one of them)"
        )
    warnings.warn(
        "reconstruct=True (--reconstruct) is deprecated: it is compensation='lstsq', the default",
        DeprecationWarning,
        stacklevel=3,
    )
    return LSTSQ

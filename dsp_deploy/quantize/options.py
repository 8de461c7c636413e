"""``QuantizeOptions``: every setting of ``quantize``, validated once; the targets.

A target names the CPU family the INT8 model is for and fixes its flavour
(``build.Flavour``), chosen by what onnxruntime 1.32 fuses there
(``benchmarks/results/quantize_tools.md``):

* ``x86``: QDQ, uint8 activations, int8 per-channel weights (U8S8). The only flavour
  whose ``DQ → Conv → Q`` onnxruntime's x86 kernels fuse into QLinearConv for every
  conv; S8S8 fuses few convs and runs slower than float, QOperator S8S8 2–3× float.
  Convs that read a signed tensor get 7-bit weights (``build``: the int16 saturation
  of the non-VNNI U8S8 kernels).
* ``arm64``: QDQ S8S8 (int8 activations, asymmetric, and int8 weights): every flavour
  fuses on aarch64 and onnxruntime recommends symmetric-friendly int8 there. An
  asymmetric int8 grid is the uint8 grid shifted by 128, so accuracy is the same.

The gates are compress's (``compress.gates``: one-sided confidence bounds on the judged
series, ``compress.holdout.partition``) with the same defaults.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

from dsp_deploy.checks import at_least, choice, fraction, positive
from dsp_deploy.errors import OptionError
from dsp_deploy.quantize.build import Flavour

__all__ = ["FLAVOURS", "TARGETS", "QuantizeOptions", "host_target"]

FLAVOURS = {
    "x86": Flavour("qdq", "u8", "s8", False, narrow_signed=True),
    "arm64": Flavour("qdq", "s8", "s8", False),
}
TARGETS = tuple(FLAVOURS)
_MACHINES = {"x86_64": "x86", "amd64": "x86", "i686": "x86", "aarch64": "arm64", "arm64": "arm64"}


def host_target() -> str | None:
    """The target this machine is, or None (its kernels then cannot be inspected)."""
    return _MACHINES.get(platform.machine().lower())


@dataclass(frozen=True)
class QuantizeOptions:
    """The settings of one ``quantize`` run; see ``quantize.pipeline`` for their effect."""

    target: str = "x86"  # TARGETS
    holdout: float = 0.2  # held out to gate on (split), or 1/holdout folds (k-fold)
    min_agreement: float | None = None  # agreement gate (None: compress's default)
    max_accuracy_drop: float = 0.02  # gate (with labels): upper bound of the drop <= this
    confidence: float = 0.95  # one-sided level of the gates' bounds (compress.bounds)
    equalise: bool = True  # cross-layer equalisation
    bias_correction: bool = True
    max_float: int | None = 8  # at most this many layers kept in float (None: any)
    speed_check: bool = True  # keep float where INT8 does not run faster (host = target)
    a16: bool = True  # try 16-bit activations for the layers the fallback keeps in float
    batch_size: int = 64
    threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        choice("--target", self.target, TARGETS)
        fraction("--holdout", self.holdout, closed=False)
        if self.min_agreement is not None:
            fraction("--min-agreement", self.min_agreement)
        if not 0.5 <= self.confidence < 1:  # also catches NaN
            raise OptionError(f"--confidence {self.confidence}: expected a number in [0.5, 1)")
        fraction("--max-accuracy-drop", self.max_accuracy_drop)
        positive("--batch-size", self.batch_size)
        positive("--threads", self.threads)
        at_least("--max-float", self.max_float, 0)
        at_least("--seed", self.seed, 0)

    @property
    def flavour(self) -> Flavour:
        return FLAVOURS[self.target]

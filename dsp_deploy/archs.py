"""The architectures ``train`` knows, with the paper's DSP settings for each (no torch:
``compress`` reads the keep rule here; ``ArchSpec.build`` imports the networks).

=============  =======  =======  ========  ===============  ==========
arch           family   members  λ (DSP)   layer weights    keep n_c >
=============  =======  =======  ========  ===============  ==========
lite           lite     1        1e-5      (4, 2, 1)        1
litetime       lite     5        1e-5      (4, 2, 1)        1
inception      incep.   1        1e-5      (1,) × 6         0
inceptiontime  incep.   5        1e-5      (1,) × 6         0
=============  =======  =======  ========  ===============  ==========

Ensemble seeds are the authors' (9409, 3804, 3952, 2561, 5296) unless a seed is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dsp_deploy.errors import InputError

if TYPE_CHECKING:
    from torch import nn

PAPER_SEEDS: tuple[int, ...] = (9409, 3804, 3952, 2561, 5296)


@dataclass(frozen=True)
class ArchSpec:
    name: str
    family: str  # "lite" | "inception"
    members: int
    sparsity: float  # the paper's λ
    layer_weights: tuple[float, ...]
    min_count: int  # keep a channel when it is above the instance mean in > min_count series

    def build(self, n_classes: int) -> nn.Module:
        """A fresh member network at the published widths (seed torch first)."""
        if self.family == "lite":
            from dsp_deploy.nets.lite import Lite, LiteConfig

            return Lite(LiteConfig(n_classes))
        from dsp_deploy.nets.inception import Inception, InceptionConfig

        return Inception(InceptionConfig(n_classes))

    def member_seeds(self, seed: int | None) -> tuple[int, ...]:
        """The paper's seeds without ``seed``; else ``seed, seed+1, ...``."""
        if seed is None:
            return PAPER_SEEDS[: self.members]
        return tuple(seed + i for i in range(self.members))


_LITE_W = (4.0, 2.0, 1.0)
_INC_W = (1.0,) * 6
ARCHS: dict[str, ArchSpec] = {
    "lite": ArchSpec("lite", "lite", 1, 1e-5, _LITE_W, 1),
    "litetime": ArchSpec("litetime", "lite", 5, 1e-5, _LITE_W, 1),
    "inception": ArchSpec("inception", "inception", 1, 1e-5, _INC_W, 0),
    "inceptiontime": ArchSpec("inceptiontime", "inception", 5, 1e-5, _INC_W, 0),
}


def get_arch(name: str) -> ArchSpec:
    """The spec of ``name`` (case-insensitive) or InputError listing the known ones."""
    try:
        return ARCHS[name.lower()]
    except KeyError:
        raise InputError(f"unknown arch {name!r}; expected one of: {', '.join(ARCHS)}") from None

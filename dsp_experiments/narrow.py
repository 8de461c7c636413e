"""The ``narrow`` control: the dense architecture with every width scaled to ``w``.

LITE at width ``w``: branches ``(w, w, w)``, DWSC layers ``(w, w)`` (published: 32).
InceptionTime at width ``w``: every module ``(w, w, w, w)`` and the bottleneck ``w``
(published: 32 and 32), so that all of its widths shrink together, as a uniform
narrowing should. The hand-crafted LITE filters are not learned and stay.

``narrow_width(family, n_classes, target)`` is the ``w`` in 1..32 whose trainable-plus-
frozen parameter count (``count_params`` of the PyTorch net, the count ``train`` reports
for the DSP nets) is nearest to ``target``; ties go to the wider net.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from dsp_deploy.archs import ArchSpec

if TYPE_CHECKING:
    from torch import nn

FULL_WIDTH = 32


@dataclass(frozen=True)
class NarrowSpec(ArchSpec):
    """An :class:`ArchSpec` that builds its member at a uniform width."""

    width: int = FULL_WIDTH

    def build(self, n_classes: int) -> nn.Module:
        return build_narrow(self.family, n_classes, self.width)


def build_narrow(family: str, n_classes: int, width: int) -> nn.Module:
    """A fresh ``family`` net with every width ``width`` (seed torch first)."""
    w = width
    if family == "lite":
        from dsp_deploy.nets.lite import Lite, LiteConfig

        return Lite(LiteConfig(n_classes, (w, w, w), (w, w)))
    from dsp_deploy.nets.inception import Inception, InceptionConfig

    modules = ((w, w, w, w),) * 6
    return Inception(InceptionConfig(n_classes, modules, bottleneck=w))


@lru_cache(maxsize=256)
def narrow_params(family: str, n_classes: int, width: int) -> int:
    """Parameters of the ``width``-wide net (cached: building InceptionTime takes ms)."""
    from dsp_deploy.nets.layers import count_params

    return count_params(build_narrow(family, n_classes, width))


def narrow_width(family: str, n_classes: int, target: int) -> int:
    """The width in 1..32 whose parameter count is nearest ``target``."""
    widths = range(FULL_WIDTH, 0, -1)  # wider first, so ties keep the wider net
    return min(widths, key=lambda w: abs(narrow_params(family, n_classes, w) - target))

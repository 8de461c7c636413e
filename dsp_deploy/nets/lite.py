"""LITE (Ismail-Fawaz et al., DSAA 2023) with configurable widths, for DSP.

Input ``(B, 1, T)``; every convolution has no bias and Keras "same" padding::

    x ─┬─ Conv(1→a, k=40) ─┐
       ├─ Conv(1→b, k=20) ─┤
       ├─ Conv(1→c, k=10) ─┼─ concat (m = a+b+c+17) ─ BN ─ ReLU ══► tap 0 (first a+b+c ch)
       └─ hybrid(17) ─ ReLU┘
    ─ DWConv(m, k=20, d=2) ─ Conv1x1(m→f2) ─ BN ─ ReLU ══► tap 1
    ─ DWConv(f2, k=10, d=4) ─ Conv1x1(f2→f3) ─ BN ─ ReLU ══► tap 2 ─ GAP ─ Linear(f3→C)

Parameters (BN: γ and β; running statistics are buffers)::

    40a + 20b + 10c + 438 + 2m + 20m + m·f2 + 2f2 + 10f2 + f2·f3 + 2f3 + (f3 + 1)·C

which is 10,252 + 33·C at the default widths (32, 32, 32) and (32, 32), 438 of them the
frozen hand-crafted filters.

Decisions:

* Tap 0 exposes only the ``a+b+c`` learnable channels of the post-concat map. The
  authors' refactored code penalises and scores exactly these (``feat[:, :96]``); their
  legacy ``features[0][:96]`` sliced the batch by mistake and so also penalised the 17
  hand-crafted channels, whose only trainable parts are BN's γ and β (PAPER.md §9.1).
  The protocol always keeps the hand-crafted channels, so penalising them buys nothing.
* Initialisation is PyTorch's default, as in the authors' PyTorch port.
* Speed: with ``fast_kernels`` on (the default; off while an ONNX export traces), the
  three branches run as one convolution and the 17 hand-crafted filters as another
  (:func:`~dsp_deploy.nets.layers.merged_same_conv1d`), and the depthwise and 1×1
  convolutions use :mod:`dsp_deploy.nets.fast`'s backward. Weights stay stored per
  branch and per filter, so parameter counts, state dicts and the exported graph do not
  change; ``use_fast_kernels(net, False)`` restores the plain path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from dsp_deploy.errors import InputError
from dsp_deploy.nets.layers import (
    HybridBlock,
    PointwiseConv1d,
    SameConv1d,
    as_index,
    copy_batchnorm_,
    fast_path,
    merged_same_conv1d,
    take_,
)

BRANCH_KERNELS: tuple[int, int, int] = (40, 20, 10)
DWSC_KERNELS: tuple[int, int] = (20, 10)
DWSC_DILATIONS: tuple[int, int] = (2, 4)
N_HYBRID = 17


@dataclass(frozen=True)
class LiteConfig:
    """Widths of a LITE network; the defaults are the published architecture."""

    n_classes: int
    branch_widths: tuple[int, int, int] = (32, 32, 32)
    dwsc_widths: tuple[int, int] = (32, 32)

    def __post_init__(self) -> None:
        if self.n_classes < 1 or min(self.branch_widths + self.dwsc_widths) < 0:
            raise InputError(f"LITE widths must be >= 0 and classes >= 1, got {self}")
        if min(self.dwsc_widths) == 0:
            raise InputError(f"LITE's DWSC layers need at least one channel, got {self}")

    @property
    def tap_channels(self) -> tuple[int, int, int]:
        return (sum(self.branch_widths), *self.dwsc_widths)

    def pruned(self, keep: Sequence[Sequence[int]]) -> LiteConfig:
        """The config that keeps channels ``keep[l]`` (indices into tap ``l``)."""
        k0, k1, k2 = (set(int(i) for i in k) for k in keep)
        bounds = _branch_bounds(self.branch_widths)
        widths = tuple(sum(lo <= i < hi for i in k0) for lo, hi in bounds)
        return replace(self, branch_widths=widths, dwsc_widths=(len(k1), len(k2)))  # type: ignore[arg-type]

    def param_count(self) -> int:
        """The closed-form parameter count (PAPER.md §7.1)."""
        a, b, c = self.branch_widths
        f2, f3 = self.dwsc_widths
        m = a + b + c + N_HYBRID
        return (
            40 * a + 20 * b + 10 * c + 438 + 2 * m + 20 * m + m * f2 + 2 * f2 + 10 * f2
            + f2 * f3 + 2 * f3 + (f3 + 1) * self.n_classes
        )  # fmt: skip


def _branch_bounds(widths: Sequence[int]) -> list[tuple[int, int]]:
    starts = [sum(widths[:i]) for i in range(len(widths))]
    return [(s, s + w) for s, w in zip(starts, widths, strict=True)]


class Lite(nn.Module):
    """One LITE network: ``forward(x) -> logits`` and ``forward_with_taps``."""

    tap_names: tuple[str, ...] = ("inception", "dwsc1", "dwsc2")

    def __init__(self, config: LiteConfig) -> None:
        super().__init__()
        self.config = config
        # A branch of width 0 is absent (the protocol may empty one; Conv1d needs >= 1).
        self.branches = nn.ModuleList(
            SameConv1d(1, w, k)
            for w, k in zip(config.branch_widths, BRANCH_KERNELS, strict=True)
            if w
        )
        self.hybrid = HybridBlock()
        m = sum(config.branch_widths) + N_HYBRID
        f2, f3 = config.dwsc_widths
        self.bn1 = nn.BatchNorm1d(m)
        self.dw1 = SameConv1d(m, m, DWSC_KERNELS[0], dilation=DWSC_DILATIONS[0], groups=m)
        self.pw1 = PointwiseConv1d(m, f2)
        self.bn2 = nn.BatchNorm1d(f2)
        self.dw2 = SameConv1d(f2, f2, DWSC_KERNELS[1], dilation=DWSC_DILATIONS[1], groups=f2)
        self.pw2 = PointwiseConv1d(f2, f3)
        self.bn3 = nn.BatchNorm1d(f3)
        self.fc = nn.Linear(f3, config.n_classes)
        self.fast_kernels = True

    def forward_with_taps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the post-BN-ReLU maps the DSP loss and the protocol read."""
        if fast_path(self):  # the three branches as one convolution
            parts = [merged_same_conv1d(x, self.branches)] if self.branches else []
        else:
            parts = [branch(x) for branch in self.branches]
        h0 = F.relu(self.bn1(torch.cat([*parts, self.hybrid(x)], dim=1)))
        h1 = F.relu(self.bn2(self.pw1(self.dw1(h0))))
        h2 = F.relu(self.bn3(self.pw2(self.dw2(h1))))
        logits = self.fc(h2.mean(dim=-1))
        return logits, [h0[:, : sum(self.config.branch_widths)], h1, h2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_taps(x)[0]

    def pruned(self, keep: Sequence[Sequence[int]]) -> Lite:
        """A smaller LITE holding this one's weights for the channels ``keep[l]`` of tap l."""
        new = Lite(self.config.pruned(keep))
        k0, i2, i3 = (as_index(k) for k in keep)
        n_learn = sum(self.config.branch_widths)
        old = iter(self.branches)
        new_branches = iter(new.branches)
        for (lo, hi), w_old, w_new in zip(
            _branch_bounds(self.config.branch_widths),
            self.config.branch_widths,
            new.config.branch_widths,
            strict=True,
        ):
            old_b = next(old) if w_old else None
            if w_new:  # w_new > 0 implies w_old > 0
                rows = k0[(k0 >= lo) & (k0 < hi)] - lo
                take_(next(new_branches).conv.weight, old_b.conv.weight, rows)
        a = torch.cat([k0, torch.arange(n_learn, n_learn + N_HYBRID)])
        copy_batchnorm_(new.bn1, self.bn1, a)
        take_(new.dw1.conv.weight, self.dw1.conv.weight, a)
        take_(new.pw1.weight, self.pw1.weight, i2, a)
        copy_batchnorm_(new.bn2, self.bn2, i2)
        take_(new.dw2.conv.weight, self.dw2.conv.weight, i2)
        take_(new.pw2.weight, self.pw2.weight, i3, i2)
        copy_batchnorm_(new.bn3, self.bn3, i3)
        take_(new.fc.weight, self.fc.weight, slice(None), i3)
        take_(new.fc.bias, self.fc.bias)
        return new

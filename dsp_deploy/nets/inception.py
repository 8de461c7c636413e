"""InceptionTime's network (Ismail Fawaz et al., DMKD 2020) with configurable widths.

A module with input ``u`` (``n`` channels) and branch widths ``(w1, w2, w3, w4)``::

    z = Conv1x1(n→32)(u) if n > 1 else u                     (bottleneck, linear)
    h = ReLU(BN(concat[Conv(z, k=40)→w1, Conv(z, k=20)→w2, Conv(z, k=10)→w3,
                       Conv1x1(MaxPool3(u))→w4]))

No convolution has a bias; "same" padding as Keras. Six modules; after modules 3 and 6 a
residual ``ReLU(h + BN(Conv1x1(r)))`` where ``r`` is the input of the block of three. The
taps are the six module outputs, post-residual-ReLU for modules 3 and 6. GAP, then
Linear. At the default widths (32 × 4 per module) there are 420,192 + 129·C parameters:
module 1 2,528; modules 2–6 80,128 each; shortcuts 384 + 16,640; head 129·C.

A branch of width 0 is removed, so the protocol can rebuild any smaller module; a module
whose input has a single channel gets no bottleneck, as in the reference.

Speed: with ``fast_kernels`` on (the default; off while an ONNX export traces), the
univariate first module runs its three convolutions as one, the max pooling and every
convolution use :mod:`dsp_deploy.nets.fast`'s backward; the weights, the state dict and
the exported graph are those of the plain modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dsp_deploy.errors import InputError
from dsp_deploy.nets.fast import max_pool1d_same
from dsp_deploy.nets.layers import (
    PointwiseConv1d,
    SameConv1d,
    as_index,
    copy_batchnorm_,
    fast_path,
    merged_same_conv1d,
    take_,
)

KERNELS: tuple[int, int, int] = (40, 20, 10)
DEFAULT_MODULE: tuple[int, int, int, int] = (32, 32, 32, 32)


@dataclass(frozen=True)
class InceptionConfig:
    """Per-module branch widths; the defaults are the published architecture."""

    n_classes: int
    module_widths: tuple[tuple[int, int, int, int], ...] = (DEFAULT_MODULE,) * 6
    bottleneck: int = 32
    in_channels: int = 1
    residual_every: int = 3

    def __post_init__(self) -> None:
        if self.n_classes < 1 or not self.module_widths:
            raise InputError(f"Inception needs >= 1 class and >= 1 module, got {self}")
        if any(len(w) != 4 or min(w) < 0 or sum(w) == 0 for w in self.module_widths):
            raise InputError(f"each Inception module needs 4 widths >= 0, not all 0: {self}")

    @property
    def tap_channels(self) -> tuple[int, ...]:
        return tuple(sum(w) for w in self.module_widths)

    def module_inputs(self) -> tuple[int, ...]:
        return (self.in_channels, *self.tap_channels[:-1])

    def pruned(self, keep: Sequence[Sequence[int]]) -> InceptionConfig:
        """The config that keeps channels ``keep[d]`` of module ``d``'s output."""
        widths = []
        for w, k in zip(self.module_widths, keep, strict=True):
            kept = {int(i) for i in k}
            starts = [sum(w[:b]) for b in range(4)]
            widths.append(
                tuple(sum(s <= i < s + n for i in kept) for s, n in zip(starts, w, strict=True))
            )
        return InceptionConfig(
            self.n_classes, tuple(widths), self.bottleneck, self.in_channels, self.residual_every
        )


class InceptionModule(nn.Module):
    def __init__(self, in_channels: int, widths: Sequence[int], bottleneck: int) -> None:
        super().__init__()
        self.widths = tuple(widths)
        self.bottleneck = PointwiseConv1d(in_channels, bottleneck) if in_channels > 1 else None
        z = bottleneck if in_channels > 1 else in_channels
        self.convs = nn.ModuleList(
            SameConv1d(z, w, k) for w, k in zip(self.widths[:3], KERNELS, strict=True) if w
        )
        self.pool_conv = PointwiseConv1d(in_channels, self.widths[3]) if self.widths[3] else None
        self.bn = nn.BatchNorm1d(sum(self.widths))
        self.fast_kernels = True

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        z = u if self.bottleneck is None else self.bottleneck(u)
        fast = fast_path(self)
        if fast and self.bottleneck is None and self.convs:  # univariate: one merged conv
            parts = [merged_same_conv1d(z, self.convs)]
        else:
            parts = [conv(z) for conv in self.convs]
        if self.pool_conv is not None:
            pooled = max_pool1d_same(u, 3) if fast else F.max_pool1d(u, 3, stride=1, padding=1)
            parts.append(self.pool_conv(pooled))
        return F.relu(self.bn(torch.cat(parts, dim=1)))


class Shortcut(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = PointwiseConv1d(in_channels, out_channels)
        self.bn = nn.BatchNorm1d(out_channels)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(r))


class Inception(nn.Module):
    """One InceptionTime network: ``forward(x) -> logits`` and ``forward_with_taps``."""

    def __init__(self, config: InceptionConfig) -> None:
        super().__init__()
        self.config = config
        ins, outs = config.module_inputs(), config.tap_channels
        self.blocks = nn.ModuleList(
            InceptionModule(n, w, config.bottleneck)
            for n, w in zip(ins, config.module_widths, strict=True)
        )
        self.ends = ends = self.residual_ends()
        starts = [0, *(e + 1 for e in ends[:-1])]
        self.shortcuts = nn.ModuleList(
            Shortcut(ins[s], outs[e]) for s, e in zip(starts, ends, strict=True)
        )
        self.fc = nn.Linear(outs[-1], config.n_classes)

    @property
    def tap_names(self) -> tuple[str, ...]:
        return tuple(f"module{d + 1}" for d in range(len(self.blocks)))

    def residual_ends(self) -> tuple[int, ...]:
        """Indices of the modules followed by a residual add."""
        k = self.config.residual_every
        return tuple(d for d in range(len(self.config.module_widths)) if d % k == k - 1)

    def forward_with_taps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the six module outputs (post-residual ReLU where there is one)."""
        taps: list[torch.Tensor] = []
        residual, shortcuts = x, iter(self.shortcuts)
        for d, block in enumerate(self.blocks):
            x = block(x)
            if d in self.ends:
                x = F.relu(x + next(shortcuts)(residual))
                residual = x
            taps.append(x)
        return self.fc(x.mean(dim=-1)), taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_taps(x)[0]

    def pruned(self, keep: Sequence[Sequence[int]]) -> Inception:
        """A smaller Inception holding this one's weights for the kept module channels."""
        new = Inception(self.config.pruned(keep))
        kept = [as_index(k) for k in keep]
        inputs = [torch.arange(self.config.in_channels), *kept[:-1]]
        for old_m, new_m, idx_in, idx_out in zip(
            self.blocks, new.blocks, inputs, kept, strict=True
        ):
            _copy_module(new_m, old_m, idx_in, idx_out)
        ends = self.ends
        res_in = [inputs[0], *(kept[e] for e in ends[:-1])]
        for old_s, new_s, r_in, e in zip(self.shortcuts, new.shortcuts, res_in, ends, strict=True):
            take_(new_s.conv.weight, old_s.conv.weight, kept[e], r_in)
            copy_batchnorm_(new_s.bn, old_s.bn, kept[e])
        take_(new.fc.weight, self.fc.weight, slice(None), kept[-1])
        take_(new.fc.bias, self.fc.bias)
        return new


def _copy_module(
    new: InceptionModule, old: InceptionModule, idx_in: torch.Tensor, idx_out: torch.Tensor
) -> None:
    starts = [sum(old.widths[:b]) for b in range(4)]
    rows = [
        idx_out[(idx_out >= s) & (idx_out < s + w)] - s
        for s, w in zip(starts, old.widths, strict=True)
    ]
    if new.bottleneck is not None and old.bottleneck is not None:
        take_(new.bottleneck.weight, old.bottleneck.weight, slice(None), idx_in)
    # A module reduced to one input channel loses its bottleneck: its convs then read a
    # different tensor, so they keep their fresh initialisation (PAPER.md §4 edge case).
    same_source = (new.bottleneck is None) == (old.bottleneck is None)
    old_convs = iter(old.convs)
    new_convs = iter(new.convs)
    for b in range(3):
        old_c = next(old_convs) if old.widths[b] else None
        if new.widths[b]:
            new_c = next(new_convs)
            if same_source:
                take_(new_c.conv.weight, old_c.conv.weight, rows[b])
    if new.pool_conv is not None:
        take_(new.pool_conv.weight, old.pool_conv.weight, rows[3], idx_in)
    copy_batchnorm_(new.bn, old.bn, idx_out)

"""DSP's global activation analysis and the smaller network it leads to.

For a tapped map ``F ∈ R^{N×C×T}`` over the N training series (eval mode, no grad)::

    a[i, c] = ‖F[i, c, :]‖₂                               channel energy of series i
    μ[i]    = Σ_c a[i, c] / (nnz_c(a[i, ·]) + 1)          ≈ mean over live channels
    n[c]    = #{i : a[i, c] > μ[i]}                       series where c is "important"
    keep c  ⇔ n[c] > min_count                            (LITE 1, InceptionTime 0)

A channel is *dead* when ``a[i, c] = 0`` for every i: it is exactly zero after its ReLU
on the whole training set, so removing it changes nothing on that data.

Safeguards: no group may end up empty — LITE's three branches and each DWSC layer,
each Inception module — and an empty group keeps its channel of highest ``n[c]`` (the
lowest index on ties, i.e. the authors' "index 0" when nothing counts). LITE's
hand-crafted channels are not tapped and so always kept.

Decisions (PAPER.md §9):

* The analysis runs in **eval mode** (running BN statistics), for both architectures;
  the authors' Inception notebook used train mode (quirk 5).
* Fine-tuning copies the weights of the **sparse-trained** model that was analysed,
  shortcuts included (the notebook copied from the dense model and missed shortcut 2).
* An empty branch falls back to its best channel in its own slot; the authors' LITE code
  appended the index at the end and misaligned BN and depthwise slicing (quirk 6).
* The keep thresholds stay the paper's (1 vs 0), as ``ArchSpec.min_count``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dsp_deploy.nets.inception import Inception
from dsp_deploy.nets.lite import Lite, _branch_bounds
from dsp_deploy.train.loop import seed_torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TapStats:
    name: str
    counts: tuple[int, ...]  # n[c]
    dead: tuple[int, ...]  # channels zero on every training series

    @property
    def channels(self) -> int:
        return len(self.counts)


@dataclass(frozen=True)
class ActivationAnalysis:
    taps: tuple[TapStats, ...]
    n_series: int

    @property
    def dead_counts(self) -> tuple[int, ...]:
        return tuple(len(t.dead) for t in self.taps)

    @property
    def channel_counts(self) -> tuple[int, ...]:
        return tuple(t.channels for t in self.taps)


def channel_energy(feature_map: torch.Tensor) -> torch.Tensor:
    """``a[i, c] = ‖F[i, c, :]‖₂`` of a ``(N, C, T)`` map."""
    return torch.linalg.vector_norm(feature_map, ord=2, dim=-1)


def important(energy: torch.Tensor) -> torch.Tensor:
    """``a[i, c] > Σ_c a[i, c] / (nnz + 1)``, per series, as a bool ``(N, C)`` mask."""
    threshold = energy.sum(dim=1, keepdim=True) / ((energy > 0).sum(dim=1, keepdim=True) + 1)
    return energy > threshold


def analyse(net: nn.Module, X: np.ndarray, *, batch_size: int = 256) -> ActivationAnalysis:
    """Counts ``n[c]`` and dead channels of every tap of ``net`` over ``X``."""
    net.eval()
    xs = torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32))
    counts: list[torch.Tensor] = []
    peak: list[torch.Tensor] = []
    with torch.no_grad():
        for xb in xs.split(batch_size):
            _, taps = net.forward_with_taps(xb)
            energies = [channel_energy(t) for t in taps]
            if not counts:
                counts = [torch.zeros(e.shape[1], dtype=torch.long) for e in energies]
                peak = [torch.zeros(e.shape[1]) for e in energies]
            for c, p, e in zip(counts, peak, energies, strict=True):
                c += important(e).sum(dim=0)
                torch.maximum(p, e.max(dim=0).values, out=p)
    stats = tuple(
        TapStats(name, tuple(c.tolist()), tuple(torch.nonzero(p == 0).flatten().tolist()))
        for name, c, p in zip(net.tap_names, counts, peak, strict=True)
    )
    return ActivationAnalysis(stats, len(xs))


def keep_groups(net: nn.Module) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Per tap, the channel ranges that must each keep at least one channel."""
    if isinstance(net, Lite):
        return (
            tuple((lo, hi) for lo, hi in _branch_bounds(net.config.branch_widths) if hi > lo),
            *(((0, f),) for f in net.config.dwsc_widths),
        )
    if isinstance(net, Inception):
        return tuple(((0, c),) for c in net.config.tap_channels)
    raise TypeError(f"no DSP keep groups for {type(net).__name__}")


def keep_indices(
    analysis: ActivationAnalysis,
    min_count: int,
    groups: Sequence[Sequence[tuple[int, int]]],
) -> tuple[tuple[int, ...], ...]:
    """Channels to keep per tap: ``n[c] > min_count``, no group left empty."""
    keep = []
    for tap, tap_groups in zip(analysis.taps, groups, strict=True):
        counts = np.asarray(tap.counts)
        mask = counts > min_count
        for lo, hi in tap_groups:
            if not mask[lo:hi].any():
                mask[lo + int(np.argmax(counts[lo:hi]))] = True
        keep.append(tuple(int(i) for i in np.flatnonzero(mask)))
    return tuple(keep)


def shrink(
    net: Lite | Inception, keep: Sequence[Sequence[int]], *, reinit_seed: int | None
) -> Lite | Inception:
    """The smaller net: fresh weights seeded by ``reinit_seed`` (retrain from scratch),
    or, with ``None``, the kept weights of ``net`` (fine-tune)."""
    if reinit_seed is None:
        return net.pruned(keep)
    seed_torch(reinit_seed)
    return type(net)(net.config.pruned(keep))

"""Pieces shared by the LITE and InceptionTime networks.

Keras "same" padding: a Conv1d of kernel ``k`` and dilation ``d`` at stride 1 needs
``total = (k - 1) * d`` zeros so that the output keeps the input length ``T``. Keras (and
TensorFlow) put ``total // 2`` on the left and the rest — one more for even kernels — on
the right. PyTorch's ``padding="same"`` does the same in eager mode but exports to ONNX as
``auto_pad=SAME_UPPER``, which onnxruntime rejects with dilation; so the padding here is
explicit: symmetric pads go into the Conv, asymmetric ones are an ``F.pad`` in front of
it, which :mod:`dsp_deploy.train.export` folds back into the Conv's ``pads`` attribute.

LITE's hand-crafted filters (Ismail-Fawaz et al., 2022/2023), one output channel each:

* increasing-trend, ``k ∈ {2,4,8,16,32,64}``: ``w[j] = -1`` for even ``j``, ``+1`` for odd;
* decreasing-trend, same ``k``: the negation, ``w[j] = +1`` for even ``j``, ``-1`` for odd;
* peak, ``k ∈ {4,...,64}``, length ``k + k/2``: with ``r = linspace(0, 1, k/4 + 1)[1:]**2``
  and ``r'`` its reverse, the six quarters ``[-r, -r', 2r, 2r', -r, -r']``.

They are frozen (``requires_grad=False``) and count 438 weights in total.

Fast kernels (training speed on CPU; :mod:`dsp_deploy.nets.fast` holds the math): every
module here with a ``fast_kernels`` flag computes the same function two ways. The plain
path is what the ONNX exporter traces (one Conv per filter bank, padding as above); the
fast path — used when the flag is on and no ONNX export is running — pads once, merges
the convolutions of one input into one, and runs the backward pass as forward
convolutions, which oneDNN computes several times faster than its own backward.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dsp_deploy.nets.fast import is_exporting, merged_conv1d, padded_conv1d

HYBRID_KERNELS: tuple[int, ...] = (2, 4, 8, 16, 32, 64)


def same_pads(kernel_size: int, dilation: int = 1) -> tuple[int, int]:
    """Keras "same" padding (left, right) for a stride-1 convolution."""
    total = (kernel_size - 1) * dilation
    return total // 2, total - total // 2


def fast_path(module: nn.Module) -> bool:
    """Whether ``module`` should run its fast kernels now (flag on, no ONNX export)."""
    return bool(getattr(module, "fast_kernels", False)) and not is_exporting()


def use_fast_kernels(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch the fast kernels of ``module`` and its submodules on or off; returns it."""
    for m in module.modules():
        if hasattr(m, "fast_kernels"):
            m.fast_kernels = enabled
    return module


class SameConv1d(nn.Module):
    """Conv1d with Keras "same" padding; weights in ``self.conv`` (no bias by default)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__()
        left, right = self.same = same_pads(kernel_size, dilation)
        self.fast_kernels = True
        # Symmetric padding stays inside the Conv; only asymmetric padding needs F.pad.
        self.pads = (0, 0) if left == right else (left, right)
        self.conv = nn.Conv1d(
            in_channels,
            out_channels,
            kernel_size,
            padding=left if left == right else 0,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fast_path(self):
            conv = self.conv
            return padded_conv1d(
                x,
                conv.weight,
                conv.bias,
                pads=self.same,
                dilation=conv.dilation[0],
                groups=conv.groups,
            )
        if self.pads != (0, 0):
            x = F.pad(x, self.pads)
        return self.conv(x)


class PointwiseConv1d(nn.Conv1d):
    """A 1×1 Conv1d (``nn.Conv1d`` to the exporter and the state dict) with fast kernels."""

    def __init__(self, in_channels: int, out_channels: int, *, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias)
        self.fast_kernels = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fast_path(self):
            return padded_conv1d(x, self.weight, self.bias, pads=(0, 0))
        return super().forward(x)


def trend_filter(kernel_size: int, *, increasing: bool) -> np.ndarray:
    """An alternating ±1 filter; increasing starts at -1, decreasing at +1."""
    w = np.ones(kernel_size, dtype=np.float32)
    w[(np.arange(kernel_size) % 2 == 0) if increasing else (np.arange(kernel_size) % 2 == 1)] = -1
    return w


def peak_filter(kernel_size: int) -> np.ndarray:
    """The quadratic peak detector of length ``kernel_size * 3 // 2``."""
    q = kernel_size // 4
    left = np.linspace(0.0, 1.0, q + 1, dtype=np.float64)[1:] ** 2
    right = left[::-1]
    return np.concatenate([-left, -right, 2 * left, 2 * right, -left, -right]).astype(np.float32)


def hybrid_filters() -> tuple[np.ndarray, ...]:
    """The 17 hand-crafted filters in LITE's channel order (6 inc, 6 dec, 5 peak)."""
    return (
        *(trend_filter(k, increasing=True) for k in HYBRID_KERNELS),
        *(trend_filter(k, increasing=False) for k in HYBRID_KERNELS),
        *(peak_filter(k) for k in HYBRID_KERNELS[1:]),
    )


class HybridBlock(nn.Module):
    """LITE's frozen hand-crafted filters on a univariate input, then ReLU: (B,1,T)→(B,17,T)."""

    def __init__(self) -> None:
        super().__init__()
        convs = []
        for w in hybrid_filters():
            conv = SameConv1d(1, 1, len(w))
            conv.conv.weight = nn.Parameter(torch.from_numpy(w).view(1, 1, -1), requires_grad=False)
            convs.append(conv)
        self.convs = nn.ModuleList(convs)
        self.fast_kernels = True

    @property
    def out_channels(self) -> int:
        return len(self.convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fast_path(self):
            return F.relu(merged_same_conv1d(x, self.convs))
        return F.relu(torch.cat([conv(x) for conv in self.convs], dim=1))


def merged_same_conv1d(x: torch.Tensor, convs: Iterable[SameConv1d]) -> torch.Tensor:
    """The channel concatenation of undilated ``convs`` of ``x``, as one convolution."""
    convs = list(convs)
    if any(c.conv.bias is not None or c.conv.dilation != (1,) for c in convs):
        raise ValueError("merged_same_conv1d needs bias-free, undilated convolutions")
    return merged_conv1d(x, [c.conv.weight for c in convs], [c.same for c in convs])


def count_params(module: nn.Module, *, trainable: bool | None = None) -> int:
    """Elements of the module's parameters (BN running stats are buffers, not counted)."""
    return sum(
        p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable
    )


def take_(dst: torch.Tensor, src: torch.Tensor, *index: torch.Tensor | slice) -> None:
    """``dst[...] = src[index0][:, index1]...`` in place, one index per leading axis."""
    out = src
    for axis, idx in enumerate(index):
        if not isinstance(idx, slice):
            out = out.index_select(axis, idx)
    with torch.no_grad():
        dst.copy_(out)


def copy_batchnorm_(dst: nn.BatchNorm1d, src: nn.BatchNorm1d, index: torch.Tensor) -> None:
    """Copy the channels ``index`` of ``src`` (affine parameters and running stats)."""
    for name in ("weight", "bias", "running_mean", "running_var"):
        take_(getattr(dst, name), getattr(src, name), index)
    dst.num_batches_tracked.copy_(src.num_batches_tracked)


def as_index(values: Iterable[int]) -> torch.Tensor:
    """Channel indices as a sorted int64 tensor."""
    return torch.as_tensor(sorted(int(v) for v in values), dtype=torch.long)

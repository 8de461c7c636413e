"""Training-speed CPU kernels for 1-D convolutions and max pooling, same math as torch's.

**Padded convolution.** For ``x ∈ R^{B×I×T}``, zero pads ``(l, r)``, weight
``w ∈ R^{O×I×k}`` (``groups = 1``) or ``R^{C×1×k}`` (depthwise, ``groups = C``), dilation
``d`` and ``xp = pad(x, (l, r))``::

    y[b,o,t]    = Σ_i Σ_j w[o,i,j] · xp[b,i,t + j·d]
    ∂x[b,i,t]   = Σ_o Σ_j w[o,i,j] · g[b,o,t + l - j·d]
                = conv1d(pad(g, (r, l)), flip(w)ᵀ, dilation=d)      (since (k-1)·d = l + r)
    ∂w[o,i,j]   = Σ_b Σ_t g[b,o,t] · xp[b,i,t + j·d]
                = conv1d(xpᵀ, gᵀ, stride=d)ᵀ    (batch ↔ channel: I series, B channels)
    ∂bias[o]    = Σ_b Σ_t g[b,o,t]
    k = 1:  y[b] = w · x[b],  ∂x[b] = wᵀ · g[b],  ∂w = Σ_b g[b] · x[b]ᵀ   (batched matmuls)

and for a depthwise weight ``∂x`` uses ``flip(w)`` with ``groups = C``, ``∂w`` treats each
``(b, c)`` row as its own group (``B·C`` groups, kernel ``g[b,c,:]``, stride ``d``) and sums
over ``b``. Every term is a *forward* convolution of an explicitly padded input. Why: on
this CPU (oneDNN 3.12 in torch 2.13, 1 thread, batch 64, T = 150) the forward kernels are
fast while the backward ones are not — LITE's depthwise k = 20, d = 2 on 113 channels:
forward 7 ms, oneDNN ∂x 91 ms and ∂w 66 ms against 8 ms and 8 ms as above; a 32→32,
k = 40 Conv: ∂x 50 → 19 ms, ∂w 29 → 15 ms; a 1×1 113→32 Conv: backward 20 → 5 ms. A
depthwise Conv given ``padding=`` instead of a padded input is also 8-10× slower
forward, hence the explicit pad.

**Merged convolutions.** Keras-"same" convolutions of one input with kernels ``w_n`` of
lengths ``k_n`` are one convolution: with ``(l_n, r_n)`` their pads, ``L = max l_n``,
``R = max r_n``, embed each ``w_n`` at offset ``L - l_n`` in a kernel of length
``L + R + 1`` (zeros elsewhere) and pad the input by ``(L, R)`` once.

**Max pooling** (odd ``k``, stride 1, ``-inf`` padding ``k // 2``): forward is torch's;
backward sends ``g[t]`` to the *first* position of window ``t`` that holds the maximum, as
``max_pool1d`` does, with a few elementwise ops: torch's own backward for a
``requires_grad`` input goes through ``max_pool2d_with_indices``, ~40× the cost of the
forward here.

None of these is used while an ONNX export runs: the exporter traces the plain modules.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import FunctionCtx, once_differentiable


def is_exporting() -> bool:
    """Whether an ONNX export is tracing the model (fast paths must then step aside)."""
    return torch.onnx.is_in_onnx_export()


def supports(in_channels: int, out_channels: int, groups: int) -> bool:
    """Whether :func:`padded_conv1d` has fast kernels for this grouping."""
    return groups == 1 or groups == in_channels == out_channels


class _PaddedConv1d(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        pads: tuple[int, int],
        dilation: int,
        groups: int,
    ) -> torch.Tensor:
        xp = _pad(x, pads)
        ctx.save_for_backward(xp, weight)
        ctx.pads, ctx.dilation, ctx.groups = pads, dilation, groups  # type: ignore[attr-defined]
        return _conv(xp, weight, bias, dilation, groups)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        xp, weight = ctx.saved_tensors  # type: ignore[attr-defined]
        (left, right), d, groups = ctx.pads, ctx.dilation, ctx.groups  # type: ignore[attr-defined]
        need_x, need_w, need_b = ctx.needs_input_grad[:3]  # type: ignore[attr-defined]
        grad = grad.contiguous()
        gx = _grad_input(grad, weight, (right, left), d, groups) if need_x else None
        gw = _grad_weight(grad, xp, d, groups, weight.shape[-1]) if need_w else None
        gb = grad.sum((0, 2)) if need_b else None
        return gx, gw, gb, None, None, None


def _pad(x: torch.Tensor, pads: tuple[int, int]) -> torch.Tensor:
    return F.pad(x, pads) if any(pads) else x


def _conv(
    xp: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dilation: int, groups: int
) -> torch.Tensor:
    if groups == 1 and weight.shape[-1] == 1:  # 1×1: a batched matmul beats oneDNN here
        y = torch.bmm(weight[:, :, 0].expand(xp.shape[0], -1, -1), xp)
        return y if bias is None else y + bias[:, None]
    return F.conv1d(xp, weight, bias, dilation=dilation, groups=groups)


def _grad_input(
    grad: torch.Tensor, weight: torch.Tensor, pads: tuple[int, int], dilation: int, groups: int
) -> torch.Tensor:
    flipped = weight.flip(-1)
    if groups == 1:
        flipped = flipped.transpose(0, 1)
    return _conv(_pad(grad, pads), flipped, None, dilation, groups)


def _grad_weight(
    grad: torch.Tensor, xp: torch.Tensor, dilation: int, groups: int, kernel_size: int
) -> torch.Tensor:
    if groups == 1 and kernel_size == 1:
        return torch.bmm(grad, xp.transpose(1, 2)).sum(0).unsqueeze(-1)
    if groups == 1:
        # (I, B, Tp) ⋆ (O, B, T) -> (I, O, k)
        return F.conv1d(xp.transpose(0, 1), grad.transpose(0, 1), stride=dilation).transpose(0, 1)
    b, c, t = grad.shape
    rows = F.conv1d(
        xp.reshape(1, b * c, -1), grad.reshape(b * c, 1, t), stride=dilation, groups=b * c
    )
    return rows.view(b, c, kernel_size).sum(0).unsqueeze(1)


def padded_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    pads: tuple[int, int],
    dilation: int = 1,
    groups: int = 1,
) -> torch.Tensor:
    """``conv1d(pad(x, pads), weight, bias, dilation=dilation, groups=groups)``, stride 1.

    Dense and depthwise weights get the fast backward; other groupings run torch's own.
    """
    if not supports(x.shape[1], weight.shape[0], groups):
        return F.conv1d(F.pad(x, pads), weight, bias, dilation=dilation, groups=groups)
    return _PaddedConv1d.apply(x, weight, bias, pads, dilation, groups)


def merged_kernel(
    weights: Sequence[torch.Tensor], pads: Sequence[tuple[int, int]]
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Kernels of one input, each with its own pads, as one kernel and one pair of pads."""
    left = max(lo for lo, _ in pads)
    right = max(hi for _, hi in pads)
    kernel = torch.cat(
        [F.pad(w, (left - lo, right - hi)) for w, (lo, hi) in zip(weights, pads, strict=True)]
    )
    return kernel, (left, right)


def merged_conv1d(
    x: torch.Tensor, weights: Sequence[torch.Tensor], pads: Sequence[tuple[int, int]]
) -> torch.Tensor:
    """``cat([conv1d(pad(x, p_n), w_n) for n], dim=1)`` as a single convolution."""
    kernel, outer = merged_kernel(weights, pads)
    return padded_conv1d(x, kernel, pads=outer)


class _MaxPool1dSame(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor, kernel_size: int) -> torch.Tensor:  # type: ignore[override]
        y = F.max_pool1d(x, kernel_size, stride=1, padding=kernel_size // 2)
        ctx.save_for_backward(x, y)
        ctx.kernel_size = kernel_size  # type: ignore[attr-defined]
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        x, y = ctx.saved_tensors  # type: ignore[attr-defined]
        return _max_pool_grad(x, y, grad, ctx.kernel_size), None  # type: ignore[attr-defined]


def _max_pool_grad(x: torch.Tensor, y: torch.Tensor, grad: torch.Tensor, k: int) -> torch.Tensor:
    """Window ``t`` holds ``x[t + j - k//2]``, ``j < k``; its ``g[t]`` goes to the first max."""
    p, t = k // 2, x.shape[-1]
    out = torch.zeros_like(x)
    rest = grad.clone()  # what no earlier offset has taken
    taken = torch.zeros_like(x, dtype=torch.bool)
    for j in range(k - 1):
        s = j - p
        lo = max(0, -s)
        hi = max(lo, min(t, t - s))  # windows [lo, hi) have offset j inside x
        hit = (x[..., lo + s : hi + s] == y[..., lo:hi]) & ~taken[..., lo:hi]
        taken[..., lo:hi] |= hit
        share = grad[..., lo:hi] * hit
        out[..., lo + s : hi + s] += share
        rest[..., lo:hi] -= share
    # The last offset takes the rest: exactly g or exactly 0 (a max is always found).
    s = k - 1 - p
    out[..., s:] += rest[..., : max(t - s, 0)]
    return out


def max_pool1d_same(x: torch.Tensor, kernel_size: int = 3) -> torch.Tensor:
    """``max_pool1d(x, kernel_size, stride=1, padding=kernel_size // 2)``, odd kernels."""
    if kernel_size % 2 != 1:
        raise ValueError(f"max_pool1d_same needs an odd kernel size, got {kernel_size}")
    return _MaxPool1dSame.apply(x, kernel_size)

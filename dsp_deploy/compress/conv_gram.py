"""The normal equations of stride-1 Convs without forming their unfolded rows.

Unfolded, a Conv of kernel k, dilation d and pads (p_l, p_r) over x (length L) reads
at output position t < L_out = L + p_l + p_r − (k − 1)·d the row u_t = (x_p[c, t + j·d])
_{c, j}, x_p the padded input. In the coordinates of x (s = t + i·d − p_l) the block of
its Gram matrix G = Σ_t ũ_t ũ_tᵀ (ũ = [u; 1]) for taps i ≤ j, lag Δ = (j − i)·d, is

    G[(c, i), (c', j)] = Σ_n Σ_{s = a_i}^{b_i − 1} x[n, c, s] · x[n, c', s + Δ]
                       = S_Δ[b_i] − S_Δ[a_i],
    a_i = clip(i·d − p_l, 0, L − Δ),   b_i = clip(i·d − p_l + L_out, 0, L − Δ)

(the padding's zeros drop out: only s with s and s + Δ inside x count), with S_Δ[p] =
Σ_{s < p} Q_Δ[s] the prefix sum of the lag products Q_Δ[s] = Σ_n x[n, :, s] x[n, :, s + Δ]ᵀ.
S_Δ is needed only at the window ends a_i, b_i: between two consecutive ends the sum of
Q_Δ is one matrix product (C × N·m)·(N·m × C) over the m positions of that segment, so a
lag costs O(N · C² · L) multiply-adds in a few large products, and no (N · L_out) × (C · k)
array and no per-position (L, C, C) array is formed. The blocks with i > j are the
transposes; the intercept column holds the windowed sums of x, and B = Σ_t ũ_t y_tᵀ is one
correlation per tap, again over the positions inside x only.

Sharing (``conv_sums_many``): Convs that read one tensor (Inception's k = 40/20/10 convs
after a bottleneck) need the same S_Δ at different ends. One table, at the union of every
Conv's ends for each lag, serves them all: the lags of the largest kernel cover the smaller
ones, so a module costs the lag products of its largest Conv instead of the sum of all
three (40 instead of 70 at k = 40/20/10). Sums over the union's finer segments differ from
one Conv's own only by float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["ConvShape", "LagSums", "conv_sums", "conv_sums_many"]


@dataclass(frozen=True)
class ConvShape:
    """A stride-1 Conv's kernel, dilation and (left, right) pads."""

    kernel: int
    dilation: int
    pads: tuple[int, int]

    def out_length(self, length: int) -> int:
        return length + sum(self.pads) - (self.kernel - 1) * self.dilation


def _ends(shape: ConvShape, length: int, lag: int) -> tuple[np.ndarray, np.ndarray]:
    """(a_i, b_i) for the taps i < k − lag / d of a block at position lag ``lag``."""
    starts = np.arange(shape.kernel - lag // shape.dilation) * shape.dilation - shape.pads[0]
    top = max(length - lag, 0)
    return np.clip(starts, 0, top), np.clip(starts + shape.out_length(length), 0, top)


POSITIONS = 16  # edge positions whose products of every lag are formed at once


def _position_products(x: np.ndarray, positions: np.ndarray, lags: int) -> np.ndarray:
    """R[p, c, c', Δ] = Σ_n x[n, c, s_p] x[n, c', s_p + Δ] (0 past the end) for Δ < ``lags``:
    one batched product per ``POSITIONS`` positions."""
    n, c, length = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (0, lags - 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, lags, axis=2)  # (N, C, L, K)
    out = np.empty((len(positions), c, c * lags))
    for i in range(0, len(positions), POSITIONS):
        at = positions[i : i + POSITIONS]
        right = np.ascontiguousarray(windows[:, :, at].transpose(2, 0, 1, 3))
        left = np.ascontiguousarray(x[:, :, at].transpose(2, 1, 0))  # (P, C, N)
        np.matmul(left, right.reshape(len(at), n, -1), out=out[i : i + POSITIONS])
    return out.reshape(len(positions), c, c, lags)


def _segments(points: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """The one-position segments (a mask) and the longer ones (their indices)."""
    lengths = np.diff(points)
    return lengths == 1, tuple(int(m) for m in np.flatnonzero(lengths > 1))


def _gram(window: np.ndarray, samples: int, shape: ConvShape, tables: dict) -> np.ndarray:
    """G (with the intercept row and column) of one Conv from the lag tables and the
    per-position sums ``window`` (C, L) of x over the ``samples`` series."""
    c, length = window.shape
    k, d = shape.kernel, shape.dilation
    f = c * k
    g = np.empty((f + 1, f + 1))
    for delta in range(k):
        points, table = tables[delta * d]
        a, b = _ends(shape, length, delta * d)
        at, to = np.searchsorted(points, a), np.searchsorted(points, b)
        for i in range(k - delta):
            block = table[to[i]] - table[at[i]]
            g[i:f:k, i + delta : f : k] = block
            g[i + delta : f : k, i:f:k] = block.T
    sums = np.zeros((c, length + 1))
    np.cumsum(window, axis=1, out=sums[:, 1:])
    a, b = _ends(shape, length, 0)
    for i in range(k):
        g[i:f:k, f] = g[f, i:f:k] = sums[:, b[i]] - sums[:, a[i]]
    g[f, f] = samples * shape.out_length(length)
    return g


def _cross(xs: np.ndarray, y: np.ndarray, shape: ConvShape) -> np.ndarray:
    """B: per tap i, Σ over the positions inside x of x[s] y[s − i·d + p_l]ᵀ; then Σ y."""
    c, length, n = xs.shape
    k, d, pad = shape.kernel, shape.dilation, shape.pads[0]
    lout = y.shape[2]
    ys = np.ascontiguousarray(y.transpose(2, 0, 1))  # (L_out, N, O): a window is a view
    b = np.zeros((c * k + 1, y.shape[1]))
    for i in range(k):
        lo, hi = max(0, i * d - pad), min(length, i * d - pad + lout)
        if hi > lo:
            t = lo - i * d + pad
            rows = xs[:, lo:hi].reshape(c, -1)
            b[i : c * k : k] = rows @ ys[t : t + hi - lo].reshape(-1, y.shape[1])
    b[c * k] = y.sum(axis=(0, 2))
    return b


class LagSums:
    """G and B of stride-1 Convs that read one tensor (C channels, length L), summed over
    the batches ``add`` is given: per lag the segment sums between the union of the
    Convs' window ends (module docstring), assembled into each G once, in ``result``."""

    def __init__(self, shapes: Sequence[ConvShape], channels: int, length: int) -> None:
        self.shapes, self.length = tuple(shapes), length
        ends: dict[int, list[np.ndarray]] = {}
        for shape in self.shapes:
            for delta in range(shape.kernel):
                lag = delta * shape.dilation
                found = ends.setdefault(lag, [np.zeros(1, dtype=np.int64)])
                found.extend(_ends(shape, length, lag))
        self.points = {lag: np.unique(np.concatenate(e)) for lag, e in ends.items()}
        self.segments = {
            lag: np.zeros((len(p) - 1, channels, channels)) for lag, p in self.points.items()
        }
        self.split = {lag: _segments(p) for lag, p in self.points.items()}
        starts = [p[:-1][self.split[lag][0]] for lag, p in self.points.items()]
        self.positions = np.unique(np.concatenate(starts)) if starts else np.zeros(0, int)
        self.lags = max(self.points) + 1
        self.window = np.zeros((channels, length))  # Σ_n x[n, c, s]
        self.cross: list[np.ndarray] = []
        self.samples = 0

    def add(self, x: np.ndarray, ys: Sequence[np.ndarray]) -> None:
        """One batch: ``x`` (N, C, L) and each Conv's targets (N, O, L_out), float64."""
        xs = np.ascontiguousarray(x.transpose(1, 2, 0))  # (C, L, N): a window is a view
        c = xs.shape[0]
        edge = _position_products(x, self.positions, self.lags) if self.positions.size else None
        for lag, points in self.points.items():
            unit, longer = self.split[lag]
            out = self.segments[lag]
            if unit.any():
                out[unit] += edge[np.searchsorted(self.positions, points[:-1][unit]), :, :, lag]
            for m in longer:
                lo, hi = points[m], points[m + 1]
                out[m] += xs[:, lo:hi].reshape(c, -1) @ xs[:, lo + lag : hi + lag].reshape(c, -1).T
        self.window += x.sum(axis=0)
        cross = [_cross(xs, y, shape) for y, shape in zip(ys, self.shapes, strict=True)]
        self.cross = (
            cross if not self.cross else [a + b for a, b in zip(self.cross, cross, strict=True)]
        )
        self.samples += len(x)

    def result(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(G, B) per Conv, in the order of ``shapes``."""
        tables = {}
        for lag, points in self.points.items():
            table = np.zeros((len(points), *self.segments[lag].shape[1:]))
            np.cumsum(self.segments[lag], axis=0, out=table[1:])
            tables[lag] = (points, table)
        return [
            (_gram(self.window, self.samples, shape, tables), b)
            for shape, b in zip(self.shapes, self.cross, strict=True)
        ]


def conv_sums_many(
    x: np.ndarray, convs: Sequence[tuple[np.ndarray, ConvShape]]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(G, B) per Conv of ``convs`` ((targets (N, O, L_out), shape) each) over one input
    ``x`` (N, C, L): the rows [u_t; 1] (column c·k + j, then 1), float64; the lag
    products computed once for all of them (module docstring)."""
    sums = LagSums([shape for _, shape in convs], x.shape[1], x.shape[2])
    sums.add(np.asarray(x, dtype=np.float64), [y for y, _ in convs])
    return sums.result()


def conv_sums(
    x: np.ndarray, y: np.ndarray, kernel: int, dilation: int, pads: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(G, B) of the rows [u_t; 1] (column c·k + j, then 1) and targets ``y`` (N, O, L_out)
    of a stride-1 Conv over ``x`` (N, C, L), float64."""
    return conv_sums_many(x, [(y, ConvShape(kernel, dilation, (pads[0], pads[1])))])[0]

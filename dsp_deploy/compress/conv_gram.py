"""The normal equations of a stride-1 Conv without forming its unfolded rows.

Unfolded, a Conv of kernel k and dilation d over the padded input x_p (length L_p)
reads the row u_t = (x_p[c, t + j·d])_{c, j} at each output position t < L_out =
L_p − (k − 1)·d. Its Gram matrix G = Σ_t ũ_t ũ_tᵀ (ũ = [u; 1]) has, for taps i ≤ j
(lag δ = j − i), the block

    G[(c, i), (c', j)] = Σ_n Σ_{s = i·d}^{i·d + L_out − 1} x_p[n, c, s] · x_p[n, c', s + δ·d]
                       = S_δ[c, c', i·d + L_out] − S_δ[c, c', i·d]

with S_δ the prefix sum over s of P_δ[s, c, c'] = Σ_n x_p[n, c, s] x_p[n, c', s + δ·d]:
one batched (C × N)·(N × C) product per lag and position, so the cost is
O(k · N · C² · L_p) instead of O(k² · N · C² · L_out) for the unfolded rows (40× fewer
multiply-adds for Inception's k = 40 convs) and no (N · L_out) × (C · k) array is
formed. The blocks with i > j are the transposes; the intercept column holds the
windowed sums of x_p, and B = Σ_t ũ_t y_tᵀ is one correlation per tap.
"""

from __future__ import annotations

import numpy as np

__all__ = ["conv_sums"]


def _lag_block(
    xt: np.ndarray, xq: np.ndarray, shift: int, starts: np.ndarray, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """(points, S): S[j] = Σ_{s < points[j]} Σ_n x[n, c, s] x[n, c', s + shift], only at
    the window ends ``starts`` and ``starts + length`` (and 0): one ``reduceat`` pass
    over the products, then a prefix sum over the few segments it leaves (a cumsum
    along the positions of a (m, C, C) array is several times slower)."""
    m = xt.shape[0] - shift
    product = np.matmul(xt[:m], xq[shift : shift + m])  # (m, C, N) @ (m, N, C)
    points = np.unique(np.concatenate([[0], starts, starts + length]))
    inner = points[points < m]
    cum = np.zeros((len(inner) + 1, *product.shape[1:]))
    np.cumsum(np.add.reduceat(product, inner, axis=0), axis=0, out=cum[1:])
    return np.append(inner, m), cum


def conv_sums(
    x: np.ndarray, y: np.ndarray, kernel: int, dilation: int, pads: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(G, B) of the rows [u_t; 1] (column c·k + j, then 1) and targets ``y`` (N, O, L_out)
    of a stride-1 Conv over ``x`` (N, C, L), float64."""
    xp = np.pad(x, ((0, 0), (0, 0), pads))
    n, c, lp = xp.shape
    lout = lp - (kernel - 1) * dilation
    f = c * kernel
    xt = np.ascontiguousarray(xp.transpose(2, 1, 0))  # (L_p, C, N)
    xq = np.ascontiguousarray(xp.transpose(2, 0, 1))  # (L_p, N, C)
    g = np.empty((f + 1, f + 1))
    for delta in range(kernel):
        starts = np.arange(kernel - delta) * dilation
        points, cum = _lag_block(xt, xq, delta * dilation, starts, lout)
        at = np.searchsorted(points, starts)
        end = np.searchsorted(points, starts + lout)
        for i in range(kernel - delta):
            block = cum[end[i]] - cum[at[i]]
            g[i:f:kernel, i + delta : f : kernel] = block
            g[i + delta : f : kernel, i:f:kernel] = block.T
    sums = np.zeros((c, lp + 1))
    np.cumsum(xp.sum(axis=0), axis=1, out=sums[:, 1:])
    for i in range(kernel):
        g[i:f:kernel, f] = g[f, i:f:kernel] = sums[:, i * dilation + lout] - sums[:, i * dilation]
    g[f, f] = n * lout
    xs = np.ascontiguousarray(xp.transpose(1, 2, 0))  # (C, L_p, N): a window is a view
    ys = np.ascontiguousarray(y.transpose(2, 0, 1)).reshape(lout * n, -1)  # (L_out · N, O)
    b = np.empty((f + 1, y.shape[1]))
    for i in range(kernel):
        b[i:f:kernel] = xs[:, i * dilation : i * dilation + lout].reshape(c, -1) @ ys
    b[f] = y.sum(axis=(0, 2))
    return g, b

"""Streamed least squares for the consumer refits of ``compress.reconstruct`` (pure numpy).

A consumer is affine per output position: y = Wᵀ x̃ with x̃ = [x; 1] the input row
(1×1 Conv, Gemm, MatMul: the channels at one position; a Conv with kernel k and dilation
d: the C·k values x[c, t·s + j·d − pad] its output position t reads, its *unfolded* row).
Given rows X̃ of the pruned-and-refit upstream and targets Y of the original network,

    W* = argmin_W ‖Y − X̃ W‖² + λ ‖D(W − W₀)‖²  =  (G + λD)⁻¹ (B + λ D W₀),
    G = X̃ᵀX̃,  B = X̃ᵀY,  D = diag(1, …, 1, 0)  (the bias is not penalised)

with W₀ the consumer's pruned weights: λ → ∞ keeps them, λ = 0 is the plain refit. Only
G ((F + 1)², F = C·k) and B ((F + 1) × outputs) are kept, summed over batches, so memory
is O(channels² · kernel) whatever the number of samples. λ is chosen on held-out rows
(every ``HOLD_EVERY``-th sample): with G_v, B_v and Σ‖y‖² of those rows, the held-out
error of any W is tr(WᵀG_vW) − 2 tr(WᵀB_v) + Σ‖y‖², with no pass over the data; the
λ of ``RIDGE_GRID`` (times the mean diagonal of G, so it is scale-free) with the least
error is then refitted on all rows.

A depthwise Conv mixes nothing: channel c is corrected by a scale and a bias,
y_c ≈ a_c z_c + e_c (z: its output in the pruned model), from the five sums per channel.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "HOLD_EVERY",
    "RIDGE_GRID",
    "Depthwise",
    "Normal",
    "one_blas_thread",
    "row_chunks",
    "unfold",
]

HOLD_EVERY = 5  # sample i is held out for choosing λ when i % 5 == 4 (and n >= 10)
RIDGE_GRID = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
JITTER = 1e-10  # times the mean diagonal: a guard against exactly collinear inputs
ROW_BUDGET = 1 << 22  # floats of unfolded rows formed at once (32 MiB in float64)


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """numpy's BLAS on one thread while the refits run, where ``threadpoolctl`` is
    installed: beside onnxruntime's spinning threads, OpenBLAS on 2 threads made the
    Gram updates of a LITE model 28x slower (13 s → 0.47 s, Adiac, this 2-core machine)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # not a core dependency: correct, only slower
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


def unfold(x: np.ndarray, kernel: int, dilation: int, stride: int, pads: tuple[int, int]):
    """(N, C, L) → (N · L_out, C · kernel) rows, column c·kernel + j = x[c, t·s + j·d]."""
    x = np.pad(x, ((0, 0), (0, 0), pads))
    span = (kernel - 1) * dilation + 1
    win = np.lib.stride_tricks.sliding_window_view(x, span, axis=2)[:, :, ::stride, ::dilation]
    n, c, t, k = win.shape
    return win.transpose(0, 2, 1, 3).reshape(n * t, c * k)


def _with_one(rows: np.ndarray) -> np.ndarray:
    return np.concatenate([rows, np.ones((len(rows), 1), rows.dtype)], axis=1)


@dataclass
class _Sums:
    g: np.ndarray
    b: np.ndarray
    yy: float = 0.0
    rows: int = 0


@dataclass
class Normal:
    """The normal equations of one consumer, fit and held-out rows apart."""

    features: int  # F + 1 with the intercept column
    outputs: int
    intercept: bool = True
    parts: dict[bool, _Sums] = field(default_factory=dict)

    def _part(self, held: bool, g: np.ndarray | None = None) -> _Sums:
        if held not in self.parts:
            shape = (self.features, self.features) if g is None else g.shape
            self.parts[held] = _Sums(np.zeros(shape), np.zeros((shape[0], self.outputs)))
        return self.parts[held]

    def add(self, rows: np.ndarray, targets: np.ndarray, held: bool) -> None:
        """Add rows (R, F) and targets (R, outputs), both float64."""
        x = _with_one(rows) if self.intercept else rows
        s = self._part(held)
        s.g += x.T @ x
        s.b += x.T @ targets
        s.yy += float(np.einsum("ij,ij->", targets, targets))
        s.rows += len(x)

    def add_sums(self, g: np.ndarray, b: np.ndarray, yy: float, held: bool) -> None:
        """Add rows given by their own G and B (``conv_gram``) and Σ‖y‖² of their targets."""
        s = self._part(held, g)
        s.g += g
        s.b += b
        s.yy += yy
        s.rows += int(round(g[-1, -1]))

    def solve(self, prior: np.ndarray) -> tuple[np.ndarray, float]:
        """(W*, λ chosen): W* of shape (features, outputs) near ``prior`` (W₀)."""
        fit, held = self.parts.get(False), self.parts.get(True)
        if fit is None:
            fit, held = held, None
        scale = _scale(fit.g, self.intercept)
        lam = RIDGE_GRID[0]
        if held is not None and held.rows:
            fits = (
                _ridge(fit.g, fit.b, prior, r * scale, scale, self.intercept) for r in RIDGE_GRID
            )
            errors = [_error(w, held) for w in fits]
            lam = RIDGE_GRID[int(np.argmin(errors))]
        g = fit.g + (held.g if held is not None else 0)
        b = fit.b + (held.b if held is not None else 0)
        total = _scale(g, self.intercept)
        return _ridge(g, b, prior, lam * total, total, self.intercept), lam


def _scale(g: np.ndarray, intercept: bool) -> float:
    diag = np.diag(g)[:-1] if intercept and len(g) > 1 else np.diag(g)
    return float(diag.mean()) if diag.size and diag.mean() > 0 else 1.0


def _ridge(
    g: np.ndarray,
    b: np.ndarray,
    prior: np.ndarray,
    lam: float,
    scale: float,
    unpenalised: bool = True,
) -> np.ndarray:
    d = np.ones(len(g))
    if unpenalised:
        d[-1] = 0.0
    a = g + np.diag(lam * d + JITTER * scale)
    rhs = b + lam * d[:, None] * prior
    try:
        return np.linalg.solve(a, rhs)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(a, rhs, rcond=None)[0]


def _error(w: np.ndarray, s: _Sums) -> float:
    return float(np.einsum("ij,ij->", w, s.g @ w) - 2 * np.einsum("ij,ij->", w, s.b) + s.yy)


@dataclass
class Depthwise:
    """Per-channel sums for y_c ≈ a_c z_c + e_c over all positions of all samples."""

    channels: int
    sums: np.ndarray = field(init=False)  # rows: n, Σz, Σz², Σy, Σzy

    def __post_init__(self) -> None:
        self.sums = np.zeros((5, self.channels))

    def add(self, z: np.ndarray, y: np.ndarray) -> None:
        """z, y: (N, C, ...) float64, the pruned and the original outputs."""
        z, y = z.reshape(len(z), self.channels, -1), y.reshape(len(y), self.channels, -1)
        n = z.shape[0] * z.shape[2]
        terms = (np.full(self.channels, n), z.sum((0, 2)), (z * z).sum((0, 2)))
        self.sums += np.stack([*terms, y.sum((0, 2)), (z * y).sum((0, 2))])

    def solve(self) -> tuple[np.ndarray, np.ndarray]:
        """(a, e) per channel; a = 1, e = mean gap where z does not vary."""
        n, sz, szz, sy, szy = self.sums
        n = np.maximum(n, 1)
        var = szz / n - (sz / n) ** 2
        cov = szy / n - sz * sy / n**2
        flat = var <= 1e-12 * np.maximum(szz / n, 1e-30)
        a = np.where(flat, 1.0, cov / np.where(flat, 1.0, var))
        return a, sy / n - a * sz / n


def row_chunks(rows_per_sample: int, features: int) -> int:
    """Samples per chunk so one chunk's unfolded rows stay under ``ROW_BUDGET`` floats."""
    return max(1, ROW_BUDGET // max(1, rows_per_sample * features))

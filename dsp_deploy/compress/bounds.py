"""One-sided confidence bounds the compress gates stand on (stdlib math only).

A gate *certifies*: it passes only when the data rule out, at confidence c
(``--confidence``, one-sided), a rate above its threshold t. With z = Φ⁻¹(c)
(``statistics.NormalDist``; c = 0.95 → z = 1.645; c = 0.5 → z = 0, the bare point
estimate):

Disagreement rate, k of n held-out series whose argmax changed — the upper Wilson
score bound (Wilson 1927), the p at which the one-sided score test of p against
p̂ = k/n sits at z::

    U(k, n) = (p̂ + z²/2n + z·√(p̂(1 − p̂)/n + z²/4n²)) / (1 + z²/n)

Accuracy drop, paired: on each held-out series the original model is right or wrong
and so is the candidate; b series are newly wrong, c newly right, so the observed drop
is Δ̂ = (b − c)/n, an estimate of Δ = p_b − p_c. Its upper bound is Tango's score bound
(Tango 1998, Stat Med 17:891; recommended for paired proportions by Fagerland,
Lydersen & Laake 2013, Stat Med 33:2850): for a trial Δ₀ the constrained maximum
likelihood estimate of p_c is

    p̃_c = (√(B² − 4AC) − B) / 2A,   A = 2n,  B = −b − c + (2n − b + c)·Δ₀,  C = −c·Δ₀(1 − Δ₀)

and the score statistic T(Δ₀) = (b − c − nΔ₀) / √(n(2p̃_c + Δ₀(1 − Δ₀))) falls as Δ₀
rises; the bound is the Δ₀ > Δ̂ where T = −z (bisection). Only the discordant series
count: b = c = 0 gives T = −√(nΔ₀/(1 − Δ₀)), so the bound is z²/(n + z²) = U(0, n), the
same as the disagreement bound — with no change seen on n series, a rate up to
z²/(n + z²) cannot be ruled out. (Newcombe's hybrid interval, his method 10, was
rejected: with b = c = 0 its width depends on the accuracy and is zero at 50 %.)

Resolution and size: ``resolution(n) = U(0, n) = z²/(n + z²)``, the smallest threshold
any result on n series can certify (a drop under it "cannot be seen"). A threshold t
needs ``needed(t)`` = ⌈z²(1 − t)/t⌉ series (the least n with U(0, n) ≤ t); t = 0 can
be certified by no n unless z = 0. ``needed(t, events=k)`` is the least n at which k
events still pass.

Coverage: both bounds are asymptotic score bounds, close to nominal but not exact. At
zero events the Wilson bound sits at z²/(n + z²), where a true rate gives no event with
probability (1 − p)ⁿ ≈ e^(−z²) = 6.7 % at c = 0.95 (an exact bound would put 5 % there).
A model with a true 2 % of newly wrong series passes the 0.02 gate with probability
(exact binomial sums) 6.8 % at n = 133, 1.8 % at 200, 4.1 % at 400, 3.8 % at 1,000 and
4.5 % at 10,000; ``tests/test_compress_bounds.py`` checks it by simulation.
"""

from __future__ import annotations

import math
from statistics import NormalDist

__all__ = ["drop_upper", "needed", "resolution", "wilson_upper", "z_value"]

_BISECTIONS = 60  # halves [Δ̂, 1] to below 1e-17


def z_value(confidence: float) -> float:
    """z = Φ⁻¹(confidence), the one-sided normal quantile (0 at 0.5)."""
    return NormalDist().inv_cdf(confidence) if confidence > 0.5 else 0.0


def wilson_upper(events: int, n: int, confidence: float) -> float:
    """The upper Wilson bound U(k, n) of a rate (module docstring); 1 when n = 0."""
    if n <= 0:
        return 1.0
    z, p = z_value(confidence), events / n
    z2n = z * z / n
    spread = z * math.sqrt(p * (1 - p) / n + z2n / (4 * n))
    return min(1.0, (p + z2n / 2 + spread) / (1 + z2n))


def _tango_score(newly_wrong: int, newly_right: int, n: int, delta: float) -> float:
    """Tango's T(Δ₀) (module docstring), for Δ₀ strictly between Δ̂ and 1."""
    b, c = newly_wrong, newly_right
    a2, bb = 2 * n, -b - c + (2 * n - b + c) * delta
    cc = -c * delta * (1 - delta)
    p_c = (math.sqrt(max(bb * bb - 4 * a2 * cc, 0.0)) - bb) / (2 * a2)
    variance = n * (2 * p_c + delta * (1 - delta))
    return (b - c - n * delta) / math.sqrt(variance) if variance > 0 else -math.inf


def drop_upper(newly_wrong: int, newly_right: int, n: int, confidence: float) -> float:
    """Tango's upper score bound of the paired accuracy drop p_b − p_c (module
    docstring): ``newly_wrong`` series the candidate gets wrong that the original got
    right, ``newly_right`` the reverse, of ``n``. 1 when n = 0."""
    if n <= 0:
        return 1.0
    observed = (newly_wrong - newly_right) / n
    z = z_value(confidence)
    if z == 0 or observed >= 1:
        return observed
    low, high = observed, 1.0
    for _ in range(_BISECTIONS):
        mid = (low + high) / 2
        if _tango_score(newly_wrong, newly_right, n, mid) >= -z:
            low = mid
        else:
            high = mid
    return high


def resolution(n: int, confidence: float) -> float:
    """U(0, n) = z²/(n + z²): the smallest rate n series can rule out (1 when n = 0)."""
    z2 = z_value(confidence) ** 2
    return z2 / (n + z2) if n > 0 else 1.0


def needed(threshold: float, confidence: float, events: int = 0) -> int | None:
    """The least n with U(events, n) ≤ ``threshold``; None when no n has it (a zero
    threshold at z > 0)."""
    z2 = z_value(confidence) ** 2
    if threshold >= 1 or z2 == 0:
        return max(1, events)
    if threshold <= 0:
        return None
    n = max(1, math.ceil(z2 * (1 - threshold) / threshold), events)
    while wilson_upper(events, n, confidence) > threshold:  # U falls as n grows
        n = max(n + 1, int(n * 1.01))
    low = max(1, events)
    while low < n:  # the least such n in (low, n]
        mid = (low + n) // 2
        if wilson_upper(events, mid, confidence) <= threshold:
            n = mid
        else:
            low = mid + 1
    return n

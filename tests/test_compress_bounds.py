"""``compress.bounds``: the Wilson and Tango upper bounds, the sizes they need, coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsp_deploy.compress.bounds import drop_upper, needed, resolution, wilson_upper, z_value

Z95 = 1.6448536269514722  # Φ⁻¹(0.95)


def _wilson_by_hand(k: int, n: int, z: float) -> float:
    p = k / n
    return (p + z * z / (2 * n) + z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (
        1 + z * z / n
    )


def test_z_is_the_one_sided_normal_quantile() -> None:
    assert z_value(0.95) == pytest.approx(Z95, abs=1e-12)
    assert z_value(0.975) == pytest.approx(1.959963984540054, abs=1e-12)
    assert z_value(0.5) == 0.0


@pytest.mark.parametrize(
    ("k", "n", "upper"),
    # z²/(n + z²) at k = 0; the closed form evaluated by hand (_wilson_by_hand) else
    [(0, 50, Z95**2 / (50 + Z95**2)), (0, 12, 0.18398119474747), (1, 50, 0.08480529424831),
     (3, 20, 0.32182807567531), (10, 200, 0.08189183291821), (50, 50, 1.0)],
)  # fmt: skip
def test_wilson_upper_on_known_counts(k: int, n: int, upper: float) -> None:
    assert wilson_upper(k, n, 0.95) == pytest.approx(upper, abs=1e-12)
    assert wilson_upper(k, n, 0.95) == pytest.approx(_wilson_by_hand(k, n, Z95), abs=1e-12)


def test_wilson_upper_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for k, n in [(0, 7), (1, 50), (4, 133), (17, 400), (99, 100)]:
        # a one-sided 95% bound is the upper end of the two-sided 90% interval
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.90, method="wilson")
        assert wilson_upper(k, n, 0.95) == pytest.approx(ci.high, abs=1e-12)


def test_tango_matches_the_published_interval() -> None:
    # Cavo et al. 2012, a paired 2×2 table (59, 6; 16, 80): Tango's 95% interval of the
    # difference is -0.1240 to -0.0054 (Fagerland, Lydersen & Laake, Statistical Analysis
    # of Contingency Tables, ch. 8; the R package contingencytables' test-ch7/8 values).
    # Two-sided 95% = one-sided 97.5% at each end; the lower end is minus the upper bound
    # with the discordant counts swapped.
    assert drop_upper(6, 16, 161, 0.975) == pytest.approx(-0.0054, abs=5e-5)
    assert -drop_upper(16, 6, 161, 0.975) == pytest.approx(-0.1240, abs=5e-5)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 400).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n))))
def test_tango_with_nothing_newly_right_is_the_wilson_bound_of_newly_wrong(case) -> None:
    # c = 0: the constrained p_c is 0 above Δ̂ and T is the binomial score statistic
    n, b = case
    assert drop_upper(b, 0, n, 0.95) == pytest.approx(wilson_upper(b, n, 0.95), abs=1e-9)


def test_no_discordant_series_gives_the_resolution() -> None:
    for n in (12, 50, 133, 1000):
        assert drop_upper(0, 0, n, 0.95) == pytest.approx(resolution(n, 0.95), abs=1e-12)
        assert wilson_upper(0, n, 0.95) == pytest.approx(resolution(n, 0.95), abs=1e-15)
    assert round(100 * resolution(12, 0.95), 1) == 18.4
    assert round(100 * resolution(50, 0.95), 1) == 5.1


@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, 300).flatmap(
        lambda n: st.tuples(st.just(n), st.integers(0, n)).flatmap(
            lambda t: st.tuples(st.just(t[0]), st.just(t[1]), st.integers(0, t[0] - t[1]))
        )
    )
)
def test_drop_bound_is_above_the_estimate_and_monotone(case) -> None:
    n, b, c = case
    upper = drop_upper(b, c, n, 0.95)
    assert upper >= (b - c) / n - 1e-12 and upper <= 1.0
    assert drop_upper(b, c, n, 0.5) == pytest.approx((b - c) / n)  # z = 0: the estimate
    if b + c < n:
        assert drop_upper(b + 1, c, n, 0.95) >= upper - 1e-12  # one more newly wrong
        assert drop_upper(b, c + 1, n, 0.95) <= upper + 1e-12  # one more newly right


def test_needed_is_the_least_size_that_certifies() -> None:
    assert needed(0.02, 0.95) == 133 and needed(0.01, 0.95) == 268 and needed(0.05, 0.95) == 52
    for t, k in [(0.02, 0), (0.02, 1), (0.1, 3), (0.005, 2)]:
        n = needed(t, 0.95, events=k)
        assert wilson_upper(k, n, 0.95) <= t < wilson_upper(k, n - 1, 0.95)
    assert needed(0.02, 0.95, events=1) == 222
    assert needed(0.0, 0.95) is None and needed(0.0, 0.5) == 1  # zero: only the estimate


def _pass_rate(n: int, p_wrong: float, p_right: float, threshold: float, rng) -> float:
    counts = rng.multinomial(n, [p_wrong, p_right, 1 - p_wrong - p_right], size=4000)
    verdicts = {}
    passed = 0
    for b, c, _ in counts:
        key = (int(b), int(c))
        if key not in verdicts:
            verdicts[key] = drop_upper(key[0], key[1], n, 0.95) <= threshold
        passed += verdicts[key]
    return passed / len(counts)


@pytest.mark.parametrize("n", [133, 400, 2000])
def test_a_model_two_points_worse_passes_rarely(n: int) -> None:
    # The guarantee's statistical half: a true drop of exactly the 2-point threshold
    # (2% newly wrong, or 4% newly wrong and 2% newly right) passes at most about
    # 1 − confidence of the time; the score bounds are asymptotic, so allow 2 points.
    rng = np.random.default_rng(n)
    assert _pass_rate(n, 0.02, 0.0, 0.02, rng) <= 0.07
    assert _pass_rate(n, 0.04, 0.02, 0.02, rng) <= 0.07
    # ...and one that is fine passes most of the time once n can resolve it
    if n == 2000:
        assert _pass_rate(n, 0.005, 0.0, 0.02, rng) >= 0.95

"""The refit-aware ranking of ``--criterion auto`` (``compress.selection``): the greedy
elimination's errors are the optimal refits' errors, and a redundant channel goes first
whatever its variance."""

from __future__ import annotations

import numpy as np
import pytest

from dsp_deploy.compress.selection import _refit_losses, eliminate


def _joint_error(cov: np.ndarray, rows: np.ndarray, removed: list[int]) -> float:
    """min over W' of E‖W x − W' x_K‖²: tr(W_S (Σ_SS − Σ_SK Σ_KK⁻¹ Σ_KS) W_Sᵀ)."""
    keep = [p for p in range(cov.shape[0]) if p not in removed]
    s, k = np.ix_(removed, removed), np.ix_(removed, keep)
    schur = cov[s] - cov[k] @ np.linalg.solve(cov[np.ix_(keep, keep)], cov[k].T)
    w = rows[:, removed]
    return float(np.trace(w @ schur @ w.T))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_errors_added_sum_to_the_optimal_refits_error_of_the_removed_set(seed) -> None:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(6, 6))
    cov = mix @ mix.T + 0.1 * np.eye(6)
    rows = rng.normal(size=(5, 6))
    order, added = eliminate(cov, rows)
    assert sorted(order) == list(range(6))
    for k in range(1, 6):
        want = _joint_error(cov, rows, order[:k])
        assert np.sum(added[:k]) == pytest.approx(want, rel=1e-4)


def test_the_first_error_is_a_least_squares_refits_residual_on_samples() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4000, 4)) @ rng.normal(size=(4, 4))
    x -= x.mean(axis=0)
    rows = rng.normal(size=(3, 4))
    order, added = eliminate(x.T @ x / len(x), rows)
    keep = [p for p in range(4) if p != order[0]]
    target = x @ rows.T
    fit, *_ = np.linalg.lstsq(x[:, keep], target, rcond=None)
    residual = np.mean(np.sum((target - x[:, keep] @ fit) ** 2, axis=1))
    assert added[0] == pytest.approx(residual, rel=1e-4)


def test_a_copy_of_another_channel_goes_first_though_its_variance_is_the_largest() -> None:
    rng = np.random.default_rng(4)
    base = rng.normal(size=(2000, 3)) * [1.0, 1.0, 1.0]
    x = np.column_stack([base, 3 * base[:, 0]])  # channel 3 = 3 × channel 0: 9× the variance
    rows = np.ones((2, 4))
    cov = np.cov(x.T, bias=True)
    losses = _refit_losses(cov, rows)
    variance = x.var(axis=0) * np.sum(rows**2, axis=0)  # the score without refit
    assert np.argmax(variance) == 3
    assert np.argmin(losses) in (0, 3) and losses.min() < 1e-4 * losses.max()
    order, added = eliminate(cov, rows)
    assert np.all(np.diff(losses[order]) >= 0)  # monotone along the elimination
    assert np.all(losses[order] >= added)


@pytest.mark.parametrize(("compensation", "gram"), [("lstsq", True), ("mean", False)])
def test_auto_collects_gram_matrices_only_where_it_reconstructs(compensation, gram) -> None:
    from onnx_graphs import inputs, lite_like

    from dsp_deploy.compress.groups import find_groups
    from dsp_deploy.compress.pipeline import _measure
    from dsp_deploy.io import Calibration
    from dsp_deploy.options import CompressOptions

    model = lite_like()
    analysis = find_groups(model)
    opts = CompressOptions(criterion="auto", compensation=compensation)
    *_, stats = _measure(model, analysis, Calibration({"x": inputs(20)}, None), opts, 8)
    consumers = {c.tensor for c in analysis.consumers if c.groups == 1}
    assert set(stats.gram) == (consumers if gram else set())
    assert consumers

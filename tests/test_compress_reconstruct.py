"""Sequential reconstruction (``compress.reconstruct``): exact where the pruned channel is
a linear combination of kept ones, for every kind of consumer, the input untouched."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx_graphs import HEAD, Weights, as_float, build, inputs

from dsp_deploy.compress.conv_gram import conv_sums
from dsp_deploy.compress.groups import find_groups
from dsp_deploy.compress.lsq import Depthwise, Normal, unfold
from dsp_deploy.compress.plan import PruningPlan
from dsp_deploy.compress.prune import prune
from dsp_deploy.compress.reconstruct import reconstruct
from dsp_deploy.inference import run_model

LINEAR_SOURCE = "a = Conv <pads = [1, 1]> (x, c1_w, c1_b)\n"


def _combination(w: Weights) -> None:
    """Source c1 (3 channels) whose channel 2 is channel 0 + 2 · channel 1."""
    w.conv("c1", 3, 1, 3)
    w.values["c1_w"][2] = w.values["c1_w"][0] + 2 * w.values["c1_w"][1]
    w.values["c1_b"][2] = w.values["c1_b"][0] + 2 * w.values["c1_b"][1]


def _consumer_net(attrs: str, k: int) -> onnx.ModelProto:
    w = Weights(3)
    _combination(w)
    w.conv("c2", 4, 3, k)
    w.dense("fc", 4, 2)
    body = LINEAR_SOURCE + f"b = Conv <{attrs}> (a, c2_w, c2_b)\nh = Relu (b)\n"
    return build(body + HEAD, w.values)


def _gemm_net() -> onnx.ModelProto:
    w = Weights(4)
    _combination(w)
    w.dense("fc", 3, 2)
    body = (
        LINEAR_SOURCE
        + """
    g = GlobalAveragePool (a)
    f = Flatten (g)
    z = Gemm <transB = 1> (f, fc_w, fc_b)
    probabilities = Softmax <axis = 1> (z)
    """
    )
    return build(body, w.values)


def _matmul_net() -> onnx.ModelProto:
    w = Weights(6)
    _combination(w)
    w.dense("fc", 3, 2, trans_b=False)
    body = (
        LINEAR_SOURCE
        + """
    g = GlobalAveragePool (a)
    f = Flatten (g)
    m = MatMul (f, fc_w)
    z = Add (m, fc_b)
    probabilities = Softmax <axis = 1> (z)
    """
    )
    return build(body, w.values)


def _depthwise_net() -> onnx.ModelProto:
    w = Weights(5)
    _combination(w)
    w.conv("pw1", 4, 3, 1)
    w.conv("dw", 4, 1, 3)
    w.conv("pw2", 3, 4, 1)
    w.dense("fc", 3, 2)
    body = (
        LINEAR_SOURCE
        + """
    p = Conv (a, pw1_w, pw1_b)
    r = Relu (p)
    d = Conv <group = 4, dilations = [2], pads = [2, 2]> (r, dw_w, dw_b)
    q = Conv (d, pw2_w, pw2_b)
    h = Relu (q)
    """
    )
    return build(body + HEAD, w.values)


def _drop_combination(model: onnx.ModelProto) -> PruningPlan:
    """A plan removing channel 2 of the first Conv (and compensating nothing)."""
    analysis = find_groups(model)
    atom = next(s for s in analysis.sources if s.node == 0).atoms[2]
    unit = analysis.unit_of[atom]
    return PruningPlan(analysis, "dsp", (unit,), (), (0.0,) * len(analysis.units))


def _logits(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return run_model(model, {"x": x})[0]


def _check_exact(model: onnx.ModelProto, levels: int, kinds: tuple[str, ...]) -> None:
    x = inputs(40)
    before = model.SerializeToString()
    plan = _drop_combination(model)
    pruned = prune(model, plan)
    plain = pruned.SerializeToString()
    result = reconstruct(model, pruned, plan, {"x": x})
    assert model.SerializeToString() == before and pruned.SerializeToString() == plain
    assert tuple(r.kind for r in result.report.refits) == kinds
    assert result.report.levels == levels
    reference, fitted = _logits(model, x), _logits(result.model, x)
    assert np.abs(_logits(pruned, x) - reference).max() > 1e-3  # pruning alone changes them
    np.testing.assert_allclose(fitted, reference, atol=2e-5)
    x_new = inputs(8, seed=9)  # samples the fit never saw: exact too (a linear identity)
    np.testing.assert_allclose(_logits(result.model, x_new), _logits(model, x_new), atol=2e-5)


@pytest.mark.parametrize(
    ("attrs", "k"),
    [
        ("pads = [0, 0]", 1),
        ("pads = [1, 1]", 3),
        ("dilations = [2], pads = [2, 2]", 3),
        ("strides = [2], pads = [2, 1]", 4),
    ],
    ids=["pointwise", "k3", "dilated", "strided"],
)
def test_conv_consumer_is_refitted_exactly(attrs: str, k: int) -> None:
    _check_exact(_consumer_net(attrs, k), 2, ("conv", "gemm"))


def test_gemm_head_is_refitted_exactly() -> None:
    _check_exact(_gemm_net(), 1, ("gemm",))


def test_matmul_head_and_its_bias_add_are_refitted_exactly() -> None:
    _check_exact(_matmul_net(), 1, ("matmul",))


def test_depthwise_after_a_refit_is_corrected_in_its_level() -> None:
    _check_exact(_depthwise_net(), 4, ("conv", "depthwise", "conv", "gemm"))


def test_float16_model_keeps_its_dtype() -> None:
    model = as_float(_consumer_net("pads = [1, 1]", 3), np.float16)
    plan = _drop_combination(model)
    x = inputs(40).astype(np.float16)
    result = reconstruct(model, prune(model, plan), plan, {"x": x})
    dtypes = {numpy_helper.to_array(t).dtype for t in result.model.graph.initializer}
    assert dtypes == {np.dtype(np.float16)}
    np.testing.assert_allclose(
        _logits(result.model, x).astype(np.float32), _logits(model, x).astype(np.float32), atol=5e-3
    )


def test_nothing_removed_changes_nothing() -> None:
    model = _gemm_net()
    analysis = find_groups(model)
    plan = PruningPlan(analysis, "dsp", (), (), (0.0,) * len(analysis.units))
    result = reconstruct(model, prune(model, plan), plan, {"x": inputs(20)})
    assert result.report.refits == () and result.report.levels == 0


def test_unfold_matches_a_direct_convolution() -> None:
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(2, 3, 11)), rng.normal(size=(4, 3, 3))
    rows = unfold(x, 3, 2, 2, (2, 1))  # kernel 3, dilation 2, stride 2, pads (2, 1)
    padded = np.pad(x, ((0, 0), (0, 0), (2, 1)))
    direct = np.stack(
        [np.einsum("ock,nck->no", w, padded[:, :, t : t + 5 : 2]) for t in range(0, 10, 2)], 1
    )
    np.testing.assert_allclose(rows @ w.reshape(4, -1).T, direct.reshape(-1, 4))


@pytest.mark.parametrize(
    ("kernel", "dilation", "pads"), [(4, 2, (3, 4)), (3, 1, (0, 0)), (1, 1, (1, 0))]
)
def test_conv_gram_equals_the_gram_of_the_unfolded_rows(kernel, dilation, pads) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 3, 17))
    length = 17 + sum(pads) - (kernel - 1) * dilation
    y = rng.normal(size=(5, 2, length))
    g, b = conv_sums(x, y, kernel, dilation, pads)
    rows = unfold(x, kernel, dilation, 1, pads)
    rows = np.concatenate([rows, np.ones((len(rows), 1))], axis=1)
    np.testing.assert_allclose(g, rows.T @ rows, atol=1e-10)
    np.testing.assert_allclose(b, rows.T @ np.moveaxis(y, 1, 2).reshape(-1, 2), atol=1e-10)


def test_depthwise_correction_is_a_per_channel_affine_fit() -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(size=(6, 2, 9))
    z = np.stack([2 * y[:, 0] + 3, -y[:, 1]], axis=1)  # y0 = z0 / 2 - 1.5, y1 = -z1
    fit = Depthwise(2)
    fit.add(z, y)
    a, e = fit.solve()
    np.testing.assert_allclose(a, [0.5, -1.0])
    np.testing.assert_allclose(e, [-1.5, 0.0], atol=1e-12)


def test_ridge_is_chosen_on_held_out_rows() -> None:
    """Pure noise targets: the held-out error prefers the prior (the largest λ)."""
    rng = np.random.default_rng(2)
    fit = Normal(4, 1)
    for held in (False, True):
        fit.add(rng.normal(size=(30, 3)), rng.normal(size=(30, 1)), held)
    prior = np.zeros((4, 1))
    solved, lam = fit.solve(prior)
    assert lam >= 1.0
    exact = Normal(4, 1)
    x = rng.normal(size=(60, 3))
    for held in (False, True):
        exact.add(x, x @ [[1.0], [2.0], [3.0]] + 0.5, held)
    solved, lam = exact.solve(prior)
    assert lam == 0.0
    np.testing.assert_allclose(solved.ravel(), [1, 2, 3, 0.5], atol=1e-6)


def test_compress_with_reconstruct_beats_mean_on_held_out_agreement() -> None:
    from onnx_graphs import lite_like

    from dsp_deploy.compress.pipeline import compress
    from dsp_deploy.io import Calibration

    model = lite_like()
    x = inputs(60)
    calibration = Calibration({"x": x}, None)
    results = {
        comp: compress(model, calibration, criterion="dsp", compensation=comp, min_count=30)
        for comp in ("mean", "reconstruct")
    }
    assert results["reconstruct"].plan.remove == results["mean"].plan.remove
    assert results["mean"].plan.remove
    errors = {
        comp: np.abs(_logits(r.model, x) - _logits(model, x)).mean() for comp, r in results.items()
    }
    assert errors["reconstruct"] < errors["mean"]


def test_inception_modules_refit_in_levels_and_get_closer_than_the_mean_fold() -> None:
    """k = 9/5/3 convs after a bottleneck, a MaxPool branch, a residual Add: the refit
    follows the levels (bottleneck, then its convs) and beats the mean fold."""
    from onnx_graphs import L, inception_like

    from dsp_deploy.compress.calibrate import collect_stats
    from dsp_deploy.compress.graph import normalise
    from dsp_deploy.compress.pipeline import probe_tensors
    from dsp_deploy.compress.selection import prefix_plan, rank_units

    model = inception_like(dead_m1=(), dead_out=())
    x = inputs(60)
    analysis = find_groups(model)
    stats = collect_stats(model, {"x": x}, probe_tensors(analysis))
    ranking = rank_units(model, analysis, stats, L, {"x": x})
    plan = prefix_plan(analysis, stats, ranking, len(ranking.order) // 2, compensation="mean")
    pruned = prune(model, plan)
    result = reconstruct(model, pruned, plan, {"x": x})
    levels = {r.node: r.level for r in result.report.refits}
    names = {n.name: n for n in normalise(model).graph.node}  # nodes named as prune names them
    bottleneck = next(k for k, n in names.items() if n.input[:2] == ["o1", "bt_w"])
    after = [k for k, n in names.items() if n.input[:1] == ["bz"]]
    after = [k for k in after if k in levels]  # a branch may go whole
    assert bottleneck in levels and after
    assert all(levels[k] == levels[bottleneck] + 1 for k in after)
    reference = _logits(model, x)
    error = {
        m: np.abs(_logits(m_, x) - reference).mean()
        for m, m_ in (("mean", pruned), ("refit", result.model))
    }
    assert error["refit"] < 0.5 * error["mean"]

"""Conv normal equations from lag sums (``compress.conv_gram``): shared by the Convs
that read one tensor and summed over batches, they equal the Gram matrices of the
unfolded rows, and the level's fits equal fits fed those rows."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsp_deploy.compress.conv_gram import ConvShape, LagSums, conv_sums
from dsp_deploy.compress.lsq import Normal, unfold
from dsp_deploy.compress.refit import CONV, LevelFit, Target
from onnx_graphs import build


def _rows(x: np.ndarray, shape: ConvShape) -> np.ndarray:
    rows = unfold(x, shape.kernel, shape.dilation, 1, shape.pads)
    return np.concatenate([rows, np.ones((len(rows), 1))], axis=1)


def _targets(y: np.ndarray) -> np.ndarray:
    return np.moveaxis(y, 1, 2).reshape(-1, y.shape[1])


def _close(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())


INCEPTION = (ConvShape(9, 1, (4, 4)), ConvShape(5, 1, (2, 2)), ConvShape(3, 1, (1, 1)))
MIXED = (ConvShape(4, 2, (3, 4)), ConvShape(3, 1, (0, 0)), ConvShape(5, 3, (6, 6)))


@pytest.mark.parametrize("shapes", [INCEPTION, MIXED], ids=["inception", "dilated-valid"])
def test_shared_lag_sums_over_batches_equal_the_unfolded_gram(shapes) -> None:
    """Three Convs on one input, three batches: each (G, B) is the Gram of all its rows
    (MIXED: dilation 2 and 3 beside 1, no padding, lags longer than the series)."""
    rng = np.random.default_rng(0)
    length, batches = 11, [rng.normal(size=(n, 3, 11)) for n in (4, 1, 6)]
    sums = LagSums(shapes, 3, length)
    ys = [[rng.normal(size=(len(x), 2, s.out_length(length))) for s in shapes] for x in batches]
    for x, y in zip(batches, ys, strict=True):
        sums.add(x, y)
    for i, (g, b) in enumerate(sums.result()):
        rows = np.concatenate([_rows(x, shapes[i]) for x in batches])
        targets = np.concatenate([_targets(y[i]) for y in ys])
        _close(g, rows.T @ rows)
        _close(b, rows.T @ targets)


@settings(max_examples=25, deadline=None)
@given(
    kernel=st.integers(1, 6),
    dilation=st.integers(1, 3),
    pads=st.tuples(st.integers(0, 5), st.integers(0, 5)),
    length=st.integers(1, 14),
    seed=st.integers(0, 2**16),
)
def test_conv_sums_equal_the_unfolded_gram(kernel, dilation, pads, length, seed) -> None:
    shape = ConvShape(kernel, dilation, pads)
    if shape.out_length(length) < 1:
        return
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(3, 2, length)), rng.normal(size=(3, 2, shape.out_length(length)))
    g, b = conv_sums(x, y, kernel, dilation, pads)
    rows = _rows(x, shape)
    _close(g, rows.T @ rows)
    _close(b, rows.T @ _targets(y))


def test_one_conv_alone_and_shared_agree() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(5, 4, 30))
    ys = [rng.normal(size=(5, 3, s.out_length(30))) for s in INCEPTION]
    sums = LagSums(INCEPTION, 4, 30)
    sums.add(x, ys)
    for (g, b), y, s in zip(sums.result(), ys, INCEPTION, strict=True):
        alone = conv_sums(x, y, s.kernel, s.dilation, s.pads)
        _close(g, alone[0])
        _close(b, alone[1])


BOTTLENECK = """
    a = Conv <pads = [4, 4]> (x, wa_w)
    b = Conv <pads = [2, 2]> (x, wb_w)
    c = Conv (x, wc_w)
    cat = Concat <axis = 1> (a, b, c)
    pooled = GlobalAveragePool (cat)
    probabilities = Flatten (pooled)
"""


def test_a_levels_fits_share_the_lag_sums_and_equal_fits_fed_unfolded_rows() -> None:
    """Two k > 1 Convs and a 1×1 Conv read x (one group); the first keeps rows (1, 2) of the
    original's 3 outputs: the level's normal equations, fit and held-out parts, are
    those of the unfolded rows."""
    rng = np.random.default_rng(5)
    w = {"wa_w": rng.normal(size=(2, 2, 9)), "wb_w": rng.normal(size=(2, 2, 5)),
         "wc_w": rng.normal(size=(2, 2, 1))}  # fmt: skip
    graph = ir.from_proto(
        build(BOTTLENECK, {k: v.astype(np.float32) for k, v in w.items()}, classes=6)
    )
    for i, node in enumerate(graph.graph):
        node.name = f"n{i}"
    nodes = {n.name: n for n in graph.graph}
    names = list(nodes)
    level = [Target(names[0], CONV, "x", "a", (1, 2), 1), Target(names[1], CONV, "x", "b", (), 1),
             Target(names[2], CONV, "x", "c", (), 1)]  # fmt: skip
    fits = LevelFit(nodes, level)
    assert fits.groups == {"x": [0, 1, 2]}
    shapes = (ConvShape(9, 1, (4, 4)), ConvShape(5, 1, (2, 2)), ConvShape(1, 1, (0, 0)))
    xs = [rng.normal(size=(n, 2, 12)) for n in (6, 4)]
    ys = [[rng.normal(size=(len(x), o, 12)) for o in (3, 2, 2)] for x in xs]
    helds = [np.arange(6) % 2 == 0, np.zeros(4, bool)]
    for x, y, held in zip(xs, ys, helds, strict=True):
        fits.add([x, x, x], y, held)
    rows_of = ((1, 2), (0, 1), (0, 1))
    for i, fit in enumerate(fits.fits()):
        want = Normal(fit.features, fit.outputs)
        for x, y, held in zip(xs, ys, helds, strict=True):
            for part in (True, False):
                mask = held if part else ~held
                if mask.any():
                    rows = _rows(x[mask], shapes[i])[:, :-1]
                    want.add(rows, _targets(y[i][mask][:, list(rows_of[i])]), part)
        assert fit.parts.keys() == want.parts.keys()
        for part, s in fit.parts.items():
            _close(s.g, want.parts[part].g)
            _close(s.b, want.parts[part].b)
            assert s.rows == want.parts[part].rows
            assert s.yy == pytest.approx(want.parts[part].yy, rel=1e-12)

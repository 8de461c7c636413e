"""A weight shared by two Convs: kept shared when both shrink alike, copied when not.

One topology: x → Relu → two Convs reading the same W and B (one on Relu(x), the other,
dilated, on Relu(x) or on −Relu(x)) → Concat → Relu → 1×1 Conv → head. W's row 1 is
positive and row 2 negative with negative biases, so on Relu(x) ≥ 0 row 2 is dead and on
−Relu(x) ≤ 0 row 1 is: with ``alike`` both Convs lose row 2 (one new W and B, read by
both); otherwise one loses row 2 and the other row 1 (two copies under fresh names).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.reference
import pytest

from dsp_deploy.compress.pipeline import CompressResult, compress
from dsp_deploy.compress.verify import compare
from dsp_deploy.cost import model_cost
from dsp_deploy.inference import run_model
from dsp_deploy.io import Calibration

sys.path.insert(0, str(Path(__file__).parent))
import onnx_graphs as G  # noqa: E402

FRESH = {"x": G.inputs(7, seed=99)}


def shared_conv(alike: bool) -> onnx.ModelProto:
    w = G.Weights(0)
    rng = np.random.default_rng(3)
    weight, bias = rng.normal(0, 0.5, (4, 1, 3)), rng.normal(0.1, 0.05, 4)
    weight[1], bias[1] = np.abs(weight[1]), -0.01
    weight[2], bias[2] = -np.abs(weight[2]), -0.02
    w.tensor("s_w", weight)
    w.tensor("s_b", bias)
    w.conv("pw", 4, 8, 1)
    w.dense("fc", 4, 2)
    body = f"""
    xp = Relu (x)
    xn = Neg (xp)
    a = Conv <pads = [1, 1]> (xp, s_w, s_b)
    b = Conv <pads = [2, 2], dilations = [2]> ({"xp" if alike else "xn"}, s_w, s_b)
    ra = Relu (a)
    rb = Relu (b)
    c = Concat <axis = 1> (ra, rb)
    p = Conv (c, pw_w, pw_b)
    h = Relu (p)
    """
    return G.build(body + G.HEAD, w.values)


def compressed(alike: bool) -> tuple[onnx.ModelProto, CompressResult]:
    """The model and its compression, checked against the original on fresh inputs."""
    model = shared_conv(alike)
    result = compress(model, Calibration({"x": G.inputs(64)}, None), holdout=0)
    assert result.verified
    out = result.model
    onnx.checker.check_model(out, full_check=True)
    expected, got = run_model(model, FRESH), run_model(out, FRESH)
    assert compare(expected, got, atol=1e-6, rtol=0.0).within_tolerance
    reference = onnx.reference.ReferenceEvaluator(out).run(None, FRESH)
    np.testing.assert_allclose(reference[0], got[0], rtol=1e-5, atol=1e-6)
    return model, result


def conv_inputs(model: onnx.ModelProto) -> list[tuple[str, ...]]:
    """(W, B) names of the two Convs reading the shared tensors, in graph order."""
    return [tuple(n.input[1:]) for n in model.graph.node if n.op_type == "Conv"][:2]


def dims(model: onnx.ModelProto) -> dict[str, list[int]]:
    return {t.name: list(t.dims) for t in model.graph.initializer}


def test_convs_that_shrink_alike_keep_one_shared_weight() -> None:
    model, result = compressed(alike=True)
    out = result.model
    (first, second) = conv_inputs(out)
    assert first == second == ("s_w_pruned", "s_b_pruned")
    assert {k: v for k, v in dims(out).items() if k.startswith("s_")} == {
        "s_w_pruned": [3, 1, 3],
        "s_b_pruned": [3],
    }
    # 12 + 4 shared params become 9 + 3 (counted once); the 1×1 Conv loses 2 of 8 inputs
    assert (model_cost(model).params, model_cost(out).params) == (62, 62 - 4 - 8)


def test_convs_that_shrink_differently_get_a_copy_each() -> None:
    model, result = compressed(alike=False)
    out = result.model
    (first, second) = conv_inputs(out)
    assert first == ("s_w_pruned", "s_b_pruned")
    assert second == ("s_w_pruned2", "s_b_pruned2")
    source = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}["s_w"]
    written = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    np.testing.assert_array_equal(written["s_w_pruned"], source[[0, 1, 3]])
    np.testing.assert_array_equal(written["s_w_pruned2"], source[[0, 2, 3]])
    assert model_cost(out).params == 62 - 16 + 2 * 12 - 8


@pytest.mark.parametrize(
    ("alike", "after"),
    # a shared tensor of n elements read by 2 Convs: n // 2 each, the odd one to the first
    [
        (True, {"Conv_2": (6 + 2, 5 + 2), "Conv_3": (6 + 2, 4 + 1)}),
        (False, {"Conv_2": (6 + 2, 12), "Conv_3": (6 + 2, 12)}),
    ],
)
def test_each_reader_of_a_shared_weight_is_shown_its_share(alike: bool, after: dict) -> None:
    model, result = compressed(alike)
    before_cost, after_cost = model_cost(model), model_cost(result.model)
    old = {n.name: n.params for n in before_cost.per_node}
    new = {n.name: n.params for n in after_cost.per_node}
    assert {name: (old[name], new[name]) for name in after} == after
    assert {r.name: r.params for r in result.layers if r.name in after} == after
    assert result.params == (before_cost.params, after_cost.params)
    assert sum(n.params for n in before_cost.per_node) == before_cost.params
    assert sum(n.params for n in after_cost.per_node) == after_cost.params

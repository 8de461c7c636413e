"""Level passes from a stored frontier (``compress.checkpoint``): the frontier of a small
graph as a literal, and passes from it equal to runs of the whole model, bit for bit."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import numpy_helper

from dsp_deploy.compress import checkpoint
from dsp_deploy.compress.checkpoint import Checkpointed, cut, frontiers
from dsp_deploy.inference import batches, run_model

# c2 is refitted at level 1 (it reads r1), c3 and c4 at level 2 (they read r2 and a).
CHAIN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 1, 12] x) => (float[N, 3, 12] out) {
    a = Conv <pads = [1, 1]> (x, w1)
    r1 = Relu (a)
    b = Conv <pads = [1, 1]> (r1, w2)
    r2 = Relu (b)
    c = Conv <pads = [1, 1]> (r2, w3)
    d = Conv (a, w4)
    out = Add (c, d)
}
"""


def _chain() -> ir.Model:
    model = onnx.parser.parse_model(CHAIN)
    rng = np.random.default_rng(0)
    shapes = {"w1": (3, 1, 3), "w2": (3, 3, 3), "w3": (3, 3, 3), "w4": (3, 3, 1)}
    model.graph.initializer.extend(
        numpy_helper.from_array(rng.normal(size=s).astype(np.float32), k) for k, s in shapes.items()
    )
    for i, node in enumerate(model.graph.node):
        node.name = f"n{i}"
    return ir.from_proto(model)


def _run(model: ir.Model, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return run_model(ir.to_proto(model), feed)


SEEDS = {"n2": 1, "n4": 2, "n5": 2}  # b, c, d by node name
NAMES = {"r1": 1, "r2": 2, "a": 2}


def test_frontier_is_what_later_levels_read_from_nodes_no_refit_can_change() -> None:
    assert frontiers(_chain(), SEEDS, NAMES, 2) == (("a", "r1"), ())


def test_cut_from_sources_keeps_only_the_nodes_between() -> None:
    model = _chain()
    x = np.random.default_rng(1).normal(size=(4, 1, 12)).astype(np.float32)
    before = ir.to_proto(model).SerializeToString()
    (r1,) = _run(cut(model, ["r1"]), {"x": x})
    part = cut(model, ["r2"], {"r1": r1})
    assert [n.op_type for n in part.graph] == ["Conv", "Relu"]
    assert "r1" in [i.name for i in part.graph.inputs]
    assert list(part.graph.initializers) == ["w2"]
    (whole,) = _run(cut(model, ["r2"]), {"x": x})
    (from_r1,) = _run(part, {"x": x, "r1": r1})
    np.testing.assert_array_equal(from_r1, whole)
    assert ir.to_proto(model).SerializeToString() == before  # the input is not changed


def _set(model: ir.Model, name: str, value: np.ndarray) -> None:
    model.graph.initializers[name].const_value = ir.tensor(value.astype(np.float32), name=name)


@pytest.mark.parametrize("budget", [None, 0], ids=["stored", "over-budget"])
def test_passes_from_the_frontier_equal_whole_model_runs(budget) -> None:
    """Level 1 fetches r1 and keeps the frontier; b's weights change (its refit); level
    2's pass from the frontier gives exactly what the changed whole model gives."""
    model = _chain()
    x = {"x": np.random.default_rng(2).normal(size=(10, 1, 12)).astype(np.float32)}
    keeps = frontiers(model, SEEDS, NAMES, 2)
    side = Checkpointed(3, None, budget)
    side.begin(model, ["r1"], keeps[0])
    first = [side.batch(b, feed)[0] for b, feed in enumerate(batches(x, 4))]
    side.end()
    assert [set(s) for s in side.stored] == [set() if budget == 0 else {"a", "r1"}] * 3
    np.testing.assert_array_equal(np.concatenate(first), _run(cut(model, ["r1"]), x)[0])
    _set(model, "w2", np.full((3, 3, 3), 0.25))
    side.begin(model, ["r2", "a"], keeps[1])
    second = [side.batch(b, feed) for b, feed in enumerate(batches(x, 4))]
    side.end()
    whole = _run(cut(model, ["r2", "a"]), x)
    for got, want in zip(zip(*second, strict=True), whole, strict=True):
        np.testing.assert_array_equal(np.concatenate(got), want)


def test_reconstruct_from_frontiers_equals_reconstruct_from_the_input(monkeypatch) -> None:
    """Inception-like modules: the refitted weights with stored frontiers are those of
    passes that all start at the input (a budget of 0 stores nothing)."""
    from onnx_graphs import L, inception_like, inputs

    from dsp_deploy.compress.calibrate import collect_stats
    from dsp_deploy.compress.groups import find_groups
    from dsp_deploy.compress.pipeline import probe_tensors
    from dsp_deploy.compress.prune import prune
    from dsp_deploy.compress.reconstruct import reconstruct
    from dsp_deploy.compress.selection import prefix_plan, rank_units

    model = inception_like(dead_m1=(), dead_out=())
    x = {"x": inputs(60)}
    analysis = find_groups(model)
    stats = collect_stats(model, x, probe_tensors(analysis))
    ranking = rank_units(model, analysis, stats, L, x)
    plan = prefix_plan(analysis, stats, ranking, len(ranking.order) // 2, compensation="mean")
    pruned = prune(model, plan)
    kept: list[int] = []
    end = Checkpointed.end

    def counted(self: Checkpointed) -> None:
        end(self)
        kept.append(sum(len(s) for s in self.stored))

    monkeypatch.setattr(Checkpointed, "end", counted)
    stored = reconstruct(model, pruned, plan, x, batch_size=16)
    assert any(kept)  # some level passes did start from a stored frontier
    monkeypatch.setattr(checkpoint, "BUDGET", 0)
    kept.clear()
    plain = reconstruct(model, pruned, plan, x, batch_size=16)
    assert kept and not any(kept)
    assert stored.report == plain.report and stored.report.levels == 3
    weights = [{t.name: numpy_helper.to_array(t) for t in m.model.graph.initializer}
               for m in (stored, plain)]  # fmt: skip
    assert weights[0].keys() == weights[1].keys()
    for name, value in weights[0].items():
        np.testing.assert_array_equal(value, weights[1][name], err_msg=name)


SPLIT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 2] out) {
    p1, p2 = Split <axis = 1> (x)
    out = Add (p1, p2)
}
"""


def test_a_source_that_a_kept_node_also_makes_is_recomputed_not_fed() -> None:
    model = ir.from_proto(onnx.parser.parse_model(SPLIT))
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    part = cut(model, ["p2"], {"p1": x[:, :2]})
    assert [i.name for i in part.graph.inputs] == ["x"]
    (p2,) = _run(part, {"x": x})
    np.testing.assert_array_equal(p2, x[:, 2:])


UPTO = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3] x) => (float[2, 3] out) <float[3, 3] w = {1., 0., 2., 0., 1., 0., 3., 0., 1.}> {
    a = MatMul(x, w)
    b = Relu(a)
    c = Sigmoid(x)
    d = Add(b, c)
    out = Neg(d)
}
"""


def test_cut_from_the_input_keeps_only_the_nodes_the_names_need_and_their_values() -> None:
    proto = onnx.parser.parse_model(UPTO)
    model = ir.from_proto(proto)
    part = cut(model, ["b"])
    assert [n.op_type for n in part.graph] == ["MatMul", "Relu"]
    assert [o.name for o in part.graph.outputs] == ["b"]
    assert list(part.graph.initializers) == ["w"]
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    (got,) = _run(part, {"x": x})
    np.testing.assert_array_equal(
        got, np.maximum(x @ numpy_helper.to_array(proto.graph.initializer[0]), 0)
    )
    both = cut(model, ["c", "b"])
    assert {n.op_type for n in both.graph} == {"MatMul", "Relu", "Sigmoid"}
    assert [o.name for o in both.graph.outputs] == ["c", "b"]
    whole = cut(model, ["x"])  # no node makes it: the whole model, x an output too
    assert len(whole.graph) == 5
    assert [o.name for o in whole.graph.outputs] == ["out", "x"]


def test_cut_to_a_name_the_graph_lacks_is_a_model_error() -> None:
    from dsp_deploy.errors import ModelError

    with pytest.raises(ModelError, match="no value named 'nope'"):
        cut(ir.from_proto(onnx.parser.parse_model(UPTO)), ["b", "nope"])

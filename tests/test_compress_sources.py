"""Whole dead sources and branches go; a stage (a consumer's input) never empties.

"Never empty a layer" is about the channels a mixing consumer reads, not about each
producing Conv: LITE exports its hand-crafted filters as 1-channel Convs → Concat, and
a branch whose channels are all dead must disappear with its Concat edge.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.reference

from dsp_deploy.compress.groups import ChannelGroup, find_groups
from dsp_deploy.compress.pipeline import compress
from dsp_deploy.compress.verify import compare
from dsp_deploy.inference import run_model
from dsp_deploy.io import Calibration

sys.path.insert(0, str(Path(__file__).parent))
import onnx_graphs as G  # noqa: E402

X = Calibration({"x": G.inputs(64)}, None)


def _nodes(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {n.name: n for n in model.graph.node}


def _dims(model: onnx.ModelProto, node: onnx.NodeProto, k: int) -> list[int]:
    return list(next(t.dims for t in model.graph.initializer if t.name == node.input[k]))


def test_each_one_channel_filter_is_its_own_group() -> None:
    assert find_groups(G.hybrid_sources()).groups == (
        ChannelGroup(0, ("Conv_0",), 3, ("Conv_10",), 0, None),
        ChannelGroup(1, ("Conv_1",), 2, ("Conv_10",), 0, None),
        ChannelGroup(2, ("Conv_2",), 1, ("Conv_10",), 0, None),
        ChannelGroup(3, ("Conv_3",), 1, ("Conv_10",), 0, None),
        ChannelGroup(4, ("Conv_4",), 1, ("Conv_10",), 0, None),
        ChannelGroup(5, ("Conv_10",), 3, ("Gemm_14",), 0, None),
    )


def test_dead_branch_and_dead_filter_are_deleted_with_their_concat_edges() -> None:
    model = G.hybrid_sources(dead=(3, 4, 6))
    result = compress(model, X, holdout=0.0)
    out = result.model
    assert result.verified and result.decision.within_tolerance
    nodes = _nodes(out)
    assert "Conv_1" not in nodes and "Conv_3" not in nodes  # branch cb, filter hy1
    assert {"Conv_0", "Conv_2", "Conv_4"} <= nodes.keys()
    assert list(nodes["Concat_5"].input) == ["h0", "h2"]
    assert list(nodes["Concat_7"].input) == ["a", "hr"]
    assert _dims(out, nodes["BatchNormalization_8"], 1) == [5]
    assert _dims(out, nodes["Conv_10"], 1) == [3, 5, 1]
    assert {r.name: r.channels for r in result.layers if r.channels[1] < r.channels[0]} == {
        "Conv_1": (2, 0),
        "Conv_3": (1, 0),
    }
    onnx.checker.check_model(out, full_check=True)
    fresh = {"x": G.inputs(9, seed=42)}
    expected = run_model(model, fresh)
    assert compare(expected, run_model(out, fresh), atol=1e-6, rtol=1e-5).within_tolerance
    ref = onnx.reference.ReferenceEvaluator(out).run(None, fresh)
    np.testing.assert_allclose(ref[0], expected[0], rtol=1e-5, atol=1e-6)


def test_a_stage_keeps_one_channel_when_everything_is_dead() -> None:
    model = G.hybrid_sources(dead=tuple(range(8)))
    result = compress(model, X, holdout=0.0)
    assert result.verified
    kept = [r for r in result.layers if r.name != "Conv_10" and r.channels[1] > 0]
    assert [r.channels[1] for r in kept] == [1]
    assert len(_nodes(result.model)["Conv_10"].input) == 3
    # With its input constant, Conv_10's outputs are constants too: two fold into the
    # head's bias, one stays so the head still reads a channel.
    assert _dims(result.model, _nodes(result.model)["Conv_10"], 1) == [1, 1, 1]
    assert result.decision.within_tolerance


def test_all_three_filters_dead_removes_their_concat_chain() -> None:
    model = G.hybrid_sources(dead=(5, 6, 7))
    out = compress(model, X, holdout=0.0).model
    nodes = _nodes(out)
    assert not {"Conv_2", "Conv_3", "Conv_4", "Concat_5", "Relu_6"} & nodes.keys()
    assert list(nodes["Concat_7"].input) == ["a", "b"]
    onnx.checker.check_model(out, full_check=True)

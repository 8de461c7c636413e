"""One topology per test: the exact channel groups, then dead-channel pruning end to end."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from dsp_deploy.compress.calibrate import collect_stats
from dsp_deploy.compress.groups import ChannelGroup, find_groups
from dsp_deploy.compress.pipeline import probe_tensors
from dsp_deploy.compress.plan import make_plan
from dsp_deploy.compress.prune import prune
from dsp_deploy.compress.verify import compare
from dsp_deploy.inference import run_model

sys.path.insert(0, str(Path(__file__).parent))
import onnx_graphs as G  # noqa: E402

X = G.inputs(48)


def dead_prune(model: onnx.ModelProto):
    """(pruned model, removed channels per source) under the dead criterion; asserts parity."""
    analysis = find_groups(model)
    stats = collect_stats(model, {"x": X}, probe_tensors(analysis), batch_size=16)
    plan = make_plan(analysis, stats, criterion="dead")
    pruned = prune(model, plan)
    onnx.checker.check_model(pruned, full_check=True)
    report = compare(run_model(model, {"x": X}), run_model(pruned, {"x": X}), atol=1e-6, rtol=1e-5)
    assert report.within_tolerance and report.agreement == 1.0
    removed = plan.removed_atoms
    per_source = {
        s.label: tuple(k for k, a in enumerate(s.atoms) if a in removed)
        for s in analysis.sources
        if s.node >= 0
    }
    return pruned, per_source


def test_chain() -> None:
    assert find_groups(G.chain()).groups == (
        ChannelGroup(0, ("Conv_0",), 4, ("Conv_2",), 0, None),
        ChannelGroup(1, ("Conv_2",), 3, ("Gemm_6",), 0, None),
    )
    pruned, removed = dead_prune(G.chain(dead1=(1,), dead2=(2,)))
    assert removed == {"Conv_0": (1,), "Conv_2": (2,)}
    weights = {t.name: t.dims for t in pruned.graph.initializer}
    assert [weights[n.input[1]] for n in pruned.graph.node if n.op_type == "Conv"] == [
        [3, 1, 3],
        [2, 3, 3],
    ]


def test_concat_offsets() -> None:
    assert find_groups(G.concat()).groups == (
        ChannelGroup(0, ("Conv_0",), 3, ("Conv_4",), 0, None),
        ChannelGroup(1, ("Conv_1",), 2, ("Conv_4",), 0, None),
        ChannelGroup(2, ("Conv_4",), 4, ("Gemm_8",), 0, None),
    )
    pruned, removed = dead_prune(G.concat(dead_a=(0,), dead_b=(1,)))
    assert removed == {"Conv_0": (0,), "Conv_1": (1,), "Conv_4": ()}
    pointwise = next(n for n in pruned.graph.node if n.name == "Conv_4")
    w = {t.name: t for t in pruned.graph.initializer}[pointwise.input[1]]
    assert list(w.dims) == [4, 3, 1]


def test_residual_add_ties_both_convs() -> None:
    assert find_groups(G.residual()).groups == (
        ChannelGroup(0, ("Conv_0", "Conv_2"), 4, ("Conv_2", "Gemm_7"), 0, None),
    )
    _, removed = dead_prune(G.residual(dead=(2,)))
    assert removed == {"Conv_0": (2,), "Conv_2": (2,)}


def test_depthwise_shrinks_with_its_input() -> None:
    assert find_groups(G.depthwise()).groups == (
        ChannelGroup(0, ("Conv_0",), 4, ("Conv_4",), 0, None),
        ChannelGroup(1, ("Conv_4",), 3, ("Gemm_8",), 0, None),
    )
    pruned, removed = dead_prune(G.depthwise(dead=(1, 3)))
    assert removed == {"Conv_0": (1, 3), "Conv_4": ()}
    dw = next(n for n in pruned.graph.node if n.name == "Conv_3")
    assert onnx.helper.get_attribute_value(next(a for a in dw.attribute if a.name == "group")) == 2


def test_grouped_conv_is_a_source_and_a_consumer() -> None:
    # Formerly pinned; tests/test_compress_grouped.py has what each case removes.
    assert find_groups(G.grouped()).groups == (
        ChannelGroup(0, ("Conv_0",), 4, ("Conv_2",), 0, None),
        ChannelGroup(1, ("Conv_2",), 4, ("Gemm_6",), 0, None),
    )
    _, removed = dead_prune(G.grouped(dead1=(0, 2)))
    assert removed == {"Conv_0": (0, 2), "Conv_2": ()}


@pytest.mark.parametrize("trans_b", [False, True])
def test_reduce_mean_gemm_head(trans_b: bool) -> None:
    assert find_groups(G.gemm_head(trans_b)).groups == (
        ChannelGroup(0, ("Conv_0",), 4, ("Gemm_3",), 0, None),
    )
    pruned, removed = dead_prune(G.gemm_head(trans_b, dead=(0, 2)))
    assert removed == {"Conv_0": (0, 2)}
    gemm = next(n for n in pruned.graph.node if n.op_type == "Gemm")
    w = {t.name: t for t in pruned.graph.initializer}[gemm.input[1]]
    assert list(w.dims) == ([3, 2] if trans_b else [2, 3])


def test_flatten_matmul_head() -> None:
    assert find_groups(G.flatten_matmul()).groups == (
        ChannelGroup(0, ("Conv_0",), 3, ("MatMul_4",), 0, None),
    )
    _, removed = dead_prune(G.flatten_matmul(dead=(1,)))
    assert removed == {"Conv_0": (1,)}


def test_dynamo_pool_head_keeps_the_channel_axis_and_rewrites_the_reshape() -> None:
    assert find_groups(G.dynamo_pool_head()).groups == (
        ChannelGroup(0, ("Conv_0",), 4, ("Gemm_6",), 0, None),
    )
    pruned, removed = dead_prune(G.dynamo_pool_head(dead=(1, 2)))
    assert removed == {"Conv_0": (1, 2)}
    reshape = next(n for n in pruned.graph.node if n.op_type == "Reshape")
    shape = {t.name: t for t in pruned.graph.initializer}[reshape.input[1]]
    assert onnx.numpy_helper.to_array(shape).tolist() == [-1, 2]


def test_ensemble_members_are_independent() -> None:
    assert find_groups(G.ensemble()).groups == (
        ChannelGroup(0, ("Conv_0",), 3, ("Gemm_4",), 0, None),
        ChannelGroup(1, ("Conv_6",), 3, ("Gemm_10",), 0, None),
    )
    _, removed = dead_prune(G.ensemble(dead1=(0,), dead2=(2,)))
    assert removed == {"Conv_0": (0,), "Conv_6": (2,)}


def test_unknown_op_pins_with_reason() -> None:
    reason = "LpNormalization_2 (LpNormalization): LpNormalization is not in the channel-flow table"
    assert find_groups(G.pinned()).groups == (ChannelGroup(0, ("Conv_0",), 4, (), 4, reason),)
    _, removed = dead_prune(G.pinned())
    assert removed == {"Conv_0": ()}


def test_constant_channel_folds_into_head_bias() -> None:
    pruned, removed = dead_prune(G.constant_channel())
    assert removed == {"Conv_0": (1,)}
    gemm = next(n for n in pruned.graph.node if n.op_type == "Gemm")
    assert gemm.input[2].endswith("_pruned")  # the bias absorbed W[:, 1] · 0.7


def test_graph_output_pins_its_channels() -> None:
    model = G.chain()
    model.graph.output.append(onnx.helper.make_tensor_value_info("r", onnx.TensorProto.FLOAT, None))
    group = find_groups(model).groups[0]
    assert (group.pinned, group.blocked_by) == (4, "reaches graph output 'r'")


def test_auto_pad_is_normalised_to_explicit_pads() -> None:
    model = G.chain()
    conv = model.graph.node[0]
    del conv.attribute[:]
    conv.attribute.append(onnx.helper.make_attribute("auto_pad", "SAME_UPPER"))
    pruned, removed = dead_prune(model)
    conv = pruned.graph.node[0]
    assert {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute} == {"pads": [1, 1]}
    assert removed == {"Conv_0": (1,), "Conv_2": (2,)}
    np.testing.assert_allclose(
        run_model(model, {"x": X})[0], run_model(G.chain(), {"x": X})[0], atol=1e-6
    )

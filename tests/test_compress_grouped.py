"""Grouped Convs (1 < group, not depthwise) and MatMul heads (issue #4).

Grouped Conv, one topology per case (``rules`` has the algebra): outputs go in equal
numbers per group, input blocks shrink equally, a group whose inputs and outputs are
all dead goes whole; anything else is kept and the plan says why. MatMul heads: a
constant or near-dead channel folds into the ``Add`` after the MatMul, or the MatMul
becomes a Gemm with a bias. Every pruned graph is checked against the original on
fresh inputs with onnxruntime and with ``onnx.reference``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.reference
import pytest

from dsp_deploy.compress.calibrate import collect_stats
from dsp_deploy.compress.groups import ChannelGroup, find_groups
from dsp_deploy.compress.pipeline import compress, probe_tensors
from dsp_deploy.compress.plan import PruningPlan, make_plan
from dsp_deploy.compress.prune import prune
from dsp_deploy.compress.rules import Blocks
from dsp_deploy.compress.verify import compare
from dsp_deploy.inference import run_model
from dsp_deploy.io import Calibration

sys.path.insert(0, str(Path(__file__).parent))
import onnx_graphs as G  # noqa: E402

X = G.inputs(48)
FRESH = {"x": G.inputs(7, seed=99)}
BALANCE = "keeps the groups of Conv_2 equal"


def dead_plan(model: onnx.ModelProto, **options) -> PruningPlan:
    analysis = find_groups(model)
    stats = collect_stats(model, {"x": X}, probe_tensors(analysis), batch_size=16)
    return make_plan(analysis, stats, **options)


def removed_per_source(plan: PruningPlan) -> dict[str, tuple[int, ...]]:
    gone = plan.removed_atoms
    return {
        s.label: tuple(k for k, a in enumerate(s.atoms) if a in gone)
        for s in plan.analysis.sources
        if s.node >= 0
    }


def assert_same_outputs(model: onnx.ModelProto, pruned: onnx.ModelProto, atol: float) -> None:
    """Pruned vs original on fresh inputs (onnxruntime), and onnx.reference vs onnxruntime."""
    onnx.checker.check_model(pruned, full_check=True)
    expected, got = run_model(model, FRESH), run_model(pruned, FRESH)
    assert compare(expected, got, atol=atol, rtol=0.0).within_tolerance
    reference = onnx.reference.ReferenceEvaluator(pruned).run(None, FRESH)
    np.testing.assert_allclose(reference[0], got[0], rtol=1e-5, atol=1e-6)


def grouped_conv(model: onnx.ModelProto) -> tuple[int, list[int]]:
    """(group, weight dims) of node Conv_2."""
    node = next(n for n in model.graph.node if n.name == "Conv_2")
    weight = next(t for t in model.graph.initializer if t.name == node.input[1])
    group = next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "group")
    return group, list(weight.dims)


def prune_dead(model: onnx.ModelProto):
    plan = dead_plan(model, criterion="dead")
    pruned = prune(model, plan)
    assert_same_outputs(model, pruned, atol=1e-6)
    return plan, pruned


def test_grouped_conv_records_its_blocks() -> None:
    analysis = find_groups(G.grouped(width=6, groups=3, out=6))
    assert analysis.groups == (
        ChannelGroup(0, ("Conv_0",), 6, ("Conv_2",), 0, None),
        ChannelGroup(1, ("Conv_2",), 6, ("Gemm_6",), 0, None),
    )
    assert analysis.blocks == (Blocks(2, 3, (0, 1, 2, 3, 4, 5), (6, 7, 8, 9, 10, 11)),)
    assert analysis.blocks[0].input_block(1) == (2, 3)
    assert analysis.blocks[0].output_block(2) == (10, 11)


def test_outputs_go_in_equal_numbers_per_group() -> None:
    plan, pruned = prune_dead(G.grouped(dead1=(), dead2=(0, 3)))
    assert removed_per_source(plan) == {"Conv_0": (), "Conv_2": (0, 3)}
    assert (plan.held, grouped_conv(pruned)) == ((), (2, [2, 2, 3]))


def test_unequal_dead_outputs_lose_the_per_group_minimum() -> None:
    # Groups {0, 1, 2} and {3, 4, 5}: two dead in the first, one in the second.
    plan, pruned = prune_dead(G.grouped(dead1=(), dead2=(0, 1, 3), out=6))
    assert removed_per_source(plan) == {"Conv_0": (), "Conv_2": (1, 3)}
    assert plan.held == ((4, BALANCE),)  # unit 4: Conv_2's channel 0
    assert grouped_conv(pruned) == (2, [4, 2, 3])


def test_input_blocks_shrink_equally() -> None:
    plan, pruned = prune_dead(G.grouped(dead1=(0, 3)))
    assert removed_per_source(plan) == {"Conv_0": (0, 3), "Conv_2": ()}
    assert grouped_conv(pruned) == (2, [4, 1, 3])


def test_a_dead_input_in_one_block_only_is_kept() -> None:
    plan, pruned = prune_dead(G.grouped(dead1=(0,)))
    assert removed_per_source(plan) == {"Conv_0": (), "Conv_2": ()}
    assert plan.held == ((0, BALANCE),)
    assert grouped_conv(pruned) == (2, [4, 2, 3])


def test_a_dead_group_goes_whole() -> None:
    # Group 1 of 3: its inputs (2, 3) and its outputs (2, 3) are dead.
    plan, pruned = prune_dead(G.grouped(dead1=(2, 3), dead2=(2, 3), width=6, groups=3, out=6))
    assert removed_per_source(plan) == {"Conv_0": (2, 3), "Conv_2": (2, 3)}
    assert grouped_conv(pruned) == (2, [4, 2, 3])


def test_outputs_of_a_group_with_dead_inputs_are_constants_and_fold() -> None:
    # Inputs 2, 3 dead: group 1's outputs are Relu(bias), constants that the head's
    # bias absorbs, so output 3 goes too and the whole group with it.
    plan, pruned = prune_dead(G.grouped(dead1=(2, 3), dead2=(2,), width=6, groups=3, out=6))
    assert removed_per_source(plan) == {"Conv_0": (2, 3), "Conv_2": (2, 3)}
    assert grouped_conv(pruned) == (2, [4, 2, 3])


def test_channel_multiplier_conv_loses_one_output_per_group() -> None:
    # group = input channels = 3, two outputs each: a grouped Conv with b_in = 1.
    plan, pruned = prune_dead(G.grouped(dead1=(), dead2=(0, 3, 5), width=3, groups=3, out=6))
    assert removed_per_source(plan) == {"Conv_0": (), "Conv_2": (0, 3, 5)}
    assert grouped_conv(pruned) == (3, [3, 1, 3])


def test_grouped_conv_on_untracked_channels_loses_outputs_only() -> None:
    model = G.grouped_on_input(dead=(0, 2))
    assert find_groups(model).blocks == (Blocks(1, 2, None, (0, 1, 2, 3)),)
    plan = dead_plan(model, criterion="dead")
    pruned = prune(model, plan)
    assert_same_outputs(model, pruned, atol=1e-6)
    assert removed_per_source(plan) == {"Conv_1": (0, 2)}
    node = next(n for n in pruned.graph.node if n.op_type == "Conv")
    weight = next(t for t in pruned.graph.initializer if t.name == node.input[1])
    assert list(weight.dims) == [2, 1, 3]


def test_prune_refuses_a_plan_with_unequal_groups() -> None:
    model = G.grouped(dead1=(), dead2=(0,))
    plan = dead_plan(model, criterion="dead")
    assert plan.remove == ()  # the planner keeps the lone dead output...
    unit = plan.analysis.unit_of[plan.analysis.blocks[0].outputs[0]]
    forced = PruningPlan(plan.analysis, "dead", (unit,), (), plan.score)
    with pytest.raises(ValueError, match="groups of grouped Conv Conv_2 unequal"):
        prune(model, forced)  # ...and the pruner would not write it


def test_the_dsp_rule_drops_a_weak_group_and_balances_the_rest() -> None:
    model = G.grouped(dead1=(), width=6, groups=3, out=6)
    calibration = Calibration({"x": G.inputs(60)}, None)
    result = compress(model, calibration, criterion="dsp", min_count=5)
    assert removed_per_source(result.plan) == {"Conv_0": (0, 1), "Conv_2": (0, 1)}
    assert result.plan.held == ((11, BALANCE),)  # Conv_2's output 5: group 2 keeps both
    assert grouped_conv(result.model) == (2, [4, 2, 3])
    onnx.checker.check_model(result.model, full_check=True)
    run_model(result.model, FRESH)


@pytest.mark.parametrize(("bias", "ops"), [(True, ["MatMul", "Add"]), (False, ["Gemm"])])
def test_constant_channel_folds_into_a_matmul_head(bias: bool, ops: list[str]) -> None:
    model = G.matmul_head(bias, dead=(2,), constant=(1,))
    plan = dead_plan(model, criterion="dead")
    assert removed_per_source(plan) == {"Conv_0": (1, 2)}
    pruned = prune(model, plan)
    assert_same_outputs(model, pruned, atol=1e-5)
    kinds = [n.op_type for n in pruned.graph.node]
    assert kinds[kinds.index(ops[0]) : kinds.index(ops[0]) + len(ops)] == ops
    assert "MatMul" not in kinds or bias


def test_matmul_consumer_knows_where_its_bias_is() -> None:
    (with_add,) = find_groups(G.matmul_head(True)).consumers
    (bare,) = find_groups(G.matmul_head(False)).consumers
    assert (with_add.bias_at, bare.bias_at) == ((5, 1), (4, 2))  # Add_5's constant; Gemm C


@pytest.mark.parametrize("bias", [True, False])
def test_threshold_removes_a_faint_channel_at_a_matmul_head(bias: bool) -> None:
    model = G.matmul_head(bias, faint=(1,))
    assert removed_per_source(dead_plan(model, criterion="dead")) == {"Conv_0": ()}
    plan = dead_plan(model, criterion="dead", threshold=0.01)
    assert removed_per_source(plan) == {"Conv_0": (1,)}
    assert_same_outputs(model, prune(model, plan), atol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_dsp_compensation_reaches_matmul_heads(bias: bool) -> None:
    model = G.matmul_head(bias)
    calibration = Calibration({"x": G.inputs(120)}, None)
    diffs = {}
    for mode in ("none", "mean", "lstsq"):
        result = compress(model, calibration, criterion="dsp", compensation=mode, min_count=20)
        assert len(result.plan.remove) == 2
        diffs[mode] = result.holdout.max_abs_diff
    assert diffs["mean"] < diffs["none"] / 2 and diffs["lstsq"] < diffs["none"] / 2


def test_inspect_says_why_a_dead_unit_is_kept(run_cli, tmp_path) -> None:
    import json

    model, calib = tmp_path / "grouped.onnx", tmp_path / "calib.npz"
    onnx.save(G.grouped(), model)
    np.savez(calib, x=G.inputs(32))
    result = run_cli("inspect", model, "--calib", calib, "--json")
    assert result.code == 0, result.stderr
    kept = {(u["unit"], u["kept_by"]) for u in json.loads(result.stdout)["units"] if u["kept_by"]}
    assert kept == {(0, "keeps the groups of Conv_2 equal")}
    shown = run_cli("inspect", model, "--calib", calib)
    assert "unit 0 is dead but kept: keeps the groups of Conv_2 equal" in shown.stdout

"""A plan holds only for its own model; prune is functional; library errors are the package's.

``prune`` checks the fingerprint the analysis took of the model (``compress.fingerprint``):
another training of the same architecture, the same nodes in another order, or a changed
attribute is refused with ``PlanError``; the plan's own model (also with other metadata,
or already normalised) is pruned as before.
"""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import onnx_ir as ir
import pytest

from dsp_deploy.compress.align import align_removal
from dsp_deploy.compress.calibrate import collect_stats
from dsp_deploy.compress.fingerprint import fingerprint
from dsp_deploy.compress.graph import normalise
from dsp_deploy.compress.groups import find_groups
from dsp_deploy.compress.pipeline import probe_tensors
from dsp_deploy.compress.plan import PruningPlan, make_plan
from dsp_deploy.compress.prune import prune, prune_analysed
from dsp_deploy.compress.verify import compare
from dsp_deploy.errors import DspDeployError, OptionError, PlanError
from dsp_deploy.inference import run_model

sys.path.insert(0, str(Path(__file__).parent))
import onnx_graphs as G  # noqa: E402

X = G.inputs(48)
FRESH = {"x": G.inputs(7, seed=99)}
ANOTHER = "the plan was made for another model"


def dead_plan(model: onnx.ModelProto) -> PruningPlan:
    analysis = find_groups(model)
    stats = collect_stats(model, {"x": X}, probe_tensors(analysis), batch_size=16)
    return make_plan(analysis, stats, criterion="dead")


def assert_exact(model: onnx.ModelProto, pruned: onnx.ModelProto) -> None:
    onnx.checker.check_model(pruned, full_check=True)
    expected, got = run_model(model, FRESH), run_model(pruned, FRESH)
    assert compare(expected, got, atol=1e-6, rtol=0.0).within_tolerance


@pytest.mark.parametrize("build", [G.concat, G.constant_channel, G.depthwise])
def test_a_plan_prunes_its_own_model_and_never_touches_it(build) -> None:
    model = build()
    before = model.SerializeToString()
    plan = dead_plan(model)
    assert plan.remove
    pruned = prune(model, plan)
    assert model.SerializeToString() == before
    assert_exact(model, pruned)


@pytest.mark.parametrize(
    "build", [G.concat, G.constant_channel, G.depthwise, G.inception_like, G.residual]
)
def test_prune_analysed_writes_the_bytes_prune_writes_and_keeps_the_analysed_model(build) -> None:
    # The pipeline prunes the normalised model its analysis holds (no second conversion,
    # normalisation, fingerprint): it must be byte for byte what prune(model, plan) gives.
    model = build()
    plan = dead_plan(model)
    assert plan.remove
    expected = prune(model, plan).SerializeToString(deterministic=True)
    assert prune_analysed(plan).SerializeToString(deterministic=True) == expected
    assert fingerprint(plan.analysis.model) == plan.fingerprint  # the clone was pruned
    unchecked = prune_analysed(plan, checked=False)  # the k-fold models: no shape check
    weights = {t.name for t in unchecked.graph.initializer}
    computed = [v for v in unchecked.graph.value_info if v.name not in weights]
    assert computed and not any(v.type.tensor_type.HasField("shape") for v in computed)
    assert_exact(model, unchecked)


def test_a_plan_ignores_metadata_and_normalisation() -> None:
    model = G.concat()
    plan = dead_plan(model)
    stamped = normalise(model)
    onnx.helper.set_model_props(stamped, {"note": "stamped after planning"})
    assert_exact(model, prune(stamped, plan))


def test_a_plan_for_another_training_of_the_architecture_is_refused() -> None:
    plan = dead_plan(G.concat(seed=0))
    other = G.concat(seed=1)  # same names and shapes, other weights
    with pytest.raises(PlanError, match=f"^{ANOTHER} \\(fingerprint {plan.fingerprint[:12]} ≠ "):
        prune(other, plan)


def test_the_same_nodes_in_another_order_are_refused() -> None:
    model = G.concat()
    plan = dead_plan(model)
    swapped = onnx.ModelProto()
    swapped.CopyFrom(model)
    nodes = list(swapped.graph.node)
    assert [n.op_type for n in nodes[:2]] == ["Conv", "Conv"]  # two independent branches
    del swapped.graph.node[:]
    swapped.graph.node.extend([nodes[1], nodes[0], *nodes[2:]])
    onnx.checker.check_model(swapped, full_check=True)
    with pytest.raises(PlanError, match=ANOTHER):
        prune(swapped, plan)


def test_a_changed_attribute_is_refused() -> None:
    model = G.concat()
    plan = dead_plan(model)
    edited = ir.from_proto(normalise(model))
    conv = edited.graph.node(1)
    conv.attributes["dilations"] = ir.Attr("dilations", ir.AttributeType.INTS, [2])
    conv.attributes["pads"] = ir.Attr("pads", ir.AttributeType.INTS, [2, 2])
    changed = ir.to_proto(edited)
    with pytest.raises(PlanError, match=ANOTHER):
        prune(changed, plan)


def test_an_option_outside_its_choices_is_an_option_error() -> None:
    model = G.chain()
    analysis = find_groups(model)
    stats = collect_stats(model, {"x": X}, probe_tensors(analysis), batch_size=16)
    with pytest.raises(OptionError, match="criterion 'magic'; expected one of"):
        make_plan(analysis, stats, criterion="magic")
    with pytest.raises(OptionError, match="compensation 'best'; expected one of"):
        make_plan(analysis, stats, criterion="dsp", compensation="best")
    with pytest.raises(OptionError, match="align multiple 0: expected an integer >= 1"):
        align_removal(analysis, set(), [], 0)


def test_option_and_plan_errors_are_value_errors_of_the_package() -> None:
    for error in (OptionError, PlanError):
        assert issubclass(error, DspDeployError) and issubclass(error, ValueError)
        assert error("x").exit_code == 2


def test_a_plan_that_unbalances_a_grouped_conv_is_a_plan_error() -> None:
    model = G.grouped(dead1=(), dead2=(0,))
    plan = dead_plan(model)
    unit = plan.analysis.unit_of[plan.analysis.blocks[0].outputs[0]]
    forced = PruningPlan(plan.analysis, "dead", (unit,), (), plan.score)
    with pytest.raises(PlanError, match="^plan leaves the groups of grouped Conv Conv_2 unequal"):
        prune(model, forced)


def test_a_plan_that_empties_a_convs_input_is_a_plan_error() -> None:
    model = G.chain(dead1=(), dead2=())
    plan = dead_plan(model)
    every = tuple({plan.analysis.unit_of[a] for a in plan.analysis.sources[0].atoms})
    forced = PruningPlan(plan.analysis, "dead", every, (), plan.score)
    with pytest.raises(PlanError, match="^plan empties r, which Conv_2 still needs"):
        prune(model, forced)

"""Heads and views that used to pin: Flatten over (C, L), ``x.view(x.size(0), -1)``,
Slice of every opset, a 1-channel attention map, a Concat of coordinate channels.

One topology per test, from ONNX text: the exact groups (what ``inspect`` prints), then
``compress`` with planted dead channels (zero weight rows, bias −1, Relu: 0 on every
sample) and the written model against the original on fresh inputs, on onnxruntime and
``onnx.reference``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.reference
import pytest
from onnx import numpy_helper

from dsp_deploy.compress.calibrate import collect_stats
from dsp_deploy.compress.groups import ChannelGroup, find_groups
from dsp_deploy.compress.pipeline import compress, probe_tensors
from dsp_deploy.compress.plan import PruningPlan, make_plan
from dsp_deploy.compress.prune import prune
from dsp_deploy.inference import run_model
from dsp_deploy.io import Calibration

sys.path.insert(0, str(Path(__file__).parent))
import onnx_graphs as G  # noqa: E402

CALIBRATION = Calibration({"x": G.inputs(64)}, None)
FRESH = {"x": G.inputs(6, seed=77)}
BIG = 9223372036854775807  # torch's "to the end"


def build(body: str, weights: dict[str, np.ndarray], opset: int = 17) -> onnx.ModelProto:
    """Like ``onnx_graphs.build`` with a chosen opset (Slice has attributes before 10)."""
    text = f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    net (float[N, 1, {G.L}] x) => (float[N, 2] probabilities)
    {{
    {body}
    }}
    """
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(
        numpy_helper.from_array(np.asarray(v, dtype=G._dtype(v)), k) for k, v in weights.items()
    )
    onnx.checker.check_model(model, full_check=True)
    return model


@dataclass(frozen=True)
class Pruned:
    model: onnx.ModelProto
    plan: PruningPlan


def exact(model: onnx.ModelProto, counted: bool = True) -> tuple[Pruned, dict]:
    """``compress`` with the dead criterion (``counted`` False: its steps without the MAC
    count, which cannot size an old Reshape's output); (result, removed channels per
    source); asserts the written model equals the original on fresh inputs (onnxruntime
    and onnx.reference)."""
    result = compress(model, CALIBRATION) if counted else _prune_dead(model)
    assert not counted or result.verified, result.failures
    onnx.checker.check_model(result.model, full_check=True)
    delta = np.abs(run_model(model, FRESH)[0] - run_model(result.model, FRESH)[0]).max()
    assert delta <= 1e-6
    before = onnx.reference.ReferenceEvaluator(model).run(None, FRESH)[0]
    after = onnx.reference.ReferenceEvaluator(result.model).run(None, FRESH)[0]
    np.testing.assert_allclose(after, before, atol=1e-6, rtol=0)
    analysis, removed = result.plan.analysis, result.plan.removed_atoms
    per_source = {
        s.label: tuple(k for k, a in enumerate(s.atoms) if a in removed)
        for s in analysis.sources
        if s.node >= 0
    }
    return result, per_source


def _prune_dead(model: onnx.ModelProto) -> Pruned:
    analysis = find_groups(model)
    stats = collect_stats(model, CALIBRATION.inputs, probe_tensors(analysis))
    plan = make_plan(analysis, stats, criterion="dead")
    return Pruned(prune(model, plan), plan)


def initializer(model: onnx.ModelProto, node: onnx.NodeProto, k: int) -> np.ndarray:
    return numpy_helper.to_array({t.name: t for t in model.graph.initializer}[node.input[k]])


def node_of(model: onnx.ModelProto, op: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == op)


# --- Flatten over (C, L) → Gemm / MatMul -------------------------------------------------

C, L = 4, G.L


def flatten_head(op: str, dead=(1,), constant=(), seed: int = 0) -> onnx.ModelProto:
    """x → Conv(4, k3) → Relu → Flatten (N, 4·32) → Gemm (transB 0 | 1) | MatMul + Add."""
    w = G.Weights(seed)
    w.conv("c1", C, 1, 3, dead)
    for c in constant:  # 0.7 at every position: a constant channel
        w.values["c1_w"][c], w.values["c1_b"][c] = 0.0, 0.7
    w.dense("fc", C * L, 2, trans_b=op == "gemm1")
    head = {
        "gemm1": "z = Gemm <transB = 1> (f, fc_w, fc_b)",
        "gemm0": "z = Gemm (f, fc_w, fc_b)",
        "matmul": "m = MatMul (f, fc_w)\n    z = Add (m, fc_b)",
    }[op]
    body = f"""
    a = Conv <pads = [1, 1]> (x, c1_w, c1_b)
    h = Relu (a)
    f = Flatten (h)
    {head}
    probabilities = Softmax <axis = 1> (z)
    """
    return build(body, w.values)


@pytest.mark.parametrize("op", ["gemm1", "gemm0", "matmul"])
def test_flatten_over_channels_and_time_removes_strided_columns(op: str) -> None:
    consumer = {"gemm1": "Gemm_3", "gemm0": "Gemm_3", "matmul": "MatMul_3"}[op]
    assert find_groups(flatten_head(op)).groups == (
        ChannelGroup(0, ("Conv_0",), C, (consumer,), 0, None),
    )
    model = flatten_head(op, dead=(1,))
    result, removed = exact(model)
    assert removed == {"Conv_0": (1,)}
    kept = [p for p in range(C * L) if p // L != 1]  # columns c·L + t of channel 1 go
    mixing = "MatMul" if op == "matmul" else "Gemm"
    before = initializer(model, node_of(model, mixing), 1)
    after = initializer(result.model, node_of(result.model, mixing), 1)
    np.testing.assert_array_equal(after, before.take(kept, axis=1 if op == "gemm1" else 0))


def test_flatten_head_folds_a_constant_channel_over_its_positions() -> None:
    model = flatten_head("gemm1", dead=(), constant=(2,))
    result, removed = exact(model)
    assert removed == {"Conv_0": (2,)}
    w, b = initializer(model, model.graph.node[3], 1), initializer(model, model.graph.node[3], 2)
    gemm = node_of(result.model, "Gemm")
    folded = b + 0.7 * w[:, 2 * L : 3 * L].astype(np.float64).sum(axis=1)  # Σ_t W[:, c·L+t]·v
    np.testing.assert_allclose(initializer(result.model, gemm, 2), folded, rtol=1e-6)


def test_an_activation_after_the_flatten_is_no_tap() -> None:
    """The paper's score is per channel of a stage output; Relu(Flatten(h)) repeats each
    channel L times, so the unit keeps its tap at h."""
    model = flatten_head("gemm1")
    model.graph.node[3].input[0] = "f2"
    model.graph.node.insert(3, onnx.helper.make_node("Relu", ["f"], ["f2"]))
    analysis = find_groups(model)
    assert dict(analysis.taps) == {"h": (0, 1, 2, 3)}
    assert analysis.consumers[0].layout == tuple(c for c in range(C) for _ in range(L))


# --- x.view(x.size(0), -1) ----------------------------------------------------------------

TARGETS = {
    "view": """
    s = Shape (h)
    n = Gather <axis = 0> (s, zero)
    n1 = Unsqueeze (n, axis0)
    t = Concat <axis = 0> (n1, minus1)
    """,
    "view_opset9": """
    s = Shape (h)
    n = Gather <axis = 0> (s, zero)
    n1 = Unsqueeze <axes = [0]> (n)
    t = Concat <axis = 0> (n1, minus1)
    """,
    "shape_start_end": """
    n1 = Shape <start = 0, end = 1> (h)
    t = Concat <axis = 0> (n1, minus1)
    """,
    "copy_rest": "t = Identity (copy_rest)",
    "literal": "t = Identity (literal)",
}


def reshape_head(target: str, dead=(1, 3), seed: int = 0) -> onnx.ModelProto:
    """x → Conv(4, k3) → Relu → Reshape(h, target) → Gemm (transB 1) → Softmax."""
    w = G.Weights(seed)
    w.conv("c1", C, 1, 3, dead)
    w.dense("fc", C * L, 2)
    w.tensor("zero", np.array(0))
    w.tensor("axis0", np.array([0]))
    w.tensor("minus1", np.array([-1]))
    w.tensor("copy_rest", np.array([0, -1]))
    w.tensor("literal", np.array([-1, C * L]))
    body = f"""
    a = Conv <pads = [1, 1]> (x, c1_w, c1_b)
    h = Relu (a)
    {TARGETS[target]}
    f = Reshape (h, {target if target in ("literal", "copy_rest") else "t"})
    z = Gemm <transB = 1> (f, fc_w, fc_b)
    probabilities = Softmax <axis = 1> (z)
    """
    used = {k: v for k, v in w.values.items() if f" {k}" in body or f"({k}" in body}
    return build(body, used, 9 if target.endswith("opset9") else 17)


@pytest.mark.parametrize("target", list(TARGETS))
def test_reshape_to_batch_by_minus_one_is_a_flatten(target: str) -> None:
    model = reshape_head(target)
    (group,) = find_groups(model).groups
    assert (group.sources, group.channels, group.pinned, group.blocked_by) == (
        ("Conv_0",),
        C,
        0,
        None,
    )
    assert group.consumers[0].startswith("Gemm_")
    result, removed = exact(model, counted=not target.endswith("opset9"))
    assert removed == {"Conv_0": (1, 3)}
    assert list(initializer(result.model, node_of(result.model, "Gemm"), 1).shape) == [2, 2 * L]
    if target == "literal":  # the literal C·L follows: kept·L
        reshape = node_of(result.model, "Reshape")
        assert initializer(result.model, reshape, 1).tolist() == [-1, 2 * L]


def test_shape_read_at_the_channel_entry_pins() -> None:
    """Gather(Shape(h), 1) is the channel count, which pruning changes: h is pinned.

    The count is static, so constant folding turns it into the literal 4 first; the
    Reshape to (-1, 4) then pins, as it must."""
    w = G.Weights(0)
    w.conv("c1", C, 1, 3, (1,))
    w.dense("fc", C * L, 2)
    w.tensor("one", np.array([1]))
    w.tensor("minus1", np.array([-1]))
    body = """
    a = Conv <pads = [1, 1]> (x, c1_w, c1_b)
    h = Relu (a)
    s = Shape (h)
    c = Gather <axis = 0> (s, one)
    t = Concat <axis = 0> (minus1, c)
    u = Reshape (h, t)
    f = Flatten (u)
    z = Gemm <transB = 1> (f, fc_w, fc_b)
    probabilities = Softmax <axis = 1> (z)
    """
    (group,) = find_groups(build(body, w.values)).groups
    assert (group.pinned, group.blocked_by) == (
        C,
        "Reshape_5 (Reshape): changes the channel axis (only size-1 axes after it may go, "
        "or all: (N, -1))",
    )


# --- Slice of every opset -----------------------------------------------------------------

SLICES = {
    "opset9": (9, "c = Slice <axes = [2], starts = [1], ends = [-1]> (h)"),
    "opset9_no_axes": (9, f"c = Slice <starts = [0, 0, 1], ends = [{BIG}, 4, -1]> (h)"),
    "opset17": (17, "c = Slice (h, one, minus1, two)"),
    "opset17_no_axes": (17, "c = Slice (h, starts3, ends3)"),
}
CONSTANTS = {
    "one": [1],
    "two": [2],
    "minus1": [-1],
    "starts3": [0, 0, 1],
    "ends3": [BIG, BIG, -1],
    "chan": [0, 0, 0],
    "chan_end": [BIG, 3, BIG],
}


def slice_head(opset: int, crop: str, features: int = C, dead=(2,)) -> onnx.ModelProto:
    """x → Conv(4, k3) → Relu → ``crop`` → GAP → Flatten → Gemm → Softmax."""
    w = G.Weights(0)
    w.conv("c1", C, 1, 3, dead)
    w.dense("fc", features, 2)
    for name, value in CONSTANTS.items():
        if f" {name}" in crop:
            w.tensor(name, np.array(value))
    body = f"""
    a = Conv <pads = [1, 1]> (x, c1_w, c1_b)
    h = Relu (a)
    {crop}
    g = GlobalAveragePool (c)
    f = Flatten (g)
    z = Gemm <transB = 1> (f, fc_w, fc_b)
    probabilities = Softmax <axis = 1> (z)
    """
    return build(body, w.values, opset)


@pytest.mark.parametrize("kind", list(SLICES))
def test_slice_of_the_time_axis_passes_channels_in_every_opset(kind: str) -> None:
    assert find_groups(slice_head(*SLICES[kind])).groups == (
        ChannelGroup(0, ("Conv_0",), C, ("Gemm_5",), 0, None),
    )
    _, removed = exact(slice_head(*SLICES[kind], dead=(2,)))
    assert removed == {"Conv_0": (2,)}


@pytest.mark.parametrize(
    ("opset", "crop"),
    [
        (9, "c = Slice <axes = [1], starts = [0], ends = [3]> (h)"),
        (17, "c = Slice (h, chan, chan_end)"),
    ],
)
def test_slice_of_the_channel_axis_pins(opset: int, crop: str) -> None:
    (group,) = find_groups(slice_head(opset, crop, features=3)).groups
    assert (group.pinned, group.blocked_by) == (C, "Slice_2 (Slice): slices the channel axis")


# --- Mul / Add / Sub / Div by a 1-channel map of the same features ------------------------


def attention_head(op: str, operands: str, gate: str = "Sigmoid", dead=(1,), dead_gate=()):
    """x → Conv(4, k3) → Relu (h) → Conv 1×1 (1 channel) → gate (a) → op(h, a) → GAP →
    Flatten → Gemm; softmax gate: attention pooling over time."""
    w = G.Weights(0)
    w.conv("c1", C, 1, 3, dead)
    w.conv("att", 1, C, 1, dead_gate)
    w.dense("fc", C, 2)
    gates = {"Sigmoid": "a = Sigmoid (e)", "Softmax": "a = Softmax <axis = 2> (e)"}
    body = f"""
    b = Conv <pads = [1, 1]> (x, c1_w, c1_b)
    h = Relu (b)
    e = Conv (h, att_w, att_b)
    {gates.get(gate, f"a = {gate} (e)")}
    y = {op} ({operands})
    g = GlobalAveragePool (y)
    f = Flatten (g)
    z = Gemm <transB = 1> (f, fc_w, fc_b)
    probabilities = Softmax <axis = 1> (z)
    """
    return build(body, w.values)


@pytest.mark.parametrize(
    ("op", "operands", "gate", "removed"),
    [
        ("Mul", "h, a", "Sigmoid", (1,)),
        ("Mul", "a, h", "Softmax", (1,)),
        ("Div", "h, a", "Sigmoid", (1,)),
        # h[1] = 0 but y[1] = a[0] ± 0 is not: channel 1 reaches the Gemm and stays
        ("Add", "a, h", "Sigmoid", ()),
        ("Sub", "a, h", "Sigmoid", ()),
    ],
)
def test_a_one_channel_map_broadcasts_and_is_kept(op, operands, gate, removed) -> None:
    reason = f"{op}_4 ({op}): its one channel broadcasts over the 4 of the other operand"
    assert find_groups(attention_head(op, operands, gate)).groups == (
        ChannelGroup(0, ("Conv_0",), C, ("Conv_2", "Gemm_7"), 0, None),
        ChannelGroup(1, ("Conv_2",), 1, (), 1, reason),
    )
    result, channels = exact(attention_head(op, operands, gate))
    assert channels == {"Conv_0": removed, "Conv_2": ()}
    att = result.model.graph.node[2]
    assert list(initializer(result.model, att, 1).shape) == [1, C - len(removed), 1]


def test_a_dead_attention_channel_is_not_removed() -> None:
    """a = Relu(0·h − 1) = 0: y = 0 reaches the Gemm, but the map itself is what makes it
    so; removing the 1 channel would leave Mul without an operand."""
    model = attention_head("Mul", "h, a", gate="Relu", dead=(), dead_gate=(0,))
    _, channels = exact(model)
    assert channels == {"Conv_0": (), "Conv_2": ()}


# --- Concat of a channel computed from x.shape (tsai's AddCoords1d) ------------------------

COORDS = """
    s{k} = Shape ({x})
    n{k} = Gather <axis = 0> (s{k}, zero)
    l{k} = Gather <axis = 0> (s{k}, minus1)
    lf{k} = Cast <to = 1> (l{k})
    t{k} = Range (zerof, lf{k}, onef)
    tc{k} = Div (t{k}, lf{k})
    nv{k} = Unsqueeze (n{k}, axis0)
    reps{k} = Concat <axis = 0> (nv{k}, one_one)
    es{k} = Shape (reps{k})
    ones{k} = ConstantOfShape <value = int64[1] {{1}}> (es{k})
    ex{k} = Expand (tc{k}, ones{k})
    cc{k} = Tile (ex{k}, reps{k})
"""


def coords_net(dead1=(1,), dead2=(0,), first: bool = False) -> onnx.ModelProto:
    """x → Conv(4) → Relu → [h, coords] → Conv(3) → Relu → [h2, coords] → Conv(3) → Relu
    → GAP → Gemm; the coordinates (N, 1, L) are built from Shape(h) as AddCoords1d does,
    first or last in each Concat."""
    w = G.Weights(0)
    w.conv("c1", C, 1, 3, dead1)
    w.conv("c2", 3, C + 1, 3, dead2)
    w.conv("c3", 3, 4, 3)
    w.dense("fc", 3, 2)
    for name, value in {"zero": 0, "minus1": -1, "axis0": [0], "one_one": [1, 1]}.items():
        w.tensor(name, np.array(value))
    w.tensor("zerof", np.array(0.0, np.float32))
    w.tensor("onef", np.array(1.0, np.float32))

    def cat(k: int, x: str) -> str:
        return f"cat{k} = Concat <axis = 1> ({f'cc{k}, {x}' if first else f'{x}, cc{k}'})"

    body = f"""
    b1 = Conv <pads = [1, 1]> (x, c1_w, c1_b)
    h1 = Relu (b1)
    {COORDS.format(k=1, x="h1")}
    {cat(1, "h1")}
    b2 = Conv <pads = [1, 1]> (cat1, c2_w, c2_b)
    h2 = Relu (b2)
    {COORDS.format(k=2, x="h2")}
    {cat(2, "h2")}
    b3 = Conv <pads = [1, 1]> (cat2, c3_w, c3_b)
    h = Relu (b3)
    """
    return build(body + G.HEAD, w.values)


@pytest.mark.parametrize("first", [False, True])
def test_coordinate_channels_are_kept_and_the_rest_passes(first: bool) -> None:
    """Plain shape inference loses the rank after Expand(…, ConstantOfShape(…)): the second
    Concat sees no rank at all and the coordinates' width is what Conv_30's W leaves."""
    reasons = [
        f"Concat_{k} (Concat): untracked input cc{j} of Concat" for j, k in ((1, 14), (2, 29))
    ]
    assert find_groups(coords_net(first=first)).groups == (
        ChannelGroup(0, ("Conv_0",), C, ("Conv_15",), 0, None),
        ChannelGroup(1, ("untracked",), 1, ("Conv_15",), 1, reasons[0]),
        ChannelGroup(2, ("Conv_15",), 3, ("Conv_30",), 0, None),
        ChannelGroup(3, ("untracked",), 1, ("Conv_30",), 1, reasons[1]),
        ChannelGroup(4, ("Conv_30",), 3, ("Gemm_34",), 0, None),
    )
    result, removed = exact(coords_net(first=first))
    assert removed == {"Conv_0": (1,), "Conv_15": (0,), "Conv_30": ()}
    conv = next(n for n in result.model.graph.node if n.name == "Conv_15")
    assert list(initializer(result.model, conv, 1).shape) == [3 - 1, C - 1 + 1, 3]

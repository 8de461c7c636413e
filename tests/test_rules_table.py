"""One test per entry of the op table (``compress.ops.OPS``), each from ONNX text.

Every case is a small graph around the op: its channel groups and pins are asserted as
literals, and the model pruned by the lossless ``dead`` plan must give the original's
outputs within 1e-6 on fresh inputs (onnxruntime). The planted channel (channel 1 of
the first Conv: zero weights, bias ``value``) is a constant everywhere, so the op keeps it
constant and the consumer after it folds it into its bias: pruning removes exactly it
when the op passes channels, nothing when the op pins them. ``test_every_entry_has_a_case``
makes a new entry without a case fail. The guards (``GUARDS``) are graphs onnxruntime
refuses, which the analysis still reads: each pins with its reason instead of failing.
Together they cover every line of ``rules`` (``pytest --cov=dsp_deploy/compress``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from dsp_deploy.compress.calibrate import collect_stats
from dsp_deploy.compress.groups import ChannelGroup, find_groups
from dsp_deploy.compress.ops import OPS, table
from dsp_deploy.compress.pipeline import probe_tensors
from dsp_deploy.compress.plan import make_plan
from dsp_deploy.compress.prune import prune
from dsp_deploy.compress.verify import compare
from dsp_deploy.inference import run_model

L = 16
RNG_SEED = 0
X = np.random.default_rng(1).normal(size=(32, 1, L)).astype(np.float32)
FRESH = np.random.default_rng(2).normal(size=(9, 1, L)).astype(np.float32)
HEAD = """
    g = GlobalAveragePool (d)
    f = Flatten (g)
    z = Gemm <transB = 1> (f, fc_w, fc_b)
    probabilities = Softmax <axis = 1> (z)
"""


@dataclass(frozen=True)
class Case:
    """A graph body (between the input Conv(s) and the head), its groups and removals."""

    body: str
    groups: tuple[ChannelGroup, ...]
    removed: int = 1
    value: float = 0.0  # the planted channel's constant
    opset: int = 17
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    branches: int = 1  # input Convs Conv_0 … (each 4 channels, channel 1 planted)
    mid: int = 4  # channels the second Conv (c2) reads
    time: str = str(L)  # the input's time axis: a symbolic name leaves lengths unknown


def _weights(case: Case) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(RNG_SEED)
    values = {}
    for b in range(case.branches):
        w, bias = rng.normal(0, 0.6, (4, 1, 3)), rng.normal(0.1, 0.1, 4)
        w[1], bias[1] = 0.0, case.value
        values[f"c{b}_w"], values[f"c{b}_b"] = w, bias
    values["c2_w"] = rng.normal(0, 0.5, (3, case.mid, 1))
    values["c2_b"] = rng.normal(0, 0.1, 3)
    values["fc_w"], values["fc_b"] = rng.normal(0, 0.5, (2, 3)), rng.normal(0, 0.1, 2)
    return {**values, **case.extra}


def _model(case: Case) -> onnx.ModelProto:
    convs = "\n".join(
        f"    a{b} = Conv <pads = [1, 1]> (x, c{b}_w, c{b}_b)" for b in range(case.branches)
    )
    text = f"""
    <ir_version: 8, opset_import: ["" : {case.opset}]>
    net (float[N, 1, {case.time}] x) => (float[N, 2] probabilities)
    {{
    {convs}
    {case.body}
    {HEAD}
    }}
    """
    model = onnx.parser.parse_model(text)
    for name, value in _weights(case).items():
        value = np.asarray(value)
        dtype = np.int64 if value.dtype.kind in "iu" else np.float32
        model.graph.initializer.append(numpy_helper.from_array(value.astype(dtype), name))
    onnx.checker.check_model(model, full_check=True)
    return model


def _group(index, sources, channels, consumers, pinned=0, why=None) -> ChannelGroup:
    return ChannelGroup(index, tuple(sources), channels, tuple(consumers), pinned, why)


def _chain(c2: str, pinned: int = 0, why: str | None = None, k: int = 1):
    """Conv_0 → op node(s) → c2 (position ``k + 1``) → head: the two groups."""
    head = f"Gemm_{k + 4}"
    return (_group(0, ["Conv_0"], 4, [c2], pinned, why), _group(1, [c2], 3, [head]))


def unary(op: str, attrs: str = "", opset: int = 17) -> Case:
    body = f"""
    h = {op} {attrs} (a0)
    d = Conv (h, c2_w, c2_b)
    """
    if op in POSITIVE:  # defined for positive inputs only: a Sigmoid first
        body = body.replace("(a0)", "(p)").replace("h =", "p = Sigmoid (a0)\n    h =", 1)
        return Case(body, _chain("Conv_3", k=2), opset=opset)
    return Case(body, _chain("Conv_2"), opset=opset)


def _pinned_chain(
    body: str, op: str, reason: str, k: int = 1, read: bool = False, at: int | None = None, **kw
) -> Case:
    """The op (at position ``k``; the Conv after it at ``at``, default ``k + 1``) pins
    Conv_0's channels; ``read``: the Conv still reads them (past the pinning node)."""
    at = k + 1 if at is None else at
    c2, why = f"Conv_{at}", f"{op}_{k} ({op}): {reason}"
    groups = (
        _group(0, ["Conv_0"], 4, [c2] if read else [], 4, why),
        _group(1, [c2], 3, [f"Gemm_{at + 3}"]),
    )
    return Case(body, groups, removed=0, **kw)


def per_channel(op: str, value: np.ndarray | None = None, name: str = "Add") -> Case:
    value = np.linspace(0.5, 2.0, 4).reshape(4, 1) if value is None else value
    body = f"""
    h = {op} (a0, k)
    d = Conv (h, c2_w, c2_b)
    """
    return Case(body, _chain("Conv_2"), extra={"k": value})


def _tied(op: str) -> Case:
    body = f"""
    h = {op} (a0, a1)
    d = Conv (h, c2_w, c2_b)
    """
    groups = (
        _group(0, ["Conv_0", "Conv_1"], 4, ["Conv_3"]),
        _group(1, ["Conv_3"], 3, ["Gemm_6"]),
    )
    return Case(body, groups, branches=2)


ATTRS = {"Cast": "<to = 1>"}
OPSETS = {"Gelu": 20, "Mish": 18}
POSITIVE = {"Log", "Reciprocal", "Sqrt"}


def _unary_cases() -> dict[str, list[Case]]:
    ops = [op for op, e in OPS.items() if e.rule.__name__ == "unary"]
    return {op: [unary(op, ATTRS.get(op, ""), OPSETS.get(op, 17))] for op in ops}


def _pool_cases() -> dict[str, list[Case]]:
    attrs = {
        "MaxPool": "<kernel_shape = [2], strides = [1]>",
        "AveragePool": "<kernel_shape = [2]>",
        "LpPool": "<kernel_shape = [2]>",
    }
    ops = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
    return {op: [unary(op, attrs.get(op, ""))] for op in ops}


def _reduce_cases() -> dict[str, list[Case]]:
    ops = [op for op in OPS if op.startswith("Reduce")]
    cases = {op: [unary(op, "<axes = [2]>")] for op in ops if op != "ReduceSum"}
    body = """
    h = ReduceSum (a0, ax)
    d = Conv (h, c2_w, c2_b)
    """
    cases["ReduceSum"] = [Case(body, _chain("Conv_2"), extra={"ax": np.array([2])})]
    why = "reduces over the batch or channel axis (or all axes)"
    body = """
    m = ReduceMean <axes = [1]> (a0)
    s = Add (a0, m)
    d = Conv (s, c2_w, c2_b)
    """
    groups = _chain("Conv_3", 4, f"ReduceMean_1 (ReduceMean): {why}", k=2)
    cases["ReduceMean"].append(Case(body, groups, removed=0))
    return cases


def _binary_cases() -> dict[str, list[Case]]:
    right = "channel tensor on the right of a non-commutative op"
    cases: dict[str, list[Case]] = {
        "Add": [per_channel("Add"), _tied("Add")],
        "Mul": [per_channel("Mul"), per_channel("Mul", np.float32(2.0))],
        "Sub": [per_channel("Sub")],
        "Div": [per_channel("Div")],
        "Pow": [per_channel("Pow", np.full((4, 1), 2.0))],
    }
    for op in ("Sub", "Div", "Pow"):
        body = f"""
    h = {op} (k, a0)
    d = Conv (h, c2_w, c2_b)
    """
        case = _pinned_chain(body, op, right, extra={"k": np.full((4, 1), 2.0)}, value=0.5)
        cases[op].append(case)
    return cases


def _pad_cases() -> list[Case]:
    body = """
    h = Pad (a0, p)
    d = Conv (h, c2_w, c2_b)
    """
    time_only = np.array([0, 0, 1, 0, 0, 2])
    channels = np.array([0, 1, 0, 0, 0, 0])
    return [
        Case(body, _chain("Conv_2"), extra={"p": time_only}),
        _pinned_chain(body, "Pad", "pads the batch or channel axis", extra={"p": channels}, mid=5),
    ]


def _slice_cases() -> list[Case]:
    body = """
    h = Slice (a0, s, e, ax)
    d = Conv (h, c2_w, c2_b)
    """
    time = {"s": np.array([1]), "e": np.array([L - 1]), "ax": np.array([2])}
    crop = {"s": np.array([0]), "e": np.array([2]), "ax": np.array([1])}
    return [
        Case(body, _chain("Conv_2"), extra=time),
        _pinned_chain(body, "Slice", "slices the channel axis", extra=crop, mid=2),
    ]


def _concat_cases() -> list[Case]:
    body = """
    h = Concat <axis = 1> (a0, a1)
    d = Conv (h, c2_w, c2_b)
    """
    groups = (
        _group(0, ["Conv_0"], 4, ["Conv_3"]),
        _group(1, ["Conv_1"], 4, ["Conv_3"]),
        _group(2, ["Conv_3"], 3, ["Gemm_6"]),
    )
    return [Case(body, groups, removed=2, branches=2, mid=8)]


def _view_cases() -> dict[str, list[Case]]:
    squeeze = """
    u = Unsqueeze (a0, ax)
    h = Squeeze (u, ax)
    d = Conv (h, c2_w, c2_b)
    """
    squeezed = Case(squeeze, _chain("Conv_3", k=2), extra={"ax": np.array([3])})
    shape = """
    n = Shape (a0)
    i = Gather (n, zero)
    j = Unsqueeze (i, zero1)
    t = Concat <axis = 0> (j, rest)
    h = Reshape (a0, t)
    e = Reshape (h, back)
    d = Conv (e, c2_w, c2_b)
    """
    why = "changes the channel axis (only size-1 axes after it may go, or all: (N, -1))"
    extra = {
        "zero": np.array(0),
        "zero1": np.array([0]),
        "rest": np.array([-1]),
        "back": np.array([0, 4, L]),
    }
    shaped = _pinned_chain(shape, "Reshape", why, k=6, extra=extra)
    flat = """
    h = Flatten (a0)
    e = Reshape (h, back)
    d = Conv (e, c2_w, c2_b)
    """
    flattened = _pinned_chain(flat, "Reshape", why, k=2, extra={"back": np.array([0, 4, L])})
    return {
        "Squeeze": [squeezed],
        "Unsqueeze": [squeezed],
        "Shape": [shaped],
        "Reshape": [shaped],
        "Flatten": [flattened],
    }


def _softmax_cases() -> dict[str, list[Case]]:
    out = {op: [unary(op, "<axis = 2>")] for op in ("Softmax", "LogSoftmax")}
    body = """
    h = Softmax <axis = 1> (a0)
    d = Conv (h, c2_w, c2_b)
    """
    out["Softmax"].append(_pinned_chain(body, "Softmax", "normalises across channels"))
    return out


def _norm_cases() -> dict[str, list[Case]]:
    bn = """
    h = BatchNormalization (a0, s, b, m, v)
    d = Conv (h, c2_w, c2_b)
    """
    inorm = """
    h = InstanceNormalization (a0, s, b)
    d = Conv (h, c2_w, c2_b)
    """
    rng = np.random.default_rng(5)
    params = {k: rng.uniform(0.5, 1.5, 4) for k in "sbmv"}
    return {
        "BatchNormalization": [Case(bn, _chain("Conv_2"), extra=params)],
        "InstanceNormalization": [
            Case(inorm, _chain("Conv_2"), extra={"s": params["s"], "b": params["b"]})
        ],
    }


def _prelu_cases() -> list[Case]:
    body = """
    h = PRelu (a0, slope)
    d = Conv (h, c2_w, c2_b)
    """
    per = {"slope": np.linspace(0.1, 0.4, 4).reshape(4, 1)}
    return [
        Case(body, _chain("Conv_2"), extra=per),
        Case(body, _chain("Conv_2"), extra={"slope": np.array([0.2])}),
    ]


def _head_cases() -> dict[str, list[Case]]:
    """Gemm and MatMul as the consumer of the input Conv (no second Conv: c2 unused)."""
    gemm = """
    p = GlobalAveragePool (a0)
    q = Flatten (p)
    e = Gemm <transB = 0> (q, w4)
    d = Unsqueeze (e, ax)
    """
    matmul = """
    p = GlobalAveragePool (a0)
    q = Flatten (p)
    m = MatMul (q, w4)
    e = Add (m, b3)
    d = Unsqueeze (e, ax)
    """
    rng = np.random.default_rng(7)
    extra = {"w4": rng.normal(0, 0.5, (4, 3)), "b3": rng.normal(0, 0.1, 3), "ax": np.array([2])}
    one = (_group(0, ["Conv_0"], 4, ["Gemm_3"]),)
    mm = (_group(0, ["Conv_0"], 4, ["MatMul_3"]),)
    return {"Gemm": [Case(gemm, one, extra=extra)], "MatMul": [Case(matmul, mm, extra=extra)]}


def _conv_cases() -> list[Case]:
    depthwise = """
    w = Conv <group = 4, pads = [1, 1]> (a0, dw, db)
    d = Conv (w, c2_w, c2_b)
    """
    rng = np.random.default_rng(3)
    extra = {"dw": rng.normal(0, 0.5, (4, 1, 3)), "db": rng.normal(0, 0.1, 4)}
    return [Case(depthwise, _chain("Conv_2"), extra=extra)]


def _variadic_cases() -> dict[str, list[Case]]:
    out = {op: [_tied(op)] for op in ("Sum", "Max", "Min", "Mean")}
    body = """
    h = Sum (a0, k)
    d = Conv (h, c2_w, c2_b)
    """
    why = "inputs are not all channel tensors of equal width"
    out["Sum"].append(_pinned_chain(body, "Sum", why, extra={"k": np.ones((4, 1))}))
    return out


CASES: dict[str, list[Case]] = {
    **_unary_cases(),
    "PRelu": _prelu_cases(),
    **_pool_cases(),
    **_reduce_cases(),
    **_binary_cases(),
    **_variadic_cases(),
    **_norm_cases(),
    "Pad": _pad_cases(),
    "Slice": _slice_cases(),
    "Concat": _concat_cases(),
    **_view_cases(),
    **_softmax_cases(),
    **_head_cases(),
    "Conv": _conv_cases(),
}


SCALAR_OF_X = "m = ReduceMean <axes = [0, 1, 2], keepdims = 0> (x)"  # computed, untracked
WIDE_X = "e = Expand (x, wide)"  # (N, 4, L) computed from the input: untracked channels
VIEW = "changes the channel axis (only size-1 axes after it may go, or all: (N, -1))"


def _pin(op: str, lines: str, reason: str, k: int = 1, read: bool = False, **extra) -> Case:
    """``lines`` (ending in ``h``) pin Conv_0's channels at ``<op>_<k>``; then Conv, head."""
    body = f"{lines}\n    d = Conv (h, c2_w, c2_b)"
    values = {"wide": np.array([1, 4, 1]), "back": np.array([-1, 4, L]), **extra}
    at = 1 + len(lines.strip().splitlines())  # the Conv after the lines
    return _pinned_chain(body, op, reason, k=k, read=read, at=at, extra=values)


def _two_branch_pin(op: str, line: str, reason: str) -> Case:
    """Conv_0 and Conv_1 both pinned by the op at position 2."""
    why = f"{op}_2 ({op}): {reason}"
    groups = (
        _group(0, ["Conv_0"], 4, [], 4, why),
        _group(1, ["Conv_1"], 4, [], 4, why),
        _group(2, ["Conv_3"], 3, ["Gemm_6"]),
    )
    return Case(f"{line}\n    d = Conv (h, c2_w, c2_b)", groups, removed=0, branches=2)


def _batch_view(first: str, k: int, rest_: object = (-1,), **extra) -> Case:
    """``x.view(x.size(0), -1)`` with the batch dim taken by ``first`` (ending in ``j``),
    reshaped back: the flatten is followed, the reshape back pins."""
    lines = f"""{first}
    t = Concat <axis = 0> (j, rest)
    f1 = Reshape (a0, t)
    h = Reshape (f1, back)"""
    rest = np.array([4 * L]) if rest_ is None else np.array(rest_)
    return _pin("Reshape", lines, VIEW, k=k, rest=rest, **extra)  # k: the Reshape that pins


PINS: dict[str, list[Case]] = {
    "BatchNormalization": [
        _pin(
            "BatchNormalization",
            f"{SCALAR_OF_X}\n    s2 = Add (s, m)\n    h = BatchNormalization (a0, s2, s, s, s)",
            "per-channel parameters are not constants",
            k=3,
            s=np.ones(4),
        )
    ],
    "PRelu": [
        _two_branch_pin("PRelu", "h = PRelu (a0, a1)", "input 1 is channel data"),
        _pin(
            "PRelu",
            f"{SCALAR_OF_X}\n    h = PRelu (a0, m)",
            "other operand is neither a constant nor a channel tensor",
            k=2,
        ),
    ],
    "Add": [
        _pin(
            "Add",
            f"{WIDE_X}\n    h = Add (a0, e)",
            "other operand is computed and broadcasts over channels",
            k=2,
        )
    ],
    "Concat": [
        _pin(
            "Concat",
            f"{WIDE_X}\n    c = Concat <axis = 2> (a0, e)\n    h = Slice (c, z1, l1, two)",
            "concatenates a channel tensor with an untracked one",
            k=2,
            z1=np.array([0]),
            l1=np.array([L]),
            two=np.array([2]),
        )
    ],
    "Gemm": [
        _pin(
            "Gemm",
            f"""{SCALAR_OF_X}
    w5 = Add (w4, m)
    p = GlobalAveragePool (a0)
    q = Flatten (p)
    g5 = Gemm (q, w5)
    h = Unsqueeze (g5, ax)""",
            "B is not a constant matrix",
            k=5,
            w4=np.ones((4, 4)),
            ax=np.array([2]),
        )
    ],
    "MatMul": [
        _pin(
            "MatMul",
            "t = MatMul (a0, w16)\n    h = Add (t, a0)",
            "channels are not the contracted axis of a (batch, features) matrix",
            w16=np.eye(L),
        ),
        _pin(
            "MatMul",
            f"""{SCALAR_OF_X}
    w5 = Add (w4, m)
    p = GlobalAveragePool (a0)
    q = Flatten (p)
    g5 = MatMul (q, w5)
    h = Unsqueeze (g5, ax)""",
            "B is not a constant matrix",
            k=5,
            w4=np.ones((4, 4)),
            ax=np.array([2]),
        ),
    ],
    "Flatten": [
        _pin(
            "Flatten",
            "f1 = Flatten <axis = 2> (a0)\n    h = Reshape (f1, back)",
            "Flatten with axis != 1 merges the batch and channel axes",
        )
    ],
    "Reshape": [
        _pin(
            "Reshape",
            "f1 = Reshape (a0, two)\n    h = Reshape (f1, back)",
            VIEW,
            two=np.array([2, -1]),
        ),
        _batch_view(
            "n = Shape (a0)\n    i = Gather (n, zero)\n    i2 = Cast <to = 7> (i)\n"
            "    j = Unsqueeze (i2, zero1)",
            7,
            zero=np.array(0),
            zero1=np.array([0]),
        ),
        _batch_view(
            "n = Shape (a0)\n    j = Slice (n, zero1, one1)",
            5,
            zero1=np.array([0]),
            one1=np.array([1]),
        ),
        _batch_view("n = Shape <end = 1> (a0)\n    j = Identity (n)", 5),
    ],
    "Shape": [
        _pin(
            "Shape",
            "n = Shape (a0)\n    zz = ConstantOfShape (n)\n    h = Add (a0, zz)",
            "the channel count is read (only other dims may be)",
        ),
        _pin(  # the batch dim of another tensor (x): not recognised
            "Reshape",
            "n = Shape (x)\n    i = Gather (n, zero)\n    j = Unsqueeze (i, zero1)\n"
            "    t = Concat <axis = 0> (j, rest)\n    f1 = Reshape (a0, t)\n"
            "    h = Reshape (f1, back)",
            VIEW,
            k=5,
            zero=np.array(0),
            zero1=np.array([0]),
            rest=np.array([-1]),
        ),
    ],
    "Unsqueeze": [
        _pin(
            "Unsqueeze",
            "u = Unsqueeze (a0, one1)\n    h = Squeeze (u, one1)",
            VIEW,
            one1=np.array([1]),
        )
    ],
}
CASES["Concat"].append(  # along time: tied like a residual
    Case(
        "h = Concat <axis = 2> (a0, a1)\n    d = Conv (h, c2_w, c2_b)",
        (_group(0, ["Conv_0", "Conv_1"], 4, ["Conv_3"]), _group(1, ["Conv_3"], 3, ["Gemm_6"])),
        branches=2,
    )
)
CASES["MatMul"].append(  # an Add of a computed tensor is no bias: the MatMul becomes a Gemm
    Case(
        f"""{SCALAR_OF_X}
    p = GlobalAveragePool (a0)
    q = Flatten (p)
    mm = MatMul (q, w4)
    e = Add (mm, m)
    d = Unsqueeze (e, ax)""",
        (_group(0, ["Conv_0"], 4, ["MatMul_4"]),),
        extra={"w4": np.linspace(-1, 1, 12).reshape(4, 3), "ax": np.array([2])},
    )
)
PINS["Reshape"] += [
    _pin(
        "Shape",
        "n = Shape (a0)\n    h = Reshape (a0, n)",
        "the channel count is read (only other dims may be)",
    ),
    _batch_view(  # a literal width after the batch dim: not recognised
        "n = Shape (a0)\n    i = Gather (n, zero)\n    j = Unsqueeze (i, zero1)",
        5,
        zero=np.array(0),
        zero1=np.array([0]),
        rest_=None,
    ),
    _batch_view(
        "n = Shape (a0)\n    j0 = Slice (n, zero1, one1)\n    j = Abs (j0)",
        5,
        zero1=np.array([0]),
        one1=np.array([1]),
    ),
]
ZERO_OF_X = f"""{SCALAR_OF_X}
    z0 = Mul (m, zf)
    i0 = Cast <to = 7> (z0)
    s0 = Unsqueeze (i0, zero1)"""  # 0, computed from the input
COMPUTED = {"zf": np.float32(0.0), "zero1": np.array([0]), "big": np.array([2**31 - 1])}
PINS["Flatten"].append(
    replace(
        _pin(
            "Flatten",
            "f1 = Flatten (a0)\n    h = Reshape (f1, back)",
            "flattens axes of unknown size",
        ),
        time="T",
    )
)
PINS["Shape"].append(  # a computed index may read any entry; the view is not followed
    _pin(
        "Shape",
        f"""{ZERO_OF_X}
    n = Shape (a0)
    i = Gather (n, i0)
    j = Unsqueeze (i, zero1)
    j1 = Slice (n, s0, one1)
    t = Concat <axis = 0> (j, rest)
    t1 = Concat <axis = 0> (j1, rest)
    f1 = Reshape (a0, t)
    f2 = Reshape (a0, t1)
    f3 = Add (f1, f2)
    h = Reshape (f3, back)""",
        "the channel count is read (only other dims may be)",
        k=5,
        rest=np.array([-1]),
        one1=np.array([1]),
        **COMPUTED,
    )
)
PINS["Slice"] = [
    _pin(
        "Slice",
        f"{ZERO_OF_X}\n    h = Slice (a0, s0, big)",
        "axes or rank unknown",
        k=5,
        **COMPUTED,
    ),
    _pin(
        "Slice",
        f"{ZERO_OF_X}\n    h = Slice (a0, s0, big, one1)",
        "slice bounds on the batch or channel axis are not constant",
        k=5,
        one1=np.array([1]),
        **COMPUTED,
    ),
]
for _op, _cases in PINS.items():
    CASES[_op] = [*CASES[_op], *_cases]


def _check(case: Case, op: str) -> None:
    model = _model(case)
    analysis = find_groups(model)
    assert analysis.groups == case.groups
    stats = collect_stats(model, {"x": X}, probe_tensors(analysis), batch_size=32)
    plan = make_plan(analysis, stats, criterion="dead")
    assert len(plan.remove) == case.removed
    pruned = prune(model, plan)
    onnx.checker.check_model(pruned, full_check=True)
    expected, got = run_model(model, {"x": FRESH}), run_model(pruned, {"x": FRESH})
    assert compare(expected, got, atol=1e-6, rtol=0.0).within_tolerance
    if OPS[op].tap and case.removed:
        assert "h" in analysis.taps


def test_every_entry_has_a_case() -> None:
    assert sorted(CASES) == sorted(OPS)
    assert [op for op, _ in table()] == sorted(OPS)


@pytest.mark.parametrize("op", sorted(OPS))
def test_entry(op: str) -> None:
    for case in CASES[op]:
        _check(case, op)


def test_the_ops_command_lists_the_table(run_cli) -> None:
    listed = run_cli("ops", "--json")
    assert listed.code == 0
    rows = json.loads(listed.stdout)["ops"]
    assert [r["op"] for r in rows] == sorted(OPS) and all(r["channels"] for r in rows)
    assert "Conv" in run_cli("ops").stdout


# --- cases for the rules' remaining branches -----------------------------------------------

UNTRACKED_E = "untracked input e of Concat"
ONE_CHANNEL = {"one_w": np.full((1, 1, 3), 0.3), "one_b": np.array([0.2])}
SHIFTED_WIDE = f"""{ZERO_OF_X}
    w2 = Add (wide, i0)
    e = Expand (x, w2)"""  # (N, 4, L) from the input, its dims unknown to inference
CASES["Conv"] += [
    _pin(
        "Conv",
        f"{SCALAR_OF_X}\n    w5 = Add (cw, m)\n    h = Conv (a0, w5)",
        "weight or bias is not a constant",
        k=3,
        cw=np.full((4, 4, 1), 0.25),
    ),
    Case(  # grouped (2 groups of 2): its blocks stay equal, so the planted channel stays
        "w = Conv <group = 2> (a0, gw, gb)\n    d = Conv (w, c2_w, c2_b)",
        (
            _group(0, ["Conv_0"], 4, ["Conv_1"]),
            _group(1, ["Conv_1"], 4, ["Conv_2"]),
            _group(2, ["Conv_2"], 3, ["Gemm_5"]),
        ),
        removed=0,
        extra={"gw": np.linspace(-1, 1, 8).reshape(4, 2, 1), "gb": np.zeros(4)},
    ),
]
CASES["Mul"].append(  # one channel against four: it broadcasts and is pinned
    Case(
        "s1 = Conv <pads = [1, 1]> (x, one_w, one_b)\n    h = Mul (a0, s1)\n"
        "    d = Conv (h, c2_w, c2_b)",
        (
            _group(0, ["Conv_0"], 4, ["Conv_3"]),
            _group(
                1,
                ["Conv_1"],
                1,
                [],
                1,
                "Mul_2 (Mul): its one channel broadcasts over the 4 of the other operand",
            ),
            _group(2, ["Conv_3"], 3, ["Gemm_6"]),
        ),
        extra=ONE_CHANNEL,
    )
)
CASES["Pad"].append(
    _pin(
        "Pad",
        f"{ZERO_OF_X}\n    p2 = Add (p, i0)\n    h = Pad (a0, p2)",
        "pads are not constant",
        k=6,
        p=np.array([0, 0, 1, 0, 0, 2]),
        **COMPUTED,
    )
)
CASES["Concat"] += [
    Case(  # an untracked input: its channels are pinned, the tracked ones go
        f"{WIDE_X}\n    h = Concat <axis = 1> (a0, e)\n    d = Conv (h, c2_w, c2_b)",
        (
            _group(0, ["Conv_0"], 4, ["Conv_3"]),
            _group(
                1, ["untracked"], 4, ["Conv_3"], 4, "Concat_2 (Concat): untracked input e of Concat"
            ),
            _group(2, ["Conv_3"], 3, ["Gemm_6"]),
        ),
        mid=8,
        extra={"wide": np.array([1, 4, 1])},
    ),
    Case(  # its width unknown: C_in of the Conv reading the Concat less the tracked 4
        f"{SHIFTED_WIDE}\n    h = Concat <axis = 1> (a0, e)\n    d = Conv (h, c2_w, c2_b)",
        (
            _group(0, ["Conv_0"], 4, ["Conv_8"]),
            _group(
                1, ["untracked"], 4, ["Conv_8"], 4, "Concat_7 (Concat): untracked input e of Concat"
            ),
            _group(2, ["Conv_8"], 3, ["Gemm_11"]),
        ),
        mid=8,
        extra={"wide": np.array([1, 4, 1]), **COMPUTED},
    ),
    replace(  # ... and no Conv reads the Concat: the width stays unknown
        _pin(
            "Concat",
            f"{SHIFTED_WIDE}\n    c = Concat <axis = 1> (a0, e)\n    h = Relu (c)",
            "channel count of an untracked input unknown",
            k=7,
            wide=np.array([1, 4, 1]),
            **COMPUTED,
        ),
        mid=8,
    ),
]
GEMM_BIAS_WHY = "Gemm_6 (Gemm): weight or bias is channel data"
CASES["Gemm"].append(  # C computed from the other branch's channels
    Case(
        "p = GlobalAveragePool (a0)\n    q = Flatten (p)\n    p1 = GlobalAveragePool (a1)\n"
        "    q1 = Flatten (p1)\n    g6 = Gemm (q, w4, q1)\n    h = Unsqueeze (g6, ax)\n"
        "    d = Conv (h, c2_w, c2_b)",
        (
            _group(0, ["Conv_0"], 4, [], 4, GEMM_BIAS_WHY),
            _group(1, ["Conv_1"], 4, [], 4, GEMM_BIAS_WHY),
            _group(2, ["Conv_8"], 3, ["Gemm_11"]),
        ),
        removed=0,
        branches=2,
        extra={"w4": np.eye(4), "ax": np.array([2])},
    )
)
CASES["MatMul"] += [
    Case(  # Add(mm, mm): no constant bias, the MatMul becomes a Gemm
        "p = GlobalAveragePool (a0)\n    q = Flatten (p)\n    mm = MatMul (q, w4)\n"
        "    e = Add (mm, mm)\n    d = Unsqueeze (e, ax)",
        (_group(0, ["Conv_0"], 4, ["MatMul_3"]),),
        extra={"w4": np.linspace(-1, 1, 12).reshape(4, 3), "ax": np.array([2])},
    ),
    Case(  # a (1, 1, 3) constant is no (features,) bias
        "p = GlobalAveragePool (a0)\n    q = Flatten (p)\n    mm = MatMul (q, w4)\n"
        "    e = Add (mm, b3)\n    e2 = Squeeze (e, zero1)\n    d = Unsqueeze (e2, ax)",
        (_group(0, ["Conv_0"], 4, ["MatMul_3"]),),
        extra={
            "w4": np.linspace(-1, 1, 12).reshape(4, 3),
            "b3": np.full((1, 1, 3), 0.1),
            "zero1": np.array([0]),
            "ax": np.array([2]),
        },
    ),
]
CASES["Conv"].append(
    Case(  # grouped on untracked channels: a source only, tied to Conv_0 by the Add
        f"{WIDE_X}\n    gc = Conv <group = 2> (e, gw, gb)\n    h = Add (a0, gc)\n"
        "    d = Conv (h, c2_w, c2_b)",
        (
            _group(0, ["Conv_0", "Conv_2"], 4, ["Conv_4"]),
            _group(1, ["Conv_4"], 3, ["Gemm_7"]),
        ),
        removed=0,
        extra={
            "wide": np.array([1, 4, 1]),
            "gw": np.linspace(-1, 1, 8).reshape(4, 2, 1),
            "gb": np.zeros(4),
        },
    )
)

# Guards: graphs that onnxruntime (or ONNX's checker) refuses, which ``inspect`` and the
# analysis still read. Each pins Conv_0's channels at node ``k`` with the reason given,
# rather than failing; the analysis alone is asserted (there is nothing to run).
GUARD_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
guard ({x}) => (float y) <float[4, 1, 3] c0_w = {{{w}}}> {{
    a0 = Conv <pads = [1, 1]> (x, c0_w)
    {body}
}}
"""
X_TYPE = "float[N, 1, 16] x"
GAP_Q = "p = GlobalAveragePool (a0)\n    q = Flatten (p)"
GUARDS = {
    "grouped Conv, W rows not a multiple of the groups": (
        "y = Conv <group = 2> (a0, gw)",
        1,
        "grouped Conv (group=2) with W (3, 2, 1) and 4 input channels",
        {"gw": np.ones((3, 2, 1))},
    ),
    "Clip with a channel tensor as its bound": (
        "y = Clip (a0, a0)",
        1,
        "input 1 is channel data",
        {},
    ),
    "a constant that does not broadcast per channel": (
        "y = Add (a0, k3)",
        1,
        "constant of shape (3, 1) does not broadcast per channel",
        {"k3": np.ones((3, 1))},
    ),
    "operands of two ranks": (f"{GAP_Q}\n    y = Add (a0, q)", 3, "operands differ in rank", {}),
    "operands of 4 and 2 channels": (
        "a1 = Conv <pads = [1, 1]> (x, c1_w)\n    y = Add (a0, a1)",
        2,
        "operands differ in channels (neither has one to broadcast)",
        {"c1_w": np.ones((2, 1, 3))},
    ),
    "Gemm with a transposed A": (
        f"{GAP_Q}\n    y = Gemm <transA = 1> (q, w)",
        3,
        "A is transposed or not a (batch, features) matrix",
        {"w": np.ones((4, 4))},
    ),
}


def _guard_model(body: str, extra: dict[str, np.ndarray], x: str = X_TYPE) -> onnx.ModelProto:
    w = ", ".join(["0.5"] * 12)
    model = onnx.parser.parse_model(GUARD_TEXT.format(x=x, w=w, body=body))
    for name, value in extra.items():
        model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
    return model


@pytest.mark.parametrize("name", sorted(GUARDS))
def test_guard_pins_what_cannot_run(name: str) -> None:
    body, k, reason, extra = GUARDS[name]
    analysis = find_groups(_guard_model(body, extra))
    op = body.splitlines()[-1].split("=")[1].split()[0]
    assert analysis.groups[0] == _group(0, ["Conv_0"], 4, [], 4, f"{op}_{k} ({op}): {reason}")


def test_guard_concat_of_unknown_rank_pins() -> None:
    # An input without a shape: nothing says which axis is 1, so the Concat pins.
    analysis = find_groups(_guard_model("y = Concat <axis = 1> (a0, a0)", {}, x="float x"))
    assert analysis.groups[0].blocked_by == "Concat_1 (Concat): rank unknown"


def test_guard_matmul_add_of_a_column_is_no_bias() -> None:
    # Add(MatMul, (3, 1)) broadcasts over the batch, not the features: the MatMul has no
    # bias to fold into (it would become a Gemm), and nothing pins.
    model = _guard_model(
        f"{GAP_Q}\n    mm = MatMul (q, w)\n    y = Add (mm, b)",
        {"w": np.ones((4, 3)), "b": np.ones((3, 1))},
    )
    analysis = find_groups(model)
    assert [(c.kind, c.bias) for c in analysis.consumers] == [("matmul", None)]
    assert analysis.groups[0].blocked_by is None

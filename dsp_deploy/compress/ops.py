"""The op table: one ``OpEntry`` per ONNX op type, the only place an op is described.

An entry holds the op's channel-flow rule (``rules``, ``views``), whether its output is
a DSP *tap* (where the paper scores a channel: the activation closing a stage), whether
it is a *source* (creates channels with no tracked input), and what pruning does to the
node beyond slicing the parameters its rule names (``finish``). ``groups`` follows the
rules and records the taps, ``plan`` scores at the taps, ``prune`` slices and calls
``finish``, and ``inspect`` lists the table (``table()``). Adding an op is one entry
here and one case in ``tests/test_rules_table.py`` (a test fails for an entry without
one). Anything not in the table pins the channels it reads, with the reason.

The roles of the parameters a rule slices (``flow.Slice.role``): ``producer`` (W rows
and B of a Conv: its output channels), ``per-channel`` (BatchNormalization's and
per-channel constants' entries), ``depthwise`` (a depthwise Conv's W and B, its
``group`` set to the channels kept), ``consumer`` (W columns of a Conv, Gemm / MatMul
rows or columns), ``count`` (a Reshape target's literal channel count).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import onnx_ir as ir

from dsp_deploy.compress import rules, views
from dsp_deploy.compress.flow import Context, Edit, Flow, OpEntry, Pin

ACTIVATIONS = (
    "Relu",
    "LeakyRelu",
    "Clip",
    "Sigmoid",
    "Tanh",
    "Elu",
    "Selu",
    "Celu",
    "Gelu",
    "HardSigmoid",
    "HardSwish",
    "Mish",
    "Softplus",
    "ThresholdedRelu",
)
UNARY = (
    "Identity",
    "Dropout",
    "Abs",
    "Neg",
    "Erf",
    "Softsign",
    "Sqrt",
    "Exp",
    "Log",
    "Reciprocal",
    "Sign",
    "Floor",
    "Ceil",
    "Round",
    "Cast",
    "Sin",
    "Cos",
)
POOLS = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
REDUCES = (
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceSum",
    "ReduceL1",
    "ReduceL2",
    "ReduceSumSquare",
)


def _conv_finish(node: ir.Node, edit: Edit) -> None:
    if edit.group is not None:
        node.attributes["group"] = ir.AttrInt64("group", edit.group)


def _matmul_finish(node: ir.Node, edit: Edit) -> None:
    if len(node.inputs) > 2:  # it took a bias: MatMul(A, B) + C = Gemm(A, B, C)
        node.op_type = "Gemm"


_ACT = "elementwise activation: same layout; its output is a DSP tap"
_UNARY = "elementwise: same layout (stats are taken where channels mix: f(0) != 0 is fine)"
_BINARY = (
    "two tracked inputs of equal width: tied position-wise (a residual); widths C and 1"
    " (same rank): the C pass, the 1 is pinned; one tracked input and a constant or a"
    " computed tensor of one channel: passes; a per-channel constant: sliced"
)
_POOL = "acts on the other axes: same layout"
_REDUCE = "same layout when it reduces neither axis 0 nor 1"

OPS: Mapping[str, OpEntry] = MappingProxyType(
    {
        "Conv": OpEntry(
            rules.conv,
            "group 1: new atoms (W rows, B), a consumer of its input (W columns);"
            " depthwise: same layout, W, B and group shrink; grouped: blocks (rules)",
            source=True,
            finish=_conv_finish,
        ),
        "BatchNormalization": OpEntry(
            rules.per_channel_params((1, 2, 3, 4)), "same layout; per-channel parameters sliced"
        ),
        "InstanceNormalization": OpEntry(
            rules.per_channel_params((1, 2)), "same layout; per-channel parameters sliced"
        ),
        **{op: OpEntry(rules.unary, _ACT, tap=True) for op in ACTIVATIONS},
        "PRelu": OpEntry(rules.prelu, f"{_ACT}; a per-channel slope is sliced", tap=True),
        **{op: OpEntry(rules.unary, _UNARY) for op in UNARY},
        **{op: OpEntry(rules.binary, _BINARY) for op in ("Add", "Mul")},
        **{
            op: OpEntry(rules.binary, f"{_BINARY}; a channel tensor on the right pins")
            for op in ("Sub", "Div", "Pow")
        },
        **{
            op: OpEntry(rules.variadic, "all inputs channel tensors of equal width: tied")
            for op in ("Sum", "Max", "Min", "Mean")
        },
        **{op: OpEntry(rules.pool, _POOL) for op in POOLS},
        **{op: OpEntry(rules.reduce, _REDUCE) for op in REDUCES},
        "Pad": OpEntry(rules.pad, "same layout when constant pads leave axes 0 and 1 alone"),
        "Slice": OpEntry(views.slice_, "same layout when axes 0 and 1 are taken whole (views)"),
        "Concat": OpEntry(
            rules.concat, "axis 1: layouts concatenated (offsets); untracked parts pinned"
        ),
        "Flatten": OpEntry(
            views.reshape_like, "axis 1 over (C, L), L static: each atom repeated L times"
        ),
        "Reshape": OpEntry(
            views.reshape_like,
            "to (N, -1): as Flatten; else only size-1 axes after axis 1 may come or go",
        ),
        "Squeeze": OpEntry(views.squeeze_like, "same layout when the axes are all after 1"),
        "Unsqueeze": OpEntry(views.squeeze_like, "same layout when the axes are all after 1"),
        "Shape": OpEntry(views.shape, "untracked output unless a reader reads entry 1: pins"),
        "Softmax": OpEntry(rules.softmax, "same layout when the axis is not 0 or 1"),
        "LogSoftmax": OpEntry(rules.softmax, "same layout when the axis is not 0 or 1"),
        "Gemm": OpEntry(rules.gemm, "consumer (transA 0): B columns (transB 1) or rows"),
        "MatMul": OpEntry(
            rules.matmul,
            "consumer of a (batch, features) A: B rows; becomes Gemm when it takes a bias",
            finish=_matmul_finish,
        ),
    }
)


def entry(node: ir.Node) -> OpEntry | None:
    """The table's entry for ``node`` (None: not in the table, or another domain)."""
    return OPS.get(node.op_type) if node.domain in ("", "ai.onnx") else None


def apply(i: int, node: ir.Node, ctx: Context) -> Flow | Pin:
    """The flow of channels through ``node`` (``Pin`` for ops outside the table)."""
    found = entry(node)
    if found is None:
        return Pin(f"{node.op_type} is not in the channel-flow table")
    return found.rule(i, node, ctx)


def table() -> tuple[tuple[str, str], ...]:
    """(op type, what happens to its channels), for ``inspect`` and the docs."""
    return tuple((op, e.doc) for op, e in sorted(OPS.items()))

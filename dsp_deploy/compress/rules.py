"""Per-op channel-flow rules: how the channel axis (axis 1) of a tensor passes through a node.

A *layout* is a tuple of atom ids, one per position on axis 1: position p of the tensor
carries atom ``layout[p]``. A Conv (group 1) creates fresh atoms for its output channels;
every other rule says where its input atoms end up:

==========================  ============================================================
op                          rule
==========================  ============================================================
Conv, group 1               new atoms (producer: W rows, B); reads x as a *consumer*
                            (W columns) — a channel-mixing end of a group
Conv, depthwise (g = C)     same layout; W rows, B and ``group`` shrink with the channels
Conv, grouped (g > 1)       new atoms in g blocks; ``Blocks`` ties block j of the output
                            to block j of the input (see below); W and B are rewritten
                            by ``prune`` from the surviving blocks
BatchNormalization,         same layout; per-channel parameters sliced
InstanceNormalization
elementwise unary ops       same layout (stats are taken where channels are mixed, so
                            f(0) != 0 needs no special case)
Add/Sub/Mul/Div/...         two tracked inputs: their atoms are tied position-wise
                            (a residual union); one tracked input and a constant
                            broadcasting per channel: that constant is sliced
Sum/Max/Min/Mean            all inputs tracked: tied
MaxPool/AveragePool/Pad/    same layout (they act on the other axes only; Pad and Slice
Slice/Global*Pool/Reduce*   are checked not to touch axes 0 and 1)
Concat (axis 1)             layouts concatenated (offsets); untracked parts pinned
Flatten/Squeeze/Reshape     same layout when only size-1 axes after axis 1 go away
Squeeze/Unsqueeze           same layout when the axes are all after axis 1
Gemm (transA 0), MatMul     consumer: B columns (transB 1) or rows (transB 0 / MatMul)
anything else               ``Pin``: every channel it reads is kept, with the reason
==========================  ============================================================

Grouped Conv. With g groups, C_in = g·b_in inputs and C_out = g·b_out outputs,
W has shape (C_out, b_in, k…) and

    y[o] = B[o] + Σ_{c < b_in} W[o, c] ⋆ x[j·b_in + c],     j = ⌊o / b_out⌋,

so output block j reads input block j only. After pruning, with K_j ⊆ block j the kept
inputs and R_j the kept outputs, the Conv is again a grouped Conv exactly when every
group that stays has the same |K_j| ≥ 1 and the same |R_j| ≥ 1: its new W stacks
W[R_j, K_j − j·b_in] over the staying groups j, and ``group`` is their number. A group
whose inputs and outputs all go is dropped whole (it reads nothing that stays and
nothing reads it), so g shrinks while the block sizes stay. A group with every input
gone but an output kept (or the reverse) cannot be written as a Conv, nor can unequal
counts; the plan keeps channels until neither happens (``plan._balance_one``). This is
exact: removed outputs are those the plan proved dead (or folded into their consumers),
removed inputs are dead at this Conv too (or folded into its bias, B[o] += Σ_taps
W[o, c]·v for o in block j). Rewriting the Conv into g Convs + Concat would allow
unequal blocks, but changes the graph's structure: not done.

MatMul has no bias, so a constant input channel needs somewhere to go. When the only
reader of its output is an ``Add`` of a constant that broadcasts over the output
features (the exporters' ``MatMul → Add(bias)``), that constant is the bias. Otherwise
a MatMul that must absorb a constant becomes the Gemm it equals (A is a 2-D matrix and B
a constant matrix, so ``MatMul(A, B) + C = Gemm(A, B, C)``): one node stays one node,
and onnxruntime fuses a 2-D MatMul + Add into a Gemm anyway, so a Gemm is no slower
than the inserted Add the alternative needs. Keeping the constant channels instead
(the old behaviour) would leave ``--threshold`` and the compensations without a bias.

A rule returns a ``Flow`` (output layouts, parameters to slice, ties, consumers, grouped
blocks) or a ``Pin`` naming why the node cannot be followed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import onnx

from dsp_deploy.compress.graph import Shape, attr

Layout = tuple[int, ...]

# Roles of a sliced parameter: which end of a group it belongs to.
PRODUCER, PER_CHANNEL, CONSUMER, DEPTHWISE = "producer", "per-channel", "consumer", "depthwise"
COUNT = "count"  # entry ``axis`` of a Reshape's shape constant: set to the channels kept

ACTIVATIONS = frozenset(
    {
        "Relu",
        "LeakyRelu",
        "PRelu",
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
    }
)
UNARY = ACTIVATIONS | frozenset(
    {
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
    }
)
POOLS = frozenset(
    {"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
)
REDUCES = frozenset(
    {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2", "ReduceSumSquare"}
)
BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Pow"})
VARIADIC = frozenset({"Sum", "Max", "Min", "Mean"})


@dataclass(frozen=True)
class Slice:
    """Parameter ``node.input[input]`` is sliced on ``axis`` at the positions of ``layout``."""

    node: int
    input: int
    axis: int
    layout: Layout
    role: str


@dataclass(frozen=True)
class Consumer:
    """A channel-mixing node reading ``tensor`` (layout ``layout``); kind conv|gemm|matmul.

    ``foldable``: a constant input channel can go into its bias exactly. With x[p] = v
    at every position, y[o, t] = b[o] + v · Σ_{taps j read at t} W[o, p, j]: that is
    the constant ``b[o] + v · Σ_j W[o, p, j]`` only where every tap reads data, i.e. with
    no padding at all (pads 0, auto_pad NOTSET/VALID: ``_unpadded``). Zero padding
    makes the sum at the borders miss the taps that fall on it (they read 0, not v), so
    a padded Conv keeps its constant channels (``plan`` says why); a zero channel is
    exact through any zero padding. ``pointwise``: output = W x + b per position
    (1×1 Conv without padding, Gemm, MatMul), so a least-squares refit on x's Gram
    matrix applies. ``bias``: the (node, input) holding the bias — input 2 of the node
    itself (added when missing) or the constant of the ``Add`` after a MatMul.
    ``groups``: a grouped Conv's g (input block j feeds output block j only).
    """

    node: int
    tensor: str
    layout: Layout
    kind: str
    foldable: bool
    pointwise: bool
    bias: tuple[int, int] | None = None
    groups: int = 1

    @property
    def bias_at(self) -> tuple[int, int]:
        return self.bias if self.bias is not None else (self.node, 2)


@dataclass(frozen=True)
class Blocks:
    """A grouped Conv (position ``node``, ``groups`` = g): output block j (``outputs``
    split in g equal parts) reads input block j only; ``inputs`` None when untracked."""

    node: int
    groups: int
    inputs: Layout | None
    outputs: Layout

    def input_block(self, j: int) -> Layout:
        if self.inputs is None:
            return ()
        size = len(self.inputs) // self.groups
        return self.inputs[j * size : (j + 1) * size]

    def output_block(self, j: int) -> Layout:
        size = len(self.outputs) // self.groups
        return self.outputs[j * size : (j + 1) * size]


@dataclass(frozen=True)
class Flow:
    outputs: tuple[Layout | None, ...]
    slices: tuple[Slice, ...] = ()
    ties: tuple[tuple[Layout, Layout], ...] = ()
    consumers: tuple[Consumer, ...] = ()
    pinned: tuple[tuple[Layout, str], ...] = field(default=())
    blocks: tuple[Blocks, ...] = ()


@dataclass(frozen=True)
class Pin:
    reason: str


class Context(Protocol):
    def layout(self, name: str) -> Layout | None: ...
    def const(self, name: str) -> np.ndarray | None: ...
    def shape(self, name: str) -> Shape | None: ...
    def new_atoms(self, node: int, count: int) -> Layout: ...
    def readers(self, name: str) -> tuple[int, ...]: ...  # node positions; -1: graph output
    def node(self, position: int) -> onnx.NodeProto: ...


Rule = Callable[[int, onnx.NodeProto, Context], Flow | Pin]


def _input(node: onnx.NodeProto, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _tracked_elsewhere(node: onnx.NodeProto, ctx: Context, allowed: tuple[int, ...]) -> int | None:
    for i, name in enumerate(node.input):
        if name and i not in allowed and ctx.layout(name) is not None:
            return i
    return None


def _rank(ctx: Context, name: str) -> int | None:
    shape = ctx.shape(name)
    return None if shape is None else len(shape)


def _same(node: onnx.NodeProto, ctx: Context, slices: tuple[Slice, ...] = ()) -> Flow:
    x = ctx.layout(node.input[0])
    return Flow(outputs=(x,) + (None,) * (len(node.output) - 1), slices=slices)


def _unpadded(node: onnx.NodeProto) -> bool:
    """No output position of the Conv reads padding: every pad 0, and ``auto_pad``
    NOTSET or VALID (a SAME that ``normalise`` could not make explicit pads)."""
    auto_pad = attr(node, "auto_pad", "NOTSET")
    return auto_pad in ("NOTSET", "VALID") and not any(attr(node, "pads", None) or ())


def conv(i: int, node: onnx.NodeProto, ctx: Context) -> Flow | Pin:
    if _tracked_elsewhere(node, ctx, (0,)) is not None:
        return Pin("weight or bias is computed from channels")
    w = ctx.const(node.input[1])
    if w is None or (_input(node, 2) and ctx.const(node.input[2]) is None):
        return Pin("weight or bias is not a constant")
    group, x = attr(node, "group", 1), ctx.layout(node.input[0])
    bias = (2,) if _input(node, 2) else ()
    if group == 1:
        out = ctx.new_atoms(i, w.shape[0])
        slices = tuple(Slice(i, k, 0, out, PRODUCER) for k in (1, *bias))
        if x is None:
            return Flow((out,), slices)
        unpadded = _unpadded(node)
        pointwise = unpadded and int(np.prod(w.shape[2:])) == 1
        read = Consumer(i, node.input[0], x, "conv", unpadded, pointwise)
        return Flow((out,), (*slices, Slice(i, 1, 1, x, CONSUMER)), consumers=(read,))
    if x is not None and w.shape[1] == 1 and w.shape[0] == group == len(x):
        return Flow((x,), tuple(Slice(i, k, 0, x, DEPTHWISE) for k in (1, *bias)))
    return _grouped(i, node, ctx, w, x)


def _grouped(
    i: int, node: onnx.NodeProto, ctx: Context, w: np.ndarray, x: Layout | None
) -> Flow | Pin:
    """A grouped Conv: a source in g output blocks, a consumer of g input blocks; W and
    B are rewritten whole by ``prune`` (no ``Slice``), from the ``Blocks`` record."""
    group = attr(node, "group", 1)
    if w.shape[0] % group or (x is not None and len(x) != group * w.shape[1]):
        width = "unknown" if x is None else len(x)
        return Pin(f"grouped Conv (group={group}) with W {w.shape} and {width} input channels")
    out = ctx.new_atoms(i, w.shape[0])
    blocks = (Blocks(i, group, x, out),)
    if x is None:
        return Flow((out,), blocks=blocks)
    read = Consumer(i, node.input[0], x, "conv", _unpadded(node), False, groups=group)
    return Flow((out,), consumers=(read,), blocks=blocks)


def per_channel_params(inputs: tuple[int, ...]) -> Rule:
    def rule(i: int, node: onnx.NodeProto, ctx: Context) -> Flow | Pin:
        if _tracked_elsewhere(node, ctx, (0,)) is not None:
            return Pin("parameters are computed from channels")
        x = ctx.layout(node.input[0])
        present = [k for k in inputs if _input(node, k)]
        if any(ctx.const(node.input[k]) is None for k in present):
            return Pin("per-channel parameters are not constants")
        return _same(node, ctx, tuple(Slice(i, k, 0, x, PER_CHANNEL) for k in present))

    return rule


def unary(i: int, node: onnx.NodeProto, ctx: Context) -> Flow | Pin:
    extra = _tracked_elsewhere(node, ctx, (0,))
    if extra is not None:
        return Pin(f"input {extra} is channel data")
    if node.op_type == "PRelu":
        slope = ctx.const(node.input[1])
        return _const_operand(i, node, ctx, 1, slope, node.input[0])
    return _same(node, ctx)


def _channel_axis(ndim: int, rank: int) -> int | None:
    """Axis of an ``ndim``-d operand that broadcasts onto axis 1 of a rank-``rank`` tensor."""
    axis = 1 - (rank - ndim)
    return axis if 0 <= axis < ndim else None


def _const_operand(
    i: int, node: onnx.NodeProto, ctx: Context, k: int, value: np.ndarray | None, data: str
) -> Flow | Pin:
    x, rank = ctx.layout(data), _rank(ctx, data)
    if value is None or rank is None or value.ndim > rank:
        return Pin("other operand is neither a constant nor a channel tensor")
    axis = _channel_axis(value.ndim, rank)
    if axis is None or value.shape[axis] == 1:
        return Flow((x,))
    if value.shape[axis] != len(x):
        return Pin(f"constant of shape {value.shape} does not broadcast per channel")
    return Flow((x,), (Slice(i, k, axis, x, PER_CHANNEL),))


def binary(i: int, node: onnx.NodeProto, ctx: Context) -> Flow | Pin:
    a, b = (ctx.layout(n) for n in node.input[:2])
    if a is not None and b is not None:
        if len(a) != len(b) or _rank(ctx, node.input[0]) != _rank(ctx, node.input[1]):
            return Pin("operands differ in channels or rank")
        return Flow((a,), ties=((a, b),))
    k = 1 if a is not None else 0
    if node.op_type in ("Sub", "Div", "Pow") and k == 0:
        return Pin("channel tensor on the right of a non-commutative op")
    value = ctx.const(node.input[k])
    if value is None:
        shape = ctx.shape(node.input[k])
        data_rank = _rank(ctx, node.input[1 - k])
        if shape is not None and data_rank is not None and len(shape) <= data_rank:
            axis = _channel_axis(len(shape), data_rank)
            if axis is None or shape[axis] == 1:
                return Flow((ctx.layout(node.input[1 - k]),))
        return Pin("other operand is computed and broadcasts over channels")
    return _const_operand(i, node, ctx, k, value, node.input[1 - k])


def variadic(i: int, node: onnx.NodeProto, ctx: Context) -> Flow | Pin:
    layouts = [ctx.layout(n) for n in node.input]
    if any(x is None for x in layouts) or len({len(x) for x in layouts}) != 1:
        return Pin("inputs are not all channel tensors of equal width")
    return Flow((layouts[0],), ties=tuple((layouts[0], x) for x in layouts[1:]))


def _axes(node: onnx.NodeProto, ctx: Context, position: int) -> list[int] | None:
    value = attr(node, "axes")
    if value is None and _input(node, position):
        const = ctx.const(node.input[position])
        value = None if const is None else const.tolist()
    return None if value is None else list(value)


def _norm(axes: list[int], rank: int) -> set[int]:
    return {a + rank if a < 0 else a for a in axes}


def pool(i: int, node: onnx.NodeProto, ctx: Context) -> Flow | Pin:
    return _same(node, ctx)


def reduce(i: int, node: onnx.NodeProto, ctx: Context) -> Flow | Pin:
    axes, rank = _axes(node, ctx, 1), _rank(ctx, node.input[0])
    if not axes or rank is None or _norm(axes, rank) & {0, 1}:
        return Pin("reduces over the batch or channel axis (or all axes)")
    return _same(node, ctx)


def pad(i: int, node: onnx.NodeProto, ctx: Context) -> Flow | Pin:
    pads = attr(node, "pads")
    if pads is None and _input(node, 1):
        const = ctx.const(node.input[1])
        pads = None if const is None else const.tolist()
    rank = _rank(ctx, node.input[0])
    axes = _axes(node, ctx, 3) if _input(node, 3) else list(range(rank or 0))
    if pads is None or rank is None or axes is None:
        return Pin("pads are not constant")
    n, axes = len(axes), [a + rank if a < 0 else a for a in axes]
    touched = {a for a, lo, hi in zip(axes, pads[:n], pads[n:], strict=True) if lo or hi}
    return Pin("pads the batch or channel axis") if touched & {0, 1} else _same(node, ctx)


def slice_(i: int, node: onnx.NodeProto, ctx: Context) -> Flow | Pin:
    rank = _rank(ctx, node.input[0])
    axes = _axes(node, ctx, 3) if _input(node, 3) else None
    if rank is None or axes is None or _norm(axes, rank) & {0, 1}:
        return Pin("slices the batch or channel axis (or axes unknown)")
    return _same(node, ctx)


def concat(i: int, node: onnx.NodeProto, ctx: Context) -> Flow | Pin:
    rank = _rank(ctx, node.output[0]) or _rank(ctx, node.input[0])
    if rank is None:
        return Pin("rank unknown")
    axis = attr(node, "axis") % rank
    layouts = [ctx.layout(n) for n in node.input]
    if axis != 1:
        if any(x is None for x in layouts):
            return Pin("concatenates a channel tensor with an untracked one")
        return variadic(i, node, ctx)
    parts, pinned = [], []
    for name, x in zip(node.input, layouts, strict=True):
        if x is None:
            shape = ctx.shape(name)
            if shape is None or shape[1] is None:
                return Pin(f"channel count of input {name} unknown")
            x = ctx.new_atoms(-1, shape[1])
            pinned.append((x, f"untracked input {name} of Concat"))
        parts.extend(x)
    return Flow((tuple(parts),), pinned=tuple(pinned))


def _only_unit_axes_after_1(ctx: Context, src: str, dst: str) -> bool:
    a, b = ctx.shape(src), ctx.shape(dst)
    if a is None or b is None or len(a) < 2 or len(b) < 2 or a[1] is None:
        return False
    return a[1] == b[1] and all(d == 1 for d in (*a[2:], *b[2:]))


def reshape_like(i: int, node: onnx.NodeProto, ctx: Context) -> Flow | Pin:
    if node.op_type == "Flatten" and attr(node, "axis", 1) != 1:
        return Pin("Flatten with axis != 1 merges the batch and channel axes")
    if not _only_unit_axes_after_1(ctx, node.input[0], node.output[0]):
        return Pin("changes the channel axis (only size-1 axes after it may go)")
    if node.op_type != "Reshape":
        return _same(node, ctx)
    # A literal channel count in a constant shape (the dynamo exporter writes [-1, C])
    # follows the pruning; 0 (copy), -1 (inferred) and computed shapes need nothing.
    target = ctx.const(node.input[1])
    literal = target is not None and target.ndim == 1 and len(target) > 1 and target[1] > 0
    count = (Slice(i, 1, 1, ctx.layout(node.input[0]), COUNT),) if literal else ()
    return _same(node, ctx, count)


def squeeze_like(i: int, node: onnx.NodeProto, ctx: Context) -> Flow | Pin:
    """Squeeze / Unsqueeze of axes after the channel axis keep it (the dynamo exporter
    writes adaptive_avg_pool1d as Unsqueeze → ReduceMean → Squeeze); else as Reshape."""
    # Unsqueeze's axes index its output, Squeeze's its input.
    ranked = node.output[0] if node.op_type == "Unsqueeze" else node.input[0]
    axes, rank = _axes(node, ctx, 1), _rank(ctx, ranked)
    if axes and rank is not None and not _norm(axes, rank) & {0, 1}:
        return _same(node, ctx)
    return reshape_like(i, node, ctx)


def softmax(i: int, node: onnx.NodeProto, ctx: Context) -> Flow | Pin:
    rank = _rank(ctx, node.input[0])
    if rank is None or attr(node, "axis", -1) % rank < 2:
        return Pin("normalises across channels")
    return _same(node, ctx)


def gemm(i: int, node: onnx.NodeProto, ctx: Context) -> Flow | Pin:
    if _tracked_elsewhere(node, ctx, (0,)) is not None:
        return Pin("weight or bias is channel data")
    x = ctx.layout(node.input[0])
    if attr(node, "transA", 0) or _rank(ctx, node.input[0]) != 2:
        return Pin("A is transposed or not a (batch, features) matrix")
    w = ctx.const(node.input[1])
    if w is None or w.ndim != 2:
        return Pin("B is not a constant matrix")
    axis = 1 if attr(node, "transB", 0) else 0
    read = Consumer(i, node.input[0], x, "gemm", True, True)
    return Flow((None,), (Slice(i, 1, axis, x, CONSUMER),), consumers=(read,))


def matmul(i: int, node: onnx.NodeProto, ctx: Context) -> Flow | Pin:
    if _tracked_elsewhere(node, ctx, (0,)) is not None or _rank(ctx, node.input[0]) != 2:
        return Pin("channels are not the contracted axis of a (batch, features) matrix")
    w = ctx.const(node.input[1])
    if w is None or w.ndim != 2:
        return Pin("B is not a constant matrix")
    x = ctx.layout(node.input[0])
    read = Consumer(i, node.input[0], x, "matmul", True, True, _bias_add(node, ctx, w.shape[1]))
    return Flow((None,), (Slice(i, 1, 0, x, CONSUMER),), consumers=(read,))


def _bias_add(node: onnx.NodeProto, ctx: Context, features: int) -> tuple[int, int] | None:
    """(Add node, input) of the constant bias added to a MatMul's output, when that Add is
    its only reader; None: the MatMul becomes a Gemm if it must take a bias."""
    readers = ctx.readers(node.output[0])
    if len(readers) != 1 or readers[0] < 0:
        return None
    add = ctx.node(readers[0])
    if add.op_type != "Add" or len(add.input) != 2 or add.domain not in ("", "ai.onnx"):
        return None
    k = 1 if add.input[0] == node.output[0] else 0
    value = ctx.const(add.input[k])
    if value is None or add.input[k] == node.output[0] or value.ndim > 2:
        return None
    if value.size not in (1, features) or (value.ndim == 2 and value.shape[0] != 1):
        return None
    return readers[0], k


RULES: dict[str, Rule] = {
    "Conv": conv,
    "BatchNormalization": per_channel_params((1, 2, 3, 4)),
    "InstanceNormalization": per_channel_params((1, 2)),
    **dict.fromkeys(UNARY, unary),
    **dict.fromkeys(BINARY, binary),
    **dict.fromkeys(VARIADIC, variadic),
    **dict.fromkeys(POOLS, pool),
    **dict.fromkeys(REDUCES, reduce),
    "Pad": pad,
    "Slice": slice_,
    "Concat": concat,
    "Flatten": reshape_like,
    "Squeeze": squeeze_like,
    "Unsqueeze": squeeze_like,
    "Reshape": reshape_like,
    "Softmax": softmax,
    "LogSoftmax": softmax,
    "Gemm": gemm,
    "MatMul": matmul,
}

# Ops that start a group even when no input is tracked.
SOURCES = frozenset({"Conv"})


def apply(i: int, node: onnx.NodeProto, ctx: Context) -> Flow | Pin:
    """The flow of channels through ``node`` (``Pin`` for ops outside the table)."""
    rule = RULES.get(node.op_type)
    if rule is None or node.domain not in ("", "ai.onnx"):
        return Pin(f"{node.op_type} is not in the channel-flow table")
    return rule(i, node, ctx)

"""Per-op channel-flow rules: how the channel axis (axis 1) of a tensor passes through a node.

A *layout* is a tuple of atom ids, one per position on axis 1: position p of the tensor
carries atom ``layout[p]`` (``flow`` has the records, ``views`` the rules for Flatten,
Reshape, Squeeze, Slice and Shape). A Conv (group 1) creates fresh atoms for its output
channels; every other rule says where its input atoms end up:

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
Add/Sub/Mul/Div/...         two tracked inputs of equal width: their atoms are tied
                            position-wise (a residual union); of widths C and 1 (same
                            rank: an attention map): the C pass, the 1 is pinned; one
                            tracked input and a constant or a computed tensor whose
                            channel axis has size 1: passes; a constant broadcasting
                            per channel: that constant is sliced
Sum/Max/Min/Mean            all inputs tracked: tied
MaxPool/AveragePool/Pad/    same layout (they act on the other axes only; Pad is
Global*Pool/Reduce*         checked not to touch axes 0 and 1)
Concat (axis 1)             layouts concatenated (offsets); untracked parts pinned (a
                            width shape inference lacks: what the output's leaves)
Slice, every opset          same layout when axes 0 and 1 are taken whole (``views``)
Flatten/Reshape to (N, −1)  over (C, L), L static: each atom repeated L times (``views``)
Flatten/Squeeze/Reshape     same layout when only size-1 axes after axis 1 go away
Squeeze/Unsqueeze           same layout when the axes are all after axis 1
Shape                       untracked output, nothing pinned, when no reader reads its
                            entry 1 (the channel count); else pins (``views``)
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

import numpy as np
import onnx

from dsp_deploy.compress import views
from dsp_deploy.compress.flow import (  # re-exported: groups, plan, prune import them here
    CONSUMER,
    COUNT,  # noqa: F401
    DEPTHWISE,
    PER_CHANNEL,
    PRODUCER,
    Blocks,
    Consumer,
    Context,
    Flow,
    Layout,
    Pin,
    Rule,
    Slice,
    axes_of,
    input_name,
    normalise_axes,
    rank_of,
    same,
    tracked_elsewhere,
)
from dsp_deploy.compress.graph import attr

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
# A Gemm / MatMul refitted by least squares needs the (F + 1)² Gram matrix of its F input
# features: F ≤ 4,096 (128 MiB). A Flatten over (C, L) can give far more; those get "mean".
REFIT_FEATURES = 4096


def _unpadded(node: onnx.NodeProto) -> bool:
    """No output position of the Conv reads padding: every pad 0, and ``auto_pad``
    NOTSET or VALID (a SAME that ``normalise`` could not make explicit pads)."""
    auto_pad = attr(node, "auto_pad", "NOTSET")
    return auto_pad in ("NOTSET", "VALID") and not any(attr(node, "pads", None) or ())


def conv(i: int, node: onnx.NodeProto, ctx: Context) -> Flow | Pin:
    if tracked_elsewhere(node, ctx, (0,)) is not None:
        return Pin("weight or bias is computed from channels")
    w = ctx.const(node.input[1])
    if w is None or (input_name(node, 2) and ctx.const(node.input[2]) is None):
        return Pin("weight or bias is not a constant")
    group, x = attr(node, "group", 1), ctx.layout(node.input[0])
    bias = (2,) if input_name(node, 2) else ()
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
        if tracked_elsewhere(node, ctx, (0,)) is not None:
            return Pin("parameters are computed from channels")
        x = ctx.layout(node.input[0])
        present = [k for k in inputs if input_name(node, k)]
        if any(ctx.const(node.input[k]) is None for k in present):
            return Pin("per-channel parameters are not constants")
        return same(node, ctx, tuple(Slice(i, k, 0, x, PER_CHANNEL) for k in present))

    return rule


def unary(i: int, node: onnx.NodeProto, ctx: Context) -> Flow | Pin:
    extra = tracked_elsewhere(node, ctx, (0,))
    if extra is not None:
        return Pin(f"input {extra} is channel data")
    if node.op_type == "PRelu":
        slope = ctx.const(node.input[1])
        return _const_operand(i, node, ctx, 1, slope, node.input[0])
    return same(node, ctx)


def _channel_axis(ndim: int, rank: int) -> int | None:
    """Axis of an ``ndim``-d operand that broadcasts onto axis 1 of a rank-``rank`` tensor."""
    axis = 1 - (rank - ndim)
    return axis if 0 <= axis < ndim else None


def _const_operand(
    i: int, node: onnx.NodeProto, ctx: Context, k: int, value: np.ndarray | None, data: str
) -> Flow | Pin:
    x, rank = ctx.layout(data), rank_of(ctx, data)
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
        return _both_tracked(node, ctx, a, b)
    k = 1 if a is not None else 0
    if node.op_type in ("Sub", "Div", "Pow") and k == 0:
        return Pin("channel tensor on the right of a non-commutative op")
    value = ctx.const(node.input[k])
    if value is None:
        shape = ctx.shape(node.input[k])
        data_rank = rank_of(ctx, node.input[1 - k])
        if shape is not None and data_rank is not None and len(shape) <= data_rank:
            axis = _channel_axis(len(shape), data_rank)
            if axis is None or shape[axis] == 1:
                return Flow((ctx.layout(node.input[1 - k]),))
        return Pin("other operand is computed and broadcasts over channels")
    return _const_operand(i, node, ctx, k, value, node.input[1 - k])


def _both_tracked(node: onnx.NodeProto, ctx: Context, a: Layout, b: Layout) -> Flow | Pin:
    """Equal widths: tied position-wise. One channel against C (same rank): it broadcasts,
    y[c] = a[c] ∘ b[0]; the output carries the wide layout and the one channel is pinned:
    it is a factor of every output channel, so it cannot go while any of them stays."""
    ranks = (rank_of(ctx, node.input[0]), rank_of(ctx, node.input[1]))
    if ranks[0] != ranks[1]:
        return Pin("operands differ in rank")
    if len(a) == len(b):
        return Flow((a,), ties=((a, b),))
    if 1 not in (len(a), len(b)) or ranks[0] is None:
        return Pin("operands differ in channels (neither has one to broadcast)")
    wide, one = (a, b) if len(b) == 1 else (b, a)
    why = f"its one channel broadcasts over the {len(wide)} of the other operand"
    return Flow((wide,), pinned=((one, why),))


def variadic(i: int, node: onnx.NodeProto, ctx: Context) -> Flow | Pin:
    layouts = [ctx.layout(n) for n in node.input]
    if any(x is None for x in layouts) or len({len(x) for x in layouts}) != 1:
        return Pin("inputs are not all channel tensors of equal width")
    return Flow((layouts[0],), ties=tuple((layouts[0], x) for x in layouts[1:]))


def pool(i: int, node: onnx.NodeProto, ctx: Context) -> Flow | Pin:
    return same(node, ctx)


def reduce(i: int, node: onnx.NodeProto, ctx: Context) -> Flow | Pin:
    axes, rank = axes_of(node, ctx, 1), rank_of(ctx, node.input[0])
    if not axes or rank is None or normalise_axes(axes, rank) & {0, 1}:
        return Pin("reduces over the batch or channel axis (or all axes)")
    return same(node, ctx)


def pad(i: int, node: onnx.NodeProto, ctx: Context) -> Flow | Pin:
    pads = attr(node, "pads")
    if pads is None and input_name(node, 1):
        const = ctx.const(node.input[1])
        pads = None if const is None else const.tolist()
    rank = rank_of(ctx, node.input[0])
    axes = axes_of(node, ctx, 3) if input_name(node, 3) else list(range(rank or 0))
    if pads is None or rank is None or axes is None:
        return Pin("pads are not constant")
    n, axes = len(axes), [a + rank if a < 0 else a for a in axes]
    touched = {a for a, lo, hi in zip(axes, pads[:n], pads[n:], strict=True) if lo or hi}
    return Pin("pads the batch or channel axis") if touched & {0, 1} else same(node, ctx)


def concat(i: int, node: onnx.NodeProto, ctx: Context) -> Flow | Pin:
    # Shape inference loses the rank after ops it cannot see through (tsai's AddCoords1d
    # builds its channel with Expand(…, ConstantOfShape(…)) and Tile): any known one does.
    ranks = [r for r in (rank_of(ctx, n) for n in (node.output[0], *node.input)) if r]
    if not ranks:
        return Pin("rank unknown")
    axis = attr(node, "axis") % ranks[0]
    layouts = [ctx.layout(n) for n in node.input]
    if axis != 1:
        if any(x is None for x in layouts):
            return Pin("concatenates a channel tensor with an untracked one")
        return variadic(i, node, ctx)
    widths = _concat_widths(node, ctx, layouts)
    if widths is None:
        return Pin("channel count of an untracked input unknown")
    parts, pinned = [], []
    for name, x, width in zip(node.input, layouts, widths, strict=True):
        if x is None:
            x = ctx.new_atoms(-1, width)
            pinned.append((x, f"untracked input {name} of Concat"))
        parts.extend(x)
    return Flow((tuple(parts),), pinned=tuple(pinned))


def _dim1(ctx: Context, name: str) -> int | None:
    shape = ctx.shape(name)
    return shape[1] if shape is not None and len(shape) > 1 else None


def _concat_widths(
    node: onnx.NodeProto, ctx: Context, layouts: list[Layout | None]
) -> list[int] | None:
    """Each input's channel count; one that shape inference lacks is what the output's
    (inferred, or C_in of a Conv reading it) leaves."""
    widths = [
        _dim1(ctx, n) if x is None else len(x) for n, x in zip(node.input, layouts, strict=True)
    ]
    unknown = [k for k, w in enumerate(widths) if w is None]
    if not unknown:
        return widths
    total = _dim1(ctx, node.output[0]) or _conv_input_width(ctx, node.output[0])
    if len(unknown) != 1 or total is None:
        return None
    widths[unknown[0]] = total - sum(w for w in widths if w is not None)
    return widths if widths[unknown[0]] > 0 else None


def _conv_input_width(ctx: Context, name: str) -> int | None:
    """C_in = W.shape[1] · group of a Conv reading ``name`` as its data input."""
    for position in ctx.readers(name):
        node = None if position < 0 else ctx.node(position)
        if node is not None and node.op_type == "Conv" and node.input[0] == name:
            w = ctx.const(node.input[1])
            if w is not None:
                return w.shape[1] * attr(node, "group", 1)
    return None


def softmax(i: int, node: onnx.NodeProto, ctx: Context) -> Flow | Pin:
    rank = rank_of(ctx, node.input[0])
    if rank is None or attr(node, "axis", -1) % rank < 2:
        return Pin("normalises across channels")
    return same(node, ctx)


def gemm(i: int, node: onnx.NodeProto, ctx: Context) -> Flow | Pin:
    if tracked_elsewhere(node, ctx, (0,)) is not None:
        return Pin("weight or bias is channel data")
    x = ctx.layout(node.input[0])
    # Gemm's A is 2-D by definition (old Reshapes infer no rank for a computed target).
    if attr(node, "transA", 0) or rank_of(ctx, node.input[0]) not in (2, None):
        return Pin("A is transposed or not a (batch, features) matrix")
    w = ctx.const(node.input[1])
    if w is None or w.ndim != 2:
        return Pin("B is not a constant matrix")
    axis = 1 if attr(node, "transB", 0) else 0
    read = Consumer(i, node.input[0], x, "gemm", True, len(x) <= REFIT_FEATURES)
    return Flow((None,), (Slice(i, 1, axis, x, CONSUMER),), consumers=(read,))


def matmul(i: int, node: onnx.NodeProto, ctx: Context) -> Flow | Pin:
    if tracked_elsewhere(node, ctx, (0,)) is not None or rank_of(ctx, node.input[0]) != 2:
        return Pin("channels are not the contracted axis of a (batch, features) matrix")
    w = ctx.const(node.input[1])
    if w is None or w.ndim != 2:
        return Pin("B is not a constant matrix")
    x = ctx.layout(node.input[0])
    bias = _bias_add(node, ctx, w.shape[1])
    read = Consumer(i, node.input[0], x, "matmul", True, len(x) <= REFIT_FEATURES, bias)
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
    "Slice": views.slice_,
    "Concat": concat,
    "Flatten": views.reshape_like,
    "Squeeze": views.squeeze_like,
    "Unsqueeze": views.squeeze_like,
    "Reshape": views.reshape_like,
    "Shape": views.shape,
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

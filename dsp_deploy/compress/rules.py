"""Per-op channel-flow rules: how the channel axis (axis 1) of a tensor passes through a node.

A *layout* is a tuple of atom ids, one per position on axis 1: position p of the tensor
carries atom ``layout[p]`` (``flow`` has the records, ``views`` the rules for Flatten,
Reshape, Squeeze, Slice and Shape, ``ops`` the table saying which rule each op type
follows). A Conv (group 1) creates fresh atoms for its output channels; every other rule
says where its input atoms end up. A rule returns a ``Flow`` (output layouts, parameters
to slice, ties, consumers, grouped blocks) or a ``Pin`` naming why the node cannot be
followed.

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
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

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
    input_at,
    normalise_axes,
    rank_of,
    same,
    tracked_elsewhere,
)
from dsp_deploy.compress.graph import attr

# A Gemm / MatMul refitted by least squares needs the (F + 1)² Gram matrix of its F input
# features: F ≤ 4,096 (128 MiB). A Flatten over (C, L) can give far more; those get "mean".
REFIT_FEATURES = 4096


def _unpadded(node: ir.Node) -> bool:
    """No output position of the Conv reads padding: every pad 0, and ``auto_pad``
    NOTSET or VALID (a SAME that ``normalise`` could not make explicit pads)."""
    auto_pad = attr(node, "auto_pad", "NOTSET")
    return auto_pad in ("NOTSET", "VALID") and not any(attr(node, "pads", None) or ())


def conv(i: int, node: ir.Node, ctx: Context) -> Flow | Pin:
    # A weight or bias computed from channels is no constant: the check below pins it.
    w = ctx.const(node.inputs[1])
    if w is None or (input_at(node, 2) is not None and ctx.const(node.inputs[2]) is None):
        return Pin("weight or bias is not a constant")
    group, x = attr(node, "group", 1), ctx.layout(node.inputs[0])
    bias = (2,) if input_at(node, 2) is not None else ()
    if group == 1:
        out = ctx.new_atoms(i, w.shape[0])
        slices = tuple(Slice(i, k, 0, out, PRODUCER) for k in (1, *bias))
        if x is None:
            return Flow((out,), slices)
        unpadded = _unpadded(node)
        pointwise = unpadded and int(np.prod(w.shape[2:])) == 1
        read = Consumer(i, node.inputs[0].name, x, "conv", unpadded, pointwise)
        return Flow((out,), (*slices, Slice(i, 1, 1, x, CONSUMER)), consumers=(read,))
    if x is not None and w.shape[1] == 1 and w.shape[0] == group == len(x):
        return Flow((x,), tuple(Slice(i, k, 0, x, DEPTHWISE) for k in (1, *bias)))
    return _grouped(i, node, ctx, w, x)


def _grouped(i: int, node: ir.Node, ctx: Context, w: np.ndarray, x: Layout | None) -> Flow | Pin:
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
    read = Consumer(i, node.inputs[0].name, x, "conv", _unpadded(node), False, groups=group)
    return Flow((out,), consumers=(read,), blocks=blocks)


def per_channel_params(inputs: tuple[int, ...]) -> Rule:
    def rule(i: int, node: ir.Node, ctx: Context) -> Flow | Pin:
        # Parameters computed from channels are no constants: the check below pins them.
        x = ctx.layout(node.inputs[0])
        present = [k for k in inputs if input_at(node, k) is not None]
        if any(ctx.const(node.inputs[k]) is None for k in present):
            return Pin("per-channel parameters are not constants")
        return same(node, ctx, tuple(Slice(i, k, 0, x, PER_CHANNEL) for k in present))

    return rule


def unary(i: int, node: ir.Node, ctx: Context) -> Flow | Pin:
    extra = tracked_elsewhere(node, ctx, (0,))
    if extra is not None:
        return Pin(f"input {extra} is channel data")
    return same(node, ctx)


def prelu(i: int, node: ir.Node, ctx: Context) -> Flow | Pin:
    """A per-channel slope is sliced with the channels; a shared one passes."""
    if tracked_elsewhere(node, ctx, (0,)) is not None:
        return Pin("input 1 is channel data")
    return _const_operand(i, node, ctx, 1, ctx.const(node.inputs[1]), node.inputs[0])


def _channel_axis(ndim: int, rank: int) -> int | None:
    """Axis of an ``ndim``-d operand that broadcasts onto axis 1 of a rank-``rank`` tensor."""
    axis = 1 - (rank - ndim)
    return axis if 0 <= axis < ndim else None


def _const_operand(
    i: int, node: ir.Node, ctx: Context, k: int, value: np.ndarray | None, data: ir.Value
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


def binary(i: int, node: ir.Node, ctx: Context) -> Flow | Pin:
    a, b = (ctx.layout(n) for n in node.inputs[:2])
    if a is not None and b is not None:
        return _both_tracked(node, ctx, a, b)
    k = 1 if a is not None else 0
    if node.op_type in ("Sub", "Div", "Pow") and k == 0:
        return Pin("channel tensor on the right of a non-commutative op")
    value = ctx.const(node.inputs[k])
    if value is None:
        shape = ctx.shape(node.inputs[k])
        data_rank = rank_of(ctx, node.inputs[1 - k])
        if shape is not None and data_rank is not None and len(shape) <= data_rank:
            axis = _channel_axis(len(shape), data_rank)
            if axis is None or shape[axis] == 1:
                return Flow((ctx.layout(node.inputs[1 - k]),))
        return Pin("other operand is computed and broadcasts over channels")
    return _const_operand(i, node, ctx, k, value, node.inputs[1 - k])


def _both_tracked(node: ir.Node, ctx: Context, a: Layout, b: Layout) -> Flow | Pin:
    """Equal widths: tied position-wise. One channel against C (same rank): it broadcasts,
    y[c] = a[c] ∘ b[0]; the output carries the wide layout and the one channel is pinned:
    it is a factor of every output channel, so it cannot go while any of them stays."""
    ranks = (rank_of(ctx, node.inputs[0]), rank_of(ctx, node.inputs[1]))
    if ranks[0] != ranks[1]:
        return Pin("operands differ in rank")
    if len(a) == len(b):
        return Flow((a,), ties=((a, b),))
    if 1 not in (len(a), len(b)) or ranks[0] is None:
        return Pin("operands differ in channels (neither has one to broadcast)")
    wide, one = (a, b) if len(b) == 1 else (b, a)
    why = f"its one channel broadcasts over the {len(wide)} of the other operand"
    return Flow((wide,), pinned=((one, why),))


def variadic(i: int, node: ir.Node, ctx: Context) -> Flow | Pin:
    layouts = [ctx.layout(n) for n in node.inputs]
    if any(x is None for x in layouts) or len({len(x) for x in layouts}) != 1:
        return Pin("inputs are not all channel tensors of equal width")
    return Flow((layouts[0],), ties=tuple((layouts[0], x) for x in layouts[1:]))


def pool(i: int, node: ir.Node, ctx: Context) -> Flow | Pin:
    return same(node, ctx)


def reduce(i: int, node: ir.Node, ctx: Context) -> Flow | Pin:
    axes, rank = axes_of(node, ctx, 1), rank_of(ctx, node.inputs[0])
    if not axes or rank is None or normalise_axes(axes, rank) & {0, 1}:
        return Pin("reduces over the batch or channel axis (or all axes)")
    return same(node, ctx)


def pad(i: int, node: ir.Node, ctx: Context) -> Flow | Pin:
    pads = attr(node, "pads")
    if pads is None and input_at(node, 1) is not None:
        const = ctx.const(node.inputs[1])
        pads = None if const is None else const.tolist()
    rank = rank_of(ctx, node.inputs[0])
    axes = axes_of(node, ctx, 3) if input_at(node, 3) is not None else list(range(rank or 0))
    if pads is None or rank is None or axes is None:
        return Pin("pads are not constant")
    n, axes = len(axes), [a + rank if a < 0 else a for a in axes]
    touched = {a for a, lo, hi in zip(axes, pads[:n], pads[n:], strict=True) if lo or hi}
    return Pin("pads the batch or channel axis") if touched & {0, 1} else same(node, ctx)


def concat(i: int, node: ir.Node, ctx: Context) -> Flow | Pin:
    # Shape inference loses the rank after ops it cannot see through (tsai's AddCoords1d
    # builds its channel with Expand(…, ConstantOfShape(…)) and Tile): any known one does.
    ranks = [r for r in (rank_of(ctx, v) for v in (node.outputs[0], *node.inputs)) if r]
    if not ranks:
        return Pin("rank unknown")
    axis = attr(node, "axis") % ranks[0]
    layouts = [ctx.layout(n) for n in node.inputs]
    if axis != 1:
        if any(x is None for x in layouts):
            return Pin("concatenates a channel tensor with an untracked one")
        return variadic(i, node, ctx)
    widths = _concat_widths(node, ctx, layouts)
    if widths is None:
        return Pin("channel count of an untracked input unknown")
    parts, pinned = [], []
    for value, x, width in zip(node.inputs, layouts, widths, strict=True):
        if x is None:
            x = ctx.new_atoms(-1, width)
            pinned.append((x, f"untracked input {value.name} of Concat"))
        parts.extend(x)
    return Flow((tuple(parts),), pinned=tuple(pinned))


def _dim1(ctx: Context, value: ir.Value) -> int | None:
    shape = ctx.shape(value)
    return shape[1] if shape is not None and len(shape) > 1 else None


def _concat_widths(node: ir.Node, ctx: Context, layouts: list[Layout | None]) -> list[int] | None:
    """Each input's channel count; one that shape inference lacks is what the output's
    (inferred, or C_in of a Conv reading it) leaves."""
    widths = [
        _dim1(ctx, v) if x is None else len(x) for v, x in zip(node.inputs, layouts, strict=True)
    ]
    unknown = [k for k, w in enumerate(widths) if w is None]
    if not unknown:
        return widths
    total = _dim1(ctx, node.outputs[0]) or _conv_input_width(ctx, node.outputs[0])
    if len(unknown) != 1 or total is None:
        return None
    widths[unknown[0]] = total - sum(w for w in widths if w is not None)
    return widths if widths[unknown[0]] > 0 else None


def _conv_input_width(ctx: Context, value: ir.Value) -> int | None:
    """C_in = W.shape[1] · group of a Conv reading ``value`` as its data input."""
    for node in ctx.readers(value):
        if node is not None and node.op_type == "Conv" and node.inputs[0] is value:
            w = ctx.const(node.inputs[1])
            if w is not None:
                return w.shape[1] * attr(node, "group", 1)
    return None


def softmax(i: int, node: ir.Node, ctx: Context) -> Flow | Pin:
    rank = rank_of(ctx, node.inputs[0])
    if rank is None or attr(node, "axis", -1) % rank < 2:
        return Pin("normalises across channels")
    return same(node, ctx)


def gemm(i: int, node: ir.Node, ctx: Context) -> Flow | Pin:
    if tracked_elsewhere(node, ctx, (0,)) is not None:
        return Pin("weight or bias is channel data")
    x = ctx.layout(node.inputs[0])
    # Gemm's A is 2-D by definition (old Reshapes infer no rank for a computed target).
    if attr(node, "transA", 0) or rank_of(ctx, node.inputs[0]) not in (2, None):
        return Pin("A is transposed or not a (batch, features) matrix")
    w = ctx.const(node.inputs[1])
    if w is None or w.ndim != 2:
        return Pin("B is not a constant matrix")
    axis = 1 if attr(node, "transB", 0) else 0
    read = Consumer(i, node.inputs[0].name, x, "gemm", True, len(x) <= REFIT_FEATURES)
    return Flow((None,), (Slice(i, 1, axis, x, CONSUMER),), consumers=(read,))


def matmul(i: int, node: ir.Node, ctx: Context) -> Flow | Pin:
    if tracked_elsewhere(node, ctx, (0,)) is not None or rank_of(ctx, node.inputs[0]) != 2:
        return Pin("channels are not the contracted axis of a (batch, features) matrix")
    w = ctx.const(node.inputs[1])
    if w is None or w.ndim != 2:
        return Pin("B is not a constant matrix")
    x = ctx.layout(node.inputs[0])
    bias = _bias_add(node, ctx, w.shape[1])
    read = Consumer(i, node.inputs[0].name, x, "matmul", True, len(x) <= REFIT_FEATURES, bias)
    return Flow((None,), (Slice(i, 1, 0, x, CONSUMER),), consumers=(read,))


def _bias_add(node: ir.Node, ctx: Context, features: int) -> tuple[int, int] | None:
    """(Add node, input) of the constant bias added to a MatMul's output, when that Add is
    its only reader; None: the MatMul becomes a Gemm if it must take a bias."""
    readers = ctx.readers(node.outputs[0])
    add = readers[0] if len(readers) == 1 else None
    if add is None or add.op_type != "Add" or len(add.inputs) != 2:
        return None
    k = 1 if add.inputs[0] is node.outputs[0] else 0
    value = ctx.const(add.inputs[k])
    if add.domain not in ("", "ai.onnx") or value is None or add.inputs[k] is node.outputs[0]:
        return None
    if value.ndim > 2 or value.size not in (1, features):
        return None
    if value.ndim == 2 and value.shape[0] != 1:
        return None
    return ctx.position(add), k

"""Views and crops: the channel axis through Flatten, Reshape, Squeeze, Slice and Shape.

**Flatten over (C, L).** For x of shape (N, C, d_2, …, d_k) with L = d_2 ⋯ d_k static,
``Flatten(axis=1)`` gives f[n, c·L + t] = x[n, c, t] (t the row-major index over
d_2 … d_k). Position c·L + t of f carries channel c, so f's layout repeats each atom of
x L times:

    layout(f) = (a_0 ×L, a_1 ×L, …, a_{C−1} ×L)

Every rule after it works per position. A Gemm reading f is a consumer whose columns
c·L … c·L + L − 1 (transB 1; rows for transB 0 and MatMul) belong to a_c, so removing
a_c removes exactly those L columns; a constant v_{c,t} at the removed positions goes
into the bias as Σ_t W[:, c·L + t]·v_{c,t} (``prune``'s fold sums over positions). A
BatchNormalization or a per-feature constant over f's C·L features is sliced the same
way. a_c is dead at f when its L positions are all zero on every sample.

**Reshape to (N, −1).** A Reshape of x (N, C, d_2, …) is that Flatten when its target is
(N, −1): a constant [0 | −1 | N, −1 | C·L] (0 copies dim 0 unless ``allowzero``; a
literal C·L is a ``COUNT`` entry, rewritten to kept·L), or ``x.view(x.size(0), -1)`` as
the exporters write it: Concat(axis 0) of dim 0 of x — Unsqueeze(Gather(Shape(x), 0)),
Gather(Shape(x), [0]), Shape(x, start=0, end=1) or Slice(Shape(x), [0], [1]), through
Casts — and the constant [−1]. Otherwise a Reshape (or Flatten, Squeeze) keeps the
layout only when nothing but size-1 axes after axis 1 come or go.

**Shape.** Pruning changes axis 1 of a tracked tensor only, so Shape(x) changes in its
entry 1 only. When every reader of Shape(x) reads other entries (a Gather on axis 0 of
constant indices, a Slice of constant bounds; any reader when Shape's own start/end
leave entry 1 out), the Shape
neither needs nor blocks anything: its output is untracked and nothing is pinned. Any
other reader (ConstantOfShape(Shape(x)), a Concat of the whole vector, a graph output)
sees the channel count: x's channels are pinned.

**Slice**, every opset alike (starts/ends/axes attributes before opset 10, inputs 1–4
from it; axes omitted = 0, 1, … len(starts) − 1): the layout passes when axes 0 and 1
are untouched — not listed, or listed with step 1, start 0 (or ≤ −dim) and end ≥ dim
(or ≥ 2³¹ − 1, the exporters' "to the end"). On axis 1, dim is the channel count before
pruning, so a crop that takes every channel still does after it. Anything else, or
bounds that are not constants on those axes, pins.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from dsp_deploy.compress.flow import (
    COUNT,
    Context,
    Flow,
    Layout,
    Pin,
    Slice,
    axes_of,
    input_at,
    normalise_axes,
    rank_of,
    same,
    tracked_elsewhere,
)
from dsp_deploy.compress.graph import attr

INT_MAX = 2**31 - 1  # an end this large means "to the end" (torch writes 2⁶³ − 1)
_PASS = frozenset({"Cast", "Identity"})


def flattened(x: Layout, length: int) -> Layout:
    """The layout of Flatten(x) over (C, L): each atom repeated ``length`` times."""
    return tuple(a for a in x for _ in range(length))


def _length(ctx: Context, name: ir.Value) -> int | None:
    """L = d_2 ⋯ d_k of an (N, C, d_2, …) tensor; None when a dim is unknown."""
    shape = ctx.shape(name)
    if shape is None or len(shape) < 2 or any(d is None for d in shape[2:]):
        return None
    return math.prod(shape[2:])


def _only_unit_axes_after_1(ctx: Context, src: ir.Value, dst: ir.Value) -> bool:
    a, b = ctx.shape(src), ctx.shape(dst)
    if a is None or b is None or len(a) < 2 or len(b) < 2 or a[1] is None:
        return False
    return a[1] == b[1] and all(d == 1 for d in (*a[2:], *b[2:]))


def _count(i: int, node: ir.Node, ctx: Context, layout: Layout) -> tuple[Slice, ...]:
    """A literal channel count at entry 1 of a constant Reshape target (the dynamo exporter
    writes [-1, C]) follows the pruning; 0 (copy), -1 (inferred) and computed need nothing."""
    if node.op_type != "Reshape":
        return ()
    target = ctx.const(node.inputs[1])
    literal = target is not None and target.ndim == 1 and len(target) > 1 and target[1] > 0
    return (Slice(i, 1, 1, layout, COUNT),) if literal else ()


def reshape_like(i: int, node: ir.Node, ctx: Context) -> Flow | Pin:
    if node.op_type == "Flatten" and attr(node, "axis", 1) != 1:
        return Pin("Flatten with axis != 1 merges the batch and channel axes")
    x = ctx.layout(node.inputs[0])
    if x is None or tracked_elsewhere(node, ctx, (0,)) is not None:
        return Pin("its shape or axes are computed from channels")
    if _only_unit_axes_after_1(ctx, node.inputs[0], node.outputs[0]):
        return same(node, ctx, _count(i, node, ctx, x))
    length = _length(ctx, node.inputs[0])
    flat = node.op_type == "Flatten" or (
        node.op_type == "Reshape" and length is not None and _to_batch_rows(node, ctx, length)
    )
    if not flat:
        return Pin("changes the channel axis (only size-1 axes after it may go, or all: (N, -1))")
    if length is None:
        return Pin("flattens axes of unknown size")
    layout = flattened(x, length)
    return Flow((layout,), _count(i, node, ctx, layout))


def _to_batch_rows(node: ir.Node, ctx: Context, length: int) -> bool:
    """Whether the Reshape's target is (N, −1) for its input (N, C, …) (module docstring)."""
    target, data = ctx.const(node.inputs[1]), node.inputs[0]
    if target is None:
        return _batch_by_minus_one(ctx, node.inputs[1], data)
    if target.shape != (2,):
        return False
    first, second = (int(v) for v in target)
    batch = ctx.shape(data)[0]
    copies = first == 0 and not attr(node, "allowzero", 0)
    if not (copies or first == -1 or (batch is not None and first == batch)):
        return False
    return (second == -1 and first != -1) or second == len(ctx.layout(data)) * length


def _producer(value: ir.Value | None) -> ir.Node | None:
    """The node computing ``value``, through Casts and Identities."""
    node = None if value is None else value.producer()
    while node is not None and node.op_type in _PASS:
        node = node.inputs[0].producer()
    return node


def _batch_by_minus_one(ctx: Context, name: ir.Value, data: ir.Value) -> bool:
    """``name`` is Concat(axis 0)(dim 0 of ``data``, [−1]): ``x.view(x.size(0), -1)``."""
    concat = _producer(name)
    if concat is None or concat.op_type != "Concat" or len(concat.inputs) != 2:
        return False
    rest = ctx.const(concat.inputs[1])
    if rest is None or rest.tolist() != [-1]:
        return False
    return _is_batch_dim(ctx, concat.inputs[0], data)


def _is_batch_dim(ctx: Context, name: ir.Value, data: ir.Value) -> bool:
    """``name`` holds [dim 0 of ``data``]: Shape(data)[0:1], Gather(Shape(data), [0]),
    Slice(Shape(data), [0], [1]) or Unsqueeze(Gather(Shape(data), 0))."""
    node, rank = _producer(name), rank_of(ctx, data)
    scalar = node is not None and node.op_type == "Unsqueeze"
    if scalar:
        node = _producer(node.inputs[0])
    if node is None or rank is None:
        return False
    if node.op_type == "Shape":
        return not scalar and node.inputs[0] == data and _shape_entries(node, rank) == [0]
    if node.op_type not in ("Gather", "Slice") or (scalar and node.op_type == "Slice"):
        return False
    shape = _producer(node.inputs[0])
    if shape is None or shape.op_type != "Shape" or shape.inputs[0] != data:
        return False
    index = ctx.const(node.inputs[1]) if node.op_type == "Gather" else None
    if node.op_type == "Gather" and (index is None or index.ndim != (0 if scalar else 1)):
        return False
    return _entries_read(node, ctx, _shape_entries(shape, rank)) == [0]


def _shape_entries(node: ir.Node, rank: int) -> list[int]:
    """The axes a Shape node reports, in order (its start/end, opset 15)."""
    start, end = attr(node, "start", 0), attr(node, "end")
    return list(range(rank))[start:end]


def _entries_read(reader: ir.Node, ctx: Context, entries: list[int]) -> list[int] | None:
    """The axes of x a Gather or Slice of Shape(x) reads (None: unknown or another op)."""
    if reader.op_type == "Gather" and attr(reader, "axis", 0) == 0:
        index = ctx.const(reader.inputs[1])
        if index is None:
            return None
        try:
            return [entries[int(k)] for k in np.ravel(index)]
        except IndexError:
            return None
    if reader.op_type == "Slice":
        bounds = slice_bounds(reader, ctx)
        if bounds is None or bounds[2] not in ([0], [-1]):
            return None
        starts, ends, _, steps = bounds
        if None in (starts, ends, steps):
            return None
        return entries[slice(starts[0], ends[0], steps[0])]
    return None


def shape(i: int, node: ir.Node, ctx: Context) -> Flow | Pin:
    rank = rank_of(ctx, node.inputs[0])
    if rank is None:
        return Pin("rank unknown: cannot tell which entries are read")
    entries = _shape_entries(node, rank)
    for reader in ctx.readers(node.outputs[0]) if 1 in entries else ():
        read = None if reader is None else _entries_read(reader, ctx, entries)
        if read is None or 1 in read:
            return Pin("the channel count is read (only other dims may be)")
    return Flow((None,))


def squeeze_like(i: int, node: ir.Node, ctx: Context) -> Flow | Pin:
    """Squeeze / Unsqueeze of axes after the channel axis keep it (the dynamo exporter
    writes adaptive_avg_pool1d as Unsqueeze → ReduceMean → Squeeze); else as Reshape."""
    # Unsqueeze's axes index its output, Squeeze's its input.
    ranked = node.outputs[0] if node.op_type == "Unsqueeze" else node.inputs[0]
    axes, rank = axes_of(node, ctx, 1), rank_of(ctx, ranked)
    if axes and rank is not None and not normalise_axes(axes, rank) & {0, 1}:
        return same(node, ctx)
    return reshape_like(i, node, ctx)


Bounds = tuple[list[int] | None, list[int] | None, list[int], list[int] | None]


def _ints(node: ir.Node, ctx: Context, k: int) -> list[int] | None:
    value = ctx.const(node.inputs[k]) if input_at(node, k) is not None else None
    return None if value is None else [int(v) for v in np.ravel(value)]


def slice_bounds(node: ir.Node, ctx: Context) -> Bounds | None:
    """(starts, ends, axes, steps) of a Slice of any opset; a list is None when it is
    computed, the whole is None when the axes are unknown."""
    if attr(node, "starts") is not None:  # opset < 10: attributes, no steps
        starts, ends = list(attr(node, "starts")), list(attr(node, "ends", []))
        axes = attr(node, "axes")
        axes = list(range(len(starts))) if axes is None else list(axes)
        valid = len(starts) == len(ends) == len(axes)
        return (starts, ends, axes, [1] * len(axes)) if valid else None
    starts, ends = _ints(node, ctx, 1), _ints(node, ctx, 2)
    axes = _ints(node, ctx, 3) if input_at(node, 3) is not None else None
    if axes is None and not input_at(node, 3) is not None and starts is not None:
        axes = list(range(len(starts)))
    if axes is None:
        return None
    steps = _ints(node, ctx, 4) if input_at(node, 4) is not None else [1] * len(axes)
    known = [v for v in (starts, ends, steps) if v is not None]
    if any(len(v) != len(axes) for v in known) or 0 in (steps or ()):
        return None  # not a valid Slice
    return starts, ends, axes, steps


def _whole(start: int, end: int, step: int, dim: int | None) -> bool:
    """Whether start:end:step takes all of an axis of length ``dim`` (None: unknown)."""
    begins = start == 0 or (dim is not None and start <= -dim)
    ends = end >= INT_MAX or (dim is not None and end >= dim)
    return step == 1 and begins and ends


def slice_(i: int, node: ir.Node, ctx: Context) -> Flow | Pin:
    if ctx.layout(node.inputs[0]) is None or tracked_elsewhere(node, ctx, (0,)) is not None:
        return Pin("its bounds are computed from channels")
    bounds, shape_ = slice_bounds(node, ctx), ctx.shape(node.inputs[0])
    if bounds is None or shape_ is None:
        return Pin("axes or rank unknown")
    starts, ends, axes, steps = bounds
    dims = (shape_[0], len(ctx.layout(node.inputs[0])))
    for k, axis in enumerate(axes):
        axis = axis + len(shape_) if axis < 0 else axis
        if axis > 1:
            continue
        if starts is None or ends is None or steps is None:
            return Pin("slice bounds on the batch or channel axis are not constant")
        if not _whole(starts[k], ends[k], steps[k], dims[axis]):
            return Pin(f"slices the {('batch', 'channel')[axis]} axis")
    return same(node, ctx)

"""The records a channel-flow rule returns, and the helpers every rule shares.

A *layout* is a tuple of atom ids, one per position on axis 1: position p of a tensor
carries atom ``layout[p]``. An atom may fill several positions (a Flatten over (C, L)
repeats each channel's atom L times, ``views``); every record below works per position.
Rules read onnx-ir nodes and values (``ir.Node``, ``ir.Value``); ``ops`` holds the
table of ops (``rules`` and ``views`` the rules).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import onnx_ir as ir

from dsp_deploy.compress.graph import Shape, attr

Layout = tuple[int, ...]

# Roles of a sliced parameter: which end of a group it belongs to.
PRODUCER, PER_CHANNEL, CONSUMER, DEPTHWISE = "producer", "per-channel", "consumer", "depthwise"
COUNT = "count"  # entry ``axis`` of a Reshape's shape constant: set to the channels kept


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
    no padding at all (pads 0, auto_pad NOTSET/VALID: ``rules._unpadded``). Zero padding
    makes the sum at the borders miss the taps that fall on it (they read 0, not v), so
    a padded Conv keeps its constant channels (``plan`` says why); a zero channel is
    exact through any zero padding. ``pointwise``: output = W x + b per position
    (1×1 Conv without padding, Gemm, MatMul of at most ``rules.REFIT_FEATURES``
    features), so a least-squares refit on x's Gram matrix applies. ``bias``: the
    (node, input) holding the bias — input 2 of the node itself (added when missing) or
    the constant of the ``Add`` after a MatMul.
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
    def layout(self, value: ir.Value | None) -> Layout | None: ...
    def const(self, value: ir.Value | None) -> np.ndarray | None: ...
    def shape(self, value: ir.Value | None) -> Shape | None: ...
    def new_atoms(self, node: int, count: int) -> Layout: ...
    def readers(self, value: ir.Value) -> tuple[ir.Node | None, ...]: ...  # None: graph output
    def position(self, node: ir.Node) -> int: ...


Rule = Callable[[int, ir.Node, Context], "Flow | Pin"]


def input_at(node: ir.Node, i: int) -> ir.Value | None:
    """Input ``i`` (None when absent)."""
    return node.inputs[i] if len(node.inputs) > i else None


def tracked_elsewhere(node: ir.Node, ctx: Context, allowed: tuple[int, ...]) -> int | None:
    """The first input outside ``allowed`` that carries channels (None: there is none)."""
    for i, value in enumerate(node.inputs):
        if i not in allowed and ctx.layout(value) is not None:
            return i
    return None


def rank_of(ctx: Context, value: ir.Value | None) -> int | None:
    shape = ctx.shape(value)
    return None if shape is None else len(shape)


def same(node: ir.Node, ctx: Context, slices: tuple[Slice, ...] = ()) -> Flow:
    """Output 0 carries input 0's layout."""
    x = ctx.layout(node.inputs[0])
    return Flow(outputs=(x,) + (None,) * (len(node.outputs) - 1), slices=slices)


def axes_of(node: ir.Node, ctx: Context, position: int) -> list[int] | None:
    """The ``axes`` attribute, else the constant input at ``position`` (None: neither)."""
    value = attr(node, "axes")
    if value is None and input_at(node, position) is not None:
        const = ctx.const(node.inputs[position])
        value = None if const is None else const.tolist()
    return None if value is None else list(value)


def normalise_axes(axes: list[int], rank: int) -> set[int]:
    return {a + rank if a < 0 else a for a in axes}


@dataclass(frozen=True)
class Edit:
    """What pruning did to one node besides slicing its parameters: its new ``group``
    (a depthwise or grouped Conv; None: unchanged)."""

    group: int | None = None


Finish = Callable[[ir.Node, Edit], None]


@dataclass(frozen=True)
class OpEntry:
    """Everything the compress pass knows about one op type (``ops.OPS``).

    ``rule``: how channels flow through it (a ``Flow`` or a ``Pin``); ``tap``: its
    output is where DSP scores a channel (the activation ending a stage); ``source``: it
    creates channels even when no input is tracked; ``finish``: what ``prune`` does to the
    node after slicing the parameters its ``Slice`` records name (None: nothing);
    ``doc``: one line for the table in ``ops`` and ``inspect``.
    """

    rule: Rule
    doc: str
    tap: bool = False
    source: bool = False
    finish: Finish | None = None

"""The records a channel-flow rule returns, and the helpers every rule shares.

A *layout* is a tuple of atom ids, one per position on axis 1: position p of a tensor
carries atom ``layout[p]``. An atom may fill several positions (a Flatten over (C, L)
repeats each channel's atom L times, ``views``); every record below works per position.
``rules`` holds the table of rules (``views`` the reshaping ones).
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
    def layout(self, name: str) -> Layout | None: ...
    def const(self, name: str) -> np.ndarray | None: ...
    def shape(self, name: str) -> Shape | None: ...
    def producer(self, name: str) -> int | None: ...  # node position; None: not computed
    def new_atoms(self, node: int, count: int) -> Layout: ...
    def readers(self, name: str) -> tuple[int, ...]: ...  # node positions; -1: graph output
    def node(self, position: int) -> onnx.NodeProto: ...


Rule = Callable[[int, onnx.NodeProto, Context], Flow | Pin]


def input_name(node: onnx.NodeProto, i: int) -> str:
    """Name of input ``i`` ("" when absent)."""
    return node.input[i] if len(node.input) > i else ""


def tracked_elsewhere(node: onnx.NodeProto, ctx: Context, allowed: tuple[int, ...]) -> int | None:
    """The first input outside ``allowed`` that carries channels (None: there is none)."""
    for i, name in enumerate(node.input):
        if name and i not in allowed and ctx.layout(name) is not None:
            return i
    return None


def rank_of(ctx: Context, name: str) -> int | None:
    shape = ctx.shape(name)
    return None if shape is None else len(shape)


def same(node: onnx.NodeProto, ctx: Context, slices: tuple[Slice, ...] = ()) -> Flow:
    """Output 0 carries input 0's layout."""
    x = ctx.layout(node.input[0])
    return Flow(outputs=(x,) + (None,) * (len(node.output) - 1), slices=slices)


def axes_of(node: onnx.NodeProto, ctx: Context, position: int) -> list[int] | None:
    """The ``axes`` attribute, else the constant input at ``position`` (None: neither)."""
    value = attr(node, "axes")
    if value is None and input_name(node, position):
        const = ctx.const(node.input[position])
        value = None if const is None else const.tolist()
    return None if value is None else list(value)


def normalise_axes(axes: list[int], rank: int) -> set[int]:
    return {a + rank if a < 0 else a for a in axes}

"""Cross-layer equalisation (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", §4.1) of Conv → [Relu] → Conv pairs.

Relu is positively homogeneous: ``relu(x / s) = relu(x) / s`` for ``s > 0``. So for a
first Conv (any ``group``: depthwise included) whose output channel ``i`` goes, through
an optional Relu, into input channel ``i`` of a second Conv with ``group = 1``
(pointwise or full)::

    W1'[i] = W1[i] / s_i      b1'[i] = b1[i] / s_i      W2'[:, i] = W2[:, i] · s_i

computes the same function. Nagel's choice ``s_i = sqrt(r1_i / r2_i)`` (``r1_i``: the
range of what channel ``i`` carries, ``r2_i = max |W2[:, i]|``) gives both the value
``sqrt(r1_i r2_i)``, so no channel is much smaller than the tensor's loudest one. With
per-channel weights the first Conv's weight ranges hardly matter; what is quantized per
tensor is the *activation* between the two, so ``r1_i`` here is the channel's range on
the calibration samples (``max |y_i|``) when given (data-aware CLE), else Nagel's
``max |W1[i]|``. Channels with ``r1_i = 0`` or ``r2_i = 0`` keep ``s_i = 1``; ``s`` is
clipped to ``[1/MAX_SCALE, MAX_SCALE]`` so no weight over- or underflows.

A pair qualifies when the first Conv's output (and the Relu's) has that one reader, both
weights (and biases) are float initializers, and the second Conv has ``group = 1``. Pairs
are equalised one after another in graph order; a Conv that is the second of one pair
and the first of the next sees its updated weights. The pass is an onnx-ir
``ModelPass``: ``equalise(model, ranges)`` returns ``Rewrite(model, modified,
EqualiseReport)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from dsp_deploy.irgraph import finish, initializer, initializer_value, is_op, only_reader
from dsp_deploy.passes import ModelPass, Rewrite, apply

__all__ = ["EqualiseReport", "equalise", "pair_scales"]

MAX_SCALE = 1e4
_FLOATS = frozenset({ir.DataType.FLOAT, ir.DataType.DOUBLE})


@dataclass(frozen=True)
class EqualiseReport:
    """The pairs equalised, as (first Conv, second Conv) node names."""

    pairs: tuple[tuple[str, str], ...]


def pair_scales(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """``s_i = sqrt(r1_i / r2_i)``, 1 where either range is 0, clipped (module doc)."""
    r1, r2 = np.asarray(r1, np.float64), np.asarray(r2, np.float64)
    ok = (r1 > 0) & (r2 > 0)
    s = np.sqrt(np.where(ok, r1, 1.0) / np.where(ok, r2, 1.0))
    return np.clip(np.where(ok, s, 1.0), 1 / MAX_SCALE, MAX_SCALE)


def _float_weights(conv: ir.Node) -> bool:
    params = [p for p in conv.inputs[1:3] if p is not None]
    arrays = [initializer_value(p) for p in params]
    return all(a is not None for a in arrays) and params[0].const_value.dtype in _FLOATS


def _second(value: ir.Value) -> tuple[ir.Node, ir.Value] | None:
    """The group-1 Conv reading ``value`` (through one Relu) as its data input, and the
    tensor it reads; None when the chain does not qualify."""
    if not only_reader(value):
        return None
    reader = next(iter(value.uses())).node
    if is_op(reader, "Relu"):
        return _second(reader.outputs[0]) if only_reader(reader.outputs[0]) else None
    ok = is_op(reader, "Conv") and reader.inputs[0] is value and _float_weights(reader)
    return (reader, value) if ok and reader.attributes.get_int("group", 1) == 1 else None


def _pairs(graph: ir.Graph) -> list[tuple[ir.Node, ir.Node, ir.Value]]:
    """(first Conv, second Conv, the tensor the second reads) per qualifying pair."""
    found = []
    for node in graph:
        if is_op(node, "Conv") and _float_weights(node):
            second = _second(node.outputs[0])
            if second is not None:
                found.append((node, *second))
    return found


def _channel_range(w: np.ndarray, axis: int) -> np.ndarray:
    other = tuple(a for a in range(w.ndim) if a != axis)
    return np.abs(w).max(axis=other)


def _rescale(first: ir.Node, second: ir.Node, s: np.ndarray, new: list[ir.Value]) -> None:
    w1 = initializer_value(first.inputs[1])
    w2 = initializer_value(second.inputs[1])
    shape1 = (-1, *[1] * (w1.ndim - 1))
    shape2 = (1, -1, *[1] * (w2.ndim - 2))
    _set(first, 1, (w1 / s.reshape(shape1)).astype(w1.dtype), new)
    if len(first.inputs) > 2 and first.inputs[2] is not None:
        b1 = initializer_value(first.inputs[2])
        _set(first, 2, (b1 / s).astype(b1.dtype), new)
    _set(second, 1, (w2 * s.reshape(shape2)).astype(w2.dtype), new)


def _set(node: ir.Node, index: int, array: np.ndarray, new: list[ir.Value]) -> None:
    value = initializer(array, f"{node.inputs[index].name}_cle")
    new.append(value)
    node.replace_input_with(index, value)


class Equalise(ModelPass[EqualiseReport]):
    """Cross-layer equalisation of every qualifying pair (module doc)."""

    def __init__(self, ranges: Mapping[str, np.ndarray] | None = None):
        super().__init__()
        self.ranges = dict(ranges or {})

    def rewrite(self, model: ir.Model) -> tuple[bool, EqualiseReport]:
        done, new = [], []
        for first, second, tensor in _pairs(model.graph):
            w1, w2 = initializer_value(first.inputs[1]), initializer_value(second.inputs[1])
            r1 = self.ranges.get(tensor.name, self.ranges.get(first.outputs[0].name))
            r1 = _channel_range(w1, 0) if r1 is None else np.asarray(r1)
            if r1.shape != (len(w1),) or w2.shape[1] != len(w1):
                continue
            _rescale(first, second, pair_scales(r1, _channel_range(w2, 1)), new)
            done.append((first.name, second.name))
        if done:
            finish(model, new)
        return bool(done), EqualiseReport(tuple(done))


def equalise(
    model: onnx.ModelProto, ranges: Mapping[str, np.ndarray] | None = None
) -> Rewrite[EqualiseReport]:
    """``model`` with its Conv → [Relu] → Conv pairs equalised; ``ranges``: per tensor
    between the two (or first Conv output) name, each channel's ``max |value|``."""
    return apply(Equalise(ranges), model)

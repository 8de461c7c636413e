"""Empirical bias correction (Nagel et al. 2019, §4.2; the data-driven form of NNCF's
fast bias correction).

Quantizing weights and activations shifts the expected output of a layer:
``E[ỹ_c] ≠ E[y_c]``. For every Conv output channel ``c``, with ``y`` the float model's
output and ``ỹ`` the quantized model's (run as written, DequantizeLinear → float Conv:
the values the int8 kernels approximate), over the decision samples ``i`` and positions
``t``::

    δ_c = mean_{i,t} (y[i, c, t] − ỹ[i, c, t])      b'_c = b_c + δ_c

is added to the float model's bias (a Conv without one gets ``δ``), and the model is
quantized again. ``with_bias_shifts`` is an onnx-ir ``ModelPass`` (``BiasShift``): the
corrected bias is a new initializer and the one it replaces, once nothing reads it, is
dropped (onnx-ir's ``RemoveUnusedNodesPass``).

**Level by level** (``corrected``). A ``δ`` measured with the layers before still
uncorrected also absorbs *their* shift, which their own correction then removes too:
correcting every Conv from one pair of runs over-corrects (Inception GunPoint, nothing
in float: 0.53 test accuracy one-shot against 0.88 level by level, with 7-bit weights on
signed inputs). So the Convs are grouped by *level* (``conv_levels``: the most Convs on
a path from a graph input to it, itself included; the Convs of one level do not read
each other) and corrected in level order, each level's ``δ`` measured on the model
quantized with every earlier level already corrected: one quantization and one run of
the emulated graph per level (Inception: 13 levels). After level ``L`` the mean error of
its Convs on the decision samples is 0 up to the int32 bias rounding (a later level
does not change an earlier one's inputs). The error is the Conv's own output's, before
any Relu (``conv_outputs``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from dsp_deploy.irgraph import initializer, is_op
from dsp_deploy.passes import ModelPass, apply

__all__ = ["bias_shifts", "conv_levels", "conv_outputs", "corrected", "with_bias_shifts"]

Outputs = Callable[[onnx.ModelProto, Sequence[str]], Mapping[str, np.ndarray]]


def bias_shifts(
    reference: Mapping[str, np.ndarray], quantized: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Per tensor present in both: ``δ`` (module doc), averaged over all axes but 1."""
    shifts = {}
    for name, y in reference.items():
        if name in quantized and y.ndim >= 2 and y.shape == quantized[name].shape:
            axes = tuple(a for a in range(y.ndim) if a != 1)
            shifts[name] = (y.astype(np.float64) - quantized[name]).mean(axis=axes)
    return shifts


def with_bias_shifts(model: onnx.ModelProto, shifts: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose Convs producing a tensor of ``shifts`` get ``b + δ``
    (a new initializer ``<node>_bias_corrected``; a bias that is no initializer stays)."""
    return apply(BiasShift(shifts), model).model


def _stored(value: ir.Value | None) -> np.ndarray | None:
    """An initializer's values (also one a graph input lists), else None."""
    if value is None or not value.is_initializer() or value.const_value is None:
        return None
    return value.const_value.numpy()


class BiasShift(ModelPass[int]):
    """``b' = b + δ`` on the Convs whose output ``shifts`` names; reports how many."""

    def __init__(self, shifts: Mapping[str, np.ndarray]):
        super().__init__()
        self.shifts = dict(shifts)

    def rewrite(self, model: ir.Model) -> tuple[bool, int]:
        new = [v for node in model.graph if (v := self._shifted(node)) is not None]
        for value in new:
            model.graph.register_initializer(value)
        if new:
            RemoveUnusedNodesPass()(model)  # the replaced biases
        return bool(new), len(new)

    def _shifted(self, node: ir.Node) -> ir.Value | None:
        """``node``'s new bias (already its input), or None when it keeps its own."""
        delta = self.shifts.get(node.outputs[0].name) if is_op(node, "Conv") else None
        weight = None if delta is None else _stored(node.inputs[1])
        if weight is None or len(delta) != weight.shape[0]:
            return None
        delta = delta.astype(weight.dtype)
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            old = _stored(node.inputs[2])
            if old is None:
                return None
            delta = old + delta
        name = f"{node.name or node.outputs[0].name}_bias_corrected"
        value = initializer(delta.astype(np.float32), name)
        node.resize_inputs(max(len(node.inputs), 3))
        node.replace_input_with(2, value)
        return value


def conv_outputs(model: onnx.ModelProto) -> dict[str, str]:
    """Conv node name → its output (onnxruntime's quantizer keeps node names; where it
    folds the Relu after a Conv into its QuantizeLinear, the Conv's output takes the
    Relu's name but still holds the Conv's values, before the Relu)."""
    graph = ir.from_proto(model).graph
    return {n.name: n.outputs[0].name for n in graph if is_op(n, "Conv") and n.name}


def conv_levels(model: onnx.ModelProto) -> tuple[tuple[str, ...], ...]:
    """The named Convs grouped by level (module doc), in level and graph order."""
    graph = ir.from_proto(model).graph
    level: dict[ir.Node, int] = {}
    for node in graph:  # topological order (ONNX requires it)
        before = [level[p] for p in node.predecessors() if p in level]
        level[node] = max(before, default=0) + is_op(node, "Conv")
    by_level: dict[int, list[str]] = {}
    for node in graph:
        if is_op(node, "Conv") and node.name:
            by_level.setdefault(level[node], []).append(node.name)
    return tuple(tuple(by_level[k]) for k in sorted(by_level))


def corrected(
    model: onnx.ModelProto,
    quantize: Callable[[onnx.ModelProto], onnx.ModelProto],
    outputs: Outputs,
    skip: Sequence[str] = (),
) -> onnx.ModelProto:
    """``quantize(model')`` with ``model'`` the float model whose Convs (but ``skip``)
    are bias-corrected level by level (module doc). ``outputs(m, names)``: the tensors
    ``names`` of ``m`` on the decision samples, as written (QDQ emulated in float)."""
    ours = conv_outputs(model)
    wanted = [n for level in conv_levels(model) for n in level if n not in skip]
    reference = outputs(model, [ours[n] for n in wanted])
    shifts: dict[str, np.ndarray] = {}
    current = model
    for level in conv_levels(model):
        names = [n for n in level if n not in skip]
        if not names:
            continue
        quantized = quantize(current)
        theirs = conv_outputs(quantized)
        names = [n for n in names if n in theirs]
        got = outputs(quantized, [theirs[n] for n in names])
        pairs = {ours[n]: got[theirs[n]] for n in names}
        shifts |= bias_shifts({ours[n]: reference[ours[n]] for n in names}, pairs)
        current = with_bias_shifts(model, shifts)
    return quantize(current)

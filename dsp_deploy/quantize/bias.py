"""Empirical bias correction (Nagel et al. 2019, §4.2; the data-driven form of NNCF's
fast bias correction).

Quantizing weights and activations shifts the expected output of a layer:
``E[ỹ_c] ≠ E[y_c]``. For every Conv output channel ``c``, with ``y`` the float model's
output and ``ỹ`` the quantized model's (run as written, DequantizeLinear → float Conv:
the values the int8 kernels approximate), over the decision samples ``i`` and positions
``t``::

    δ_c = mean_{i,t} (y[i, c, t] − ỹ[i, c, t])      b'_c = b_c + δ_c

is added to the float model's bias (a Conv without one gets ``δ``), and the model is
quantized again. All Convs are corrected from one pair of runs: each ``δ`` also absorbs
the shift its inputs carry from the layers before, which the correction of those layers
then mostly removes, so the result is checked by the gates, not assumed.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["bias_shifts", "with_bias_shifts"]


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
    """A copy of ``model`` whose Convs producing a tensor of ``shifts`` get ``b + δ``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    for node in out.graph.node:
        delta = shifts.get(node.output[0]) if node.op_type == "Conv" else None
        if delta is None or node.input[1] not in inits:
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if len(delta) != weight.shape[0]:
            continue
        _add_bias(out.graph, node, inits, (delta).astype(weight.dtype))
    return out


def _add_bias(graph: onnx.GraphProto, node: onnx.NodeProto, inits: dict, delta: np.ndarray) -> None:
    name = f"{node.name or node.output[0]}_bias_corrected"
    if len(node.input) > 2 and node.input[2]:
        old = inits.get(node.input[2])
        if old is None:
            return
        delta = numpy_helper.to_array(old) + delta
    tensor = numpy_helper.from_array(delta.astype(np.float32), name)
    graph.initializer.append(tensor)
    inits[name] = tensor
    if len(node.input) > 2:
        node.input[2] = name
    else:
        node.input.append(name)

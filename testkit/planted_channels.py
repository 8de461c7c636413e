"""Planted dead channels, counted in an ONNX file (``benchmarks/other_libraries.py`` and
its tests share this count)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def _constants(graph) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def zero_channels(path: Path) -> int:
    """Planted channels a model holds: Conv weight rows that are all 0 (a conv plant, or a
    BN plant the exporter folded into its Conv) and BatchNormalization scales that are 0.
    Random init makes neither, so the count before and after ``compress`` says how many
    planted channels it removed, whatever else it removed."""
    graph = onnx.load(str(path)).graph
    values, count = _constants(graph), 0
    for node in graph.node:
        if node.op_type == "Conv" and node.input[1] in values:
            w = values[node.input[1]]
            count += int(np.sum(np.all(w.reshape(len(w), -1) == 0, axis=1)))
        elif node.op_type == "BatchNormalization" and node.input[1] in values:
            count += int(np.sum(values[node.input[1]] == 0))
    return count

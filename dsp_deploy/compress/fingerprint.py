"""A fingerprint of a model's graph, so a pruning plan is applied only to its own model.

A ``PruningPlan`` names nodes by position and tensors by name; applied to any other
graph it slices the wrong weights without failing. ``find_groups`` records the
fingerprint of the (normalised) model it analysed and ``prune`` refuses a model whose
fingerprint differs. It is the SHA-256 of, in order:

* the opset imports;
* the graph inputs and outputs (name, element type, shape, doc string);
* every node, serialised (op type, domain, name, inputs, outputs, attributes), in graph
  order, so reordering the nodes changes it;
* every initializer: name, element type, dims and its stored bytes.

Left out: ``value_info`` (inferred shapes), metadata, the graph's name and doc string,
which a plan does not depend on. Hashing the bytes is what tells two trainings of one
architecture apart (same names and shapes, other weights); it costs one pass over the
weights, small next to one inference pass over the calibration set.
"""

from __future__ import annotations

import hashlib

import onnx


def fingerprint(model: onnx.ModelProto) -> str:
    """Hex SHA-256 of the parts of ``model`` that a plan depends on (module docstring)."""
    digest = hashlib.sha256()
    graph = model.graph
    for opset in model.opset_import:
        digest.update(_item(b"opset", f"{opset.domain}:{opset.version}".encode()))
    for value in (*graph.input, *graph.output):
        digest.update(_item(b"value", value.SerializeToString(deterministic=True)))
    for node in graph.node:
        digest.update(_item(b"node", node.SerializeToString(deterministic=True)))
    for tensor in graph.initializer:
        digest.update(_item(b"tensor", tensor.SerializeToString(deterministic=True)))
    return digest.hexdigest()


def _item(tag: bytes, data: bytes) -> bytes:
    """Tag and length first: concatenated protobuf messages would otherwise read as one."""
    return tag + len(data).to_bytes(8, "little") + data

"""A fingerprint of a model's graph, so a pruning plan is applied only to its own model.

A ``PruningPlan`` names nodes by position and tensors by name; applied to any other
graph it slices the wrong weights without failing. ``find_groups`` records the
fingerprint of the (normalised, onnx-ir) model it analysed and ``prune`` refuses a model
whose fingerprint differs. It is the SHA-256 of, in order:

* the opset imports;
* the graph inputs and outputs (name, element type, shape, doc string);
* every node, serialised (op type, domain, name, inputs, outputs, attributes), in graph
  order, so reordering the nodes changes it;
* every initializer, by name: name, element type, dims and its bytes.

Left out: inferred shapes of intermediate values, metadata, the graph's name and doc
string, which a plan does not depend on. Hashing the bytes is what tells two trainings
of one architecture apart (same names and shapes, other weights); it costs one pass over
the weights, small next to one inference pass over the calibration set.
"""

from __future__ import annotations

import hashlib

import onnx_ir as ir

from dsp_deploy.errors import PlanError


def fingerprint(model: ir.Model) -> str:
    """Hex SHA-256 of the parts of ``model`` that a plan depends on (module docstring)."""
    digest = hashlib.sha256()
    graph = model.graph
    for domain, version in sorted(model.opset_imports.items()):
        digest.update(_item(b"opset", f"{domain}:{version}".encode()))
    for value in (*graph.inputs, *graph.outputs):
        text = f"{value.name}|{value.type}|{value.shape}|{value.doc_string or ''}"
        digest.update(_item(b"value", text.encode()))
    for node in graph:
        digest.update(_item(b"node", _node(node)))
    for name, value in sorted(graph.initializers.items()):
        tensor = value.const_value
        head = f"{name}|{tensor.dtype}|{tensor.shape}".encode()
        digest.update(_item(b"tensor", head) + _bytes(tensor))
    return digest.hexdigest()


def check_fingerprint(model: ir.Model, expected: str) -> None:
    """``PlanError`` unless ``model``'s fingerprint is ``expected`` (the plan's)."""
    found = fingerprint(model)
    if found != expected:
        raise PlanError(
            f"the plan was made for another model (fingerprint {expected[:12] or 'none'}"
            f" ≠ {found[:12]} of this one); make the plan from this model with find_groups"
        )


def _node(node: ir.Node) -> bytes:
    """Op, name, inputs, outputs and attributes (tensors by their bytes, graphs serialised)."""
    ins = ",".join("" if v is None else v.name for v in node.inputs)
    outs = ",".join(v.name for v in node.outputs)
    head = f"{node.domain}|{node.op_type}|{node.overload}|{node.name}|{ins}|{outs}".encode()
    return head + b"".join(_item(b"attr", _attribute(a)) for a in node.attributes.values())


def _attribute(a: ir.Attr) -> bytes:
    head = f"{a.name}|{a.type}|".encode()
    if a.type == ir.AttributeType.TENSOR:
        return head + _bytes(a.value)
    if a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS, ir.AttributeType.TENSORS):
        return head + ir.serde.serialize_attribute(a).SerializeToString(deterministic=True)
    return head + repr(a.value).encode()


def _bytes(tensor: ir.TensorProtocol) -> bytes:
    """The tensor's contents (a string tensor: each string, length first)."""
    if tensor.dtype == ir.DataType.STRING:
        return b"".join(_item(b"s", s) for s in tensor.string_data())
    return tensor.tobytes()


def _item(tag: bytes, data: bytes) -> bytes:
    """Tag and length first: concatenated records would otherwise read as one."""
    return tag + len(data).to_bytes(8, "little") + data

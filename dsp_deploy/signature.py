"""The model contract, read once: what a classifier takes and what it returns.

``ModelSignature`` is what the runtime (``runtime.Classifier``), ``evaluate`` and
``ensemble`` know about a model: its inputs and outputs (name, element type, shape),
the series length L, channels C, class names, the normalisation its input needs and
whether its first output holds probabilities or logits. One pure function,
``read_signature(metadata, inputs, outputs, ends_in_softmax)``, builds it; its two
front ends feed it from an onnxruntime session (``from_session``: what an app with only
numpy and onnxruntime has) or from an ``onnx.ModelProto`` (``from_model``). This module
imports neither onnx nor onnxruntime, so it travels with the vendorable runtime.

Reading (the ``dsp.*`` keys of :mod:`dsp_deploy.metadata`)
----------------------------------------------------------
* C, L: the input's fixed dims ``(N, C, L)``; where a dim is dynamic,
  ``dsp.input_channels`` / ``dsp.input_length``; both present must agree.
* classes: ``dsp.classes`` (a JSON list), else None; ``class_count`` is its length or
  the first output's fixed width; both present must agree.

The default for models without our metadata (one rule, for every reader)
-----------------------------------------------------------------------
* normalisation: ``dsp.normalisation`` when present (``znorm-per-series`` | ``none``),
  else ``none``: the input goes in raw.
* output kind: ``dsp.output`` when present (``probabilities`` | ``logits``), else read
  from the graph: the first output produced by a ``Softmax`` → ``probabilities``, any
  other producer → ``logits``. Logits become probabilities with one softmax
  (``softmax``): the runtime's ``predict_proba`` and an ensemble's mean both apply it;
  argmax (``evaluate``, ``predict``) is the same either way. (An ensemble's final
  ``Mean`` of probabilities is no Softmax: ensembles carry ``dsp.output``.)

``bench`` times any model, classifier or not, and needs only its input shapes
(``cost.input_shapes``: the same ``dsp.input_length`` for a dynamic last axis).

A value outside these choices, or metadata that disagrees with the graph, raises
``ModelError`` naming the model, the key and what was found.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dsp_deploy import metadata as meta
from dsp_deploy.errors import ModelError

__all__ = [
    "LOGITS",
    "NO_NORMALISATION",
    "OUTPUT_KINDS",
    "PROBABILITIES",
    "ModelSignature",
    "TensorSpec",
    "file_ends_in_softmax",
    "from_model",
    "from_session",
    "graph_ends_in_softmax",
    "read_signature",
    "softmax",
    "tensor_spec",
]

LOGITS, PROBABILITIES = "logits", "probabilities"
OUTPUT_KINDS = (PROBABILITIES, LOGITS)
NO_NORMALISATION = "none"
NORMALISATIONS = (meta.ZNORM, NO_NORMALISATION)

Dim = int | str | None  # fixed size, symbolic name, or unknown


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: ``dtype`` as onnxruntime names it (``tensor(float)``);
    ``shape`` None when the rank is unknown."""

    name: str
    dtype: str
    shape: tuple[Dim, ...] | None


@dataclass(frozen=True)
class ModelSignature:
    """What a classifier takes and returns; see the module docstring for the defaults."""

    inputs: tuple[TensorSpec, ...]  # run-time inputs (initializers excluded)
    outputs: tuple[TensorSpec, ...]
    channels: int | None  # C, None when neither a fixed dim nor metadata says
    length: int | None  # L, likewise
    batch: int | None  # a fixed batch dim, None when dynamic
    classes: tuple[str, ...] | None  # dsp.classes, in output order
    class_count: int | None  # len(classes) or the first output's fixed width
    normalisation: str  # meta.ZNORM | NO_NORMALISATION
    output_kind: str  # PROBABILITIES | LOGITS

    @property
    def input_name(self) -> str:
        return self.inputs[0].name

    @property
    def output_name(self) -> str:
        return self.outputs[0].name

    @property
    def logits(self) -> bool:
        """Whether the first output needs a softmax to be probabilities."""
        return self.output_kind == LOGITS

    @property
    def normalises(self) -> bool:
        """Whether the input must be z-normalised per series first."""
        return self.normalisation == meta.ZNORM


def read_signature(
    metadata: Mapping[str, str],
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    ends_in_softmax: bool,
    label: str = "model",
) -> ModelSignature:
    """The signature from metadata and I/O descriptions; ``ModelError`` naming ``label``."""
    if not inputs or not outputs:
        raise ModelError(f"{label}: has {len(inputs)} inputs and {len(outputs)} outputs")
    dims = inputs[0].shape if inputs[0].shape is not None and len(inputs[0].shape) == 3 else ()
    out = outputs[0].shape if outputs[0].shape is not None and len(outputs[0].shape) == 2 else ()
    classes = _classes(metadata, label)
    width = _fixed(out[1]) if out else None
    if classes is not None and width is not None and width != len(classes):
        raise ModelError(
            f"{label}: {meta.CLASSES} names {len(classes)} classes; "
            f"output {outputs[0].name} has {width} columns"
        )
    return ModelSignature(
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        channels=_dim(dims[1] if dims else None, metadata, meta.INPUT_CHANNELS, label),
        length=_dim(dims[2] if dims else None, metadata, meta.INPUT_LENGTH, label),
        batch=_fixed(dims[0]) if dims else None,
        classes=classes,
        class_count=len(classes) if classes is not None else width,
        normalisation=_choice(metadata, meta.NORMALISATION, NORMALISATIONS, label)
        or NO_NORMALISATION,
        output_kind=_choice(metadata, meta.OUTPUT, OUTPUT_KINDS, label)
        or (PROBABILITIES if ends_in_softmax else LOGITS),
    )


def from_session(
    session: Any, label: str = "model", ends_in_softmax: bool = False
) -> ModelSignature:
    """The signature of an onnxruntime ``InferenceSession`` (its metadata and I/O).

    onnxruntime does not show the graph: the caller says whether it ends in a Softmax
    (``graph_ends_in_softmax`` on the ``ModelProto``, or ``file_ends_in_softmax``).
    """
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    return read_signature(
        metadata,
        [_ort_spec(v) for v in session.get_inputs()],
        [_ort_spec(v) for v in session.get_outputs()],
        ends_in_softmax,
        label,
    )


def from_model(model: Any, label: str = "model") -> ModelSignature:
    """The signature of an ``onnx.ModelProto`` (run-time inputs: initializers excluded)."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [tensor_spec(v) for v in graph.input if v.name not in initializers]
    outputs = [tensor_spec(v) for v in graph.output]
    metadata = {p.key: p.value for p in model.metadata_props}
    return read_signature(metadata, inputs, outputs, graph_ends_in_softmax(graph), label)


def graph_ends_in_softmax(graph: Any) -> bool:
    """Whether a ``GraphProto``'s first output is produced by a Softmax node."""
    if not graph.output:
        return False
    name = graph.output[0].name
    producer = next((n for n in graph.node if name in n.output), None)
    return producer is not None and producer.op_type == "Softmax"


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax over the last axis, in the input's float type."""
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# --- reading ---------------------------------------------------------------------------


def _fixed(dim: Dim) -> int | None:
    return dim if isinstance(dim, int) and not isinstance(dim, bool) and dim > 0 else None


def _dim(fixed: Dim, metadata: Mapping[str, str], key: str, label: str) -> int | None:
    """A fixed input dim, else the metadata's value; both present must agree."""
    fixed = _fixed(fixed)
    text = metadata.get(key)
    if text is None:
        return fixed
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ModelError(f"{label}: {key} must be a whole number ≥ 1; found {text!r}")
    if fixed is not None and fixed != value:
        raise ModelError(f"{label}: {key} says {value}; the input's dim is {fixed}")
    return value


def _classes(metadata: Mapping[str, str], label: str) -> tuple[str, ...] | None:
    try:
        return meta.class_names(metadata)
    except (json.JSONDecodeError, TypeError) as e:
        raise ModelError(
            f"{label}: {meta.CLASSES} must be a JSON list of names; "
            f"found {metadata.get(meta.CLASSES)!r}"
        ) from e


def _choice(
    metadata: Mapping[str, str], key: str, choices: Sequence[str], label: str
) -> str | None:
    value = metadata.get(key)
    if value is not None and value not in choices:
        known = " or ".join(repr(c) for c in choices)
        raise ModelError(f"{label}: {key} is {value!r}; expected {known}")
    return value


def _ort_spec(value: Any) -> TensorSpec:
    shape = value.shape
    dims = None if shape is None else tuple(d if isinstance(d, int | str) else None for d in shape)
    return TensorSpec(value.name, value.type, dims)


def tensor_spec(value: Any) -> TensorSpec:
    """A ``ValueInfoProto`` as onnxruntime describes it (``tensor(float)``, dims)."""
    import onnx  # a ModelProto came in, so onnx is installed

    tensor = value.type.tensor_type
    dtype = f"tensor({onnx.TensorProto.DataType.Name(tensor.elem_type).lower()})"
    if not tensor.HasField("shape"):
        return TensorSpec(value.name, dtype, None)
    dims = tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim
    )
    return TensorSpec(value.name, dtype, dims)


# --- the graph's last op without onnx ------------------------------------------------------
# Protobuf wire format: a field is a varint key (number << 3 | wire type) then a varint
# (type 0), 8 bytes (1), a varint length and that many bytes (2) or 4 bytes (5).
# ModelProto.graph = 7; GraphProto.node = 1, .output = 12; NodeProto.output = 2,
# .op_type = 4; ValueInfoProto.name = 1 (onnx.proto3).


def file_ends_in_softmax(data: bytes) -> bool:
    """``graph_ends_in_softmax`` from a serialized model, for apps without onnx."""
    try:
        graph = next(v for f, v in _fields(memoryview(data)) if f == 7)
        outputs = [v for f, v in _fields(graph) if f == 12]
        name = next(bytes(v) for f, v in _fields(outputs[0]) if f == 1)
        for node in (v for f, v in _fields(graph) if f == 1):
            fields = list(_fields(node))
            if any(f == 2 and bytes(v) == name for f, v in fields):
                return any(f == 4 and bytes(v) == b"Softmax" for f, v in fields)
    except (StopIteration, IndexError, ValueError, TypeError):
        pass  # not a model onnxruntime could load either
    return False


def _fields(buf: memoryview):
    """``(field number, bytes)`` of each length-delimited field; other fields skipped."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            _, i = _varint(buf, i)
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        elif wire == 2:
            size, i = _varint(buf, i)
            yield key >> 3, buf[i : i + size]
            i += size
        else:
            raise ValueError(f"protobuf wire type {wire} at byte {i}")


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if byte < 0x80:
            return value, i

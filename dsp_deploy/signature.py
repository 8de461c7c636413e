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
  from the graph (a final ``Softmax`` → ``probabilities``), else detected on a probe
  input (``detect_output``: rows ≥ 0 summing to 1 → ``probabilities``, else ``logits``;
  the rule is :mod:`dsp_deploy.signature_output`'s). With C or L unknown there is no
  probe and ``logits`` stays the default. Logits become probabilities with one softmax
  (``softmax``): the runtime's ``predict_proba`` and an ensemble's mean both apply it;
  argmax (``evaluate``, ``predict``) is the same either way. (An ensemble's final
  ``Mean`` of probabilities is no Softmax: ensembles carry ``dsp.output``.)
* where each value came from (``ModelSignature.origins``), and the one warning a reader
  logs when a value is a default or a guess: :mod:`dsp_deploy.signature_origins`.

``bench`` times any model, classifier or not, and needs only its input shapes
(``cost.input_shapes``: the same ``dsp.input_length`` for a dynamic last axis).

A value outside these choices, or metadata that disagrees with the graph, raises
``ModelError`` naming the model, the key and what was found.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from dsp_deploy import metadata as meta
from dsp_deploy.errors import ModelError, OptionError
from dsp_deploy.signature_origins import (
    ARGUMENT,
    DEFAULT,
    DETECTED,
    GRAPH,
    KEYS,
    METADATA,
    ORIGINS,
    default_warning,
    members_warning,
    undeclared,
)
from dsp_deploy.signature_output import (
    LOGITS,
    OUTPUT_KINDS,
    PROBABILITIES,
    detect_kind,
    file_ends_in_softmax,
    graph_ends_in_softmax,
    looks_like_probabilities,
    probe,
    softmax,
)

__all__ = [
    "LOGITS",
    "NO_NORMALISATION",
    "ORIGINS",
    "OUTPUT_KINDS",
    "PROBABILITIES",
    "ModelSignature",
    "TensorSpec",
    "default_warning",
    "detect_output",
    "file_ends_in_softmax",
    "from_model",
    "from_session",
    "graph_ends_in_softmax",
    "looks_like_probabilities",
    "members_warning",
    "normalisation_name",
    "override",
    "read_signature",
    "softmax",
    "tensor_spec",
    "undeclared",
]

NO_NORMALISATION = "none"
NORMALISATIONS = (meta.ZNORM, NO_NORMALISATION)
_ALIASES = {"znorm": meta.ZNORM}  # what people type for znorm-per-series
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
    origins: tuple[tuple[str, str], ...] = ()  # (field, one of ORIGINS), module docstring

    def origin(self, field: str) -> str:
        """Where ``field`` (channels, length, classes, normalisation, output_kind) came from."""
        return dict(self.origins).get(field, DEFAULT)

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
    declared_kind = _choice(metadata, meta.OUTPUT, OUTPUT_KINDS, label)
    channels = _dim(dims[1] if dims else None, metadata, meta.INPUT_CHANNELS, label)
    length = _dim(dims[2] if dims else None, metadata, meta.INPUT_LENGTH, label)
    graph_found = {  # what the graph alone says, where the metadata says nothing
        "channels": channels is not None,
        "length": length is not None,
        "output_kind": ends_in_softmax,
    }
    return ModelSignature(
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        channels=channels,
        length=length,
        batch=_fixed(dims[0]) if dims else None,
        classes=classes,
        class_count=len(classes) if classes is not None else width,
        normalisation=_choice(metadata, meta.NORMALISATION, NORMALISATIONS, label)
        or NO_NORMALISATION,
        output_kind=declared_kind or (PROBABILITIES if ends_in_softmax else LOGITS),
        origins=tuple(
            (field, METADATA if key in metadata else GRAPH if graph_found.get(field) else DEFAULT)
            for field, key in KEYS.items()
        ),
    )


def normalisation_name(text: str) -> str:
    """``znorm`` | ``znorm-per-series`` | ``none`` as the metadata spells it; else OptionError."""
    name = _ALIASES.get(text, text)
    if name not in NORMALISATIONS:
        raise OptionError(f"normalisation must be znorm or none; got {text!r}")
    return name


def override(
    sig: ModelSignature,
    *,
    classes: Sequence[str] | None = None,
    normalisation: str | None = None,
    output: str | None = None,
    label: str = "model",
) -> ModelSignature:
    """``sig`` with the caller's choices in place of the metadata's (origin ``argument``)."""
    changes: dict[str, tuple[Any, str]] = {}
    if isinstance(classes, str | bytes):
        raise OptionError(f"classes must be a list of names; got the string {classes!r}")
    if classes is not None:
        names = tuple(str(c) for c in classes)
        width = _fixed(sig.outputs[0].shape[1]) if _rank(sig.outputs[0]) == 2 else None
        if not names or (width is not None and width != len(names)):
            raise OptionError(
                f"{label}: {len(names)} class names given; its output "
                f"{sig.output_name} has {width if width is not None else 'a known number of'} "
                "columns"
            )
        changes["classes"] = (names, ARGUMENT)
    if normalisation is not None:
        changes["normalisation"] = (normalisation_name(normalisation), ARGUMENT)
    if output is not None:
        if output not in OUTPUT_KINDS:
            raise OptionError(f"output must be probabilities or logits; got {output!r}")
        changes["output_kind"] = (output, ARGUMENT)
    return _with(sig, changes)


def detect_output(
    sig: ModelSignature, run: Callable[[np.ndarray], np.ndarray], label: str = "model"
) -> ModelSignature:
    """``sig`` with its output kind detected when only the default gave it (module doc).

    ``run(x)`` returns the first output for an input ``x``; it is called once, on a
    seeded standard-normal probe of the input's shape, only when needed.
    """
    if sig.origin("output_kind") != DEFAULT or sig.channels is None or sig.length is None:
        return sig
    x = probe(sig.inputs[0].dtype, sig.batch, sig.channels, sig.length)
    return _with(sig, {"output_kind": (detect_kind(run, x, label), DETECTED)})


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


# --- reading ---------------------------------------------------------------------------


def _with(sig: ModelSignature, changes: Mapping[str, tuple[Any, str]]) -> ModelSignature:
    """``sig`` with fields replaced and their origins recorded."""
    if not changes:
        return sig
    origins = {**dict(sig.origins), **{f: origin for f, (_, origin) in changes.items()}}
    values = {f: value for f, (value, _) in changes.items()}
    if "classes" in values:
        values["class_count"] = len(values["classes"])
    return replace(sig, **values, origins=tuple(origins.items()))


def _rank(spec: TensorSpec) -> int | None:
    return None if spec.shape is None else len(spec.shape)


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

"""Ensemble members: what each one is (its signature) and whether they agree.

See ``dsp_deploy.ensemble`` for the contract: one run-time input ``[batch, channels,
length]``, one output ``[batch, classes]``, agreeing dtypes, dims, class names and
normalisation; ``dsp.output``, or without it the default every reader shares
(``dsp_deploy.signature``: a final Softmax means probabilities, else the kind detected
on a probe input), tells logits from probabilities.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import onnx

from dsp_deploy import metadata
from dsp_deploy.errors import InputError
from dsp_deploy.inference import run_model
from dsp_deploy.signature import LOGITS, PROBABILITIES, ModelSignature, detect_output, tensor_spec
from dsp_deploy.signature import from_model as read_model_signature

__all__ = ["LOGITS", "PROBABILITIES", "MemberSignature", "check_agree", "dims", "signature"]
_DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class MemberSignature:
    """What members must agree on, read from one member's graph and metadata."""

    label: str  # how messages name the member (its file, or "member i")
    input: onnx.ValueInfoProto
    output: onnx.ValueInfoProto
    elem_type: int
    output_elem_type: int
    batch: int | str  # a fixed batch size, or "dynamic"
    channels: int | None
    length: int | None
    classes: int
    class_names: tuple[str, ...] | None
    normalisation: str
    output_kind: str  # LOGITS | PROBABILITIES
    opset: int  # default domain
    other_opsets: Mapping[str, int]
    meta: Mapping[str, str]
    shared: ModelSignature  # the reading every tool shares (dsp_deploy.signature)


def signature(model: onnx.ModelProto, label: str) -> MemberSignature:
    """The member's I/O, metadata and opsets; ``InputError`` if it is not a classifier."""
    _refuse_subgraphs(model, label)
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise InputError(
            f"{label}: has {len(inputs)} inputs and {len(model.graph.output)} outputs; "
            "an ensemble member needs exactly one input and one output"
        )
    x, y = inputs[0], model.graph.output[0]
    x_dims, y_dims = dims(x), dims(y)
    if len(x_dims) != 3:
        raise InputError(
            f"{label}: input {x.name!r} has shape {_shape_text(x_dims)}; "
            "expected [batch, channels, length]"
        )
    if len(y_dims) != 2:
        raise InputError(
            f"{label}: output {y.name!r} has shape {_shape_text(y_dims)}; expected [batch, classes]"
        )
    shared = read_model_signature(model, label)  # the runtime's reading, default included
    shared = detect_output(shared, lambda x: run_model(model, {shared.input_name: x})[0], label)
    classes, names = shared.class_count, shared.classes
    if classes is None:
        raise InputError(
            f"{label}: output {y.name!r} has shape {_shape_text(y_dims)} and no "
            f"{metadata.CLASSES} metadata; expected a known class count"
        )
    domains = _opsets(model, label)
    return MemberSignature(
        label=label,
        input=x,
        output=y,
        elem_type=x.type.tensor_type.elem_type,
        output_elem_type=y.type.tensor_type.elem_type,
        batch=static_int(x_dims[0]) or "dynamic",
        channels=shared.channels,
        length=shared.length,
        classes=classes,
        class_names=names,
        normalisation=shared.normalisation,
        output_kind=shared.output_kind,
        opset=domains.pop(""),
        other_opsets=domains,
        meta=metadata.read_metadata(model),
        shared=shared,
    )


def check_agree(first: MemberSignature, other: MemberSignature) -> None:
    """``InputError`` naming both members and values at the first disagreement."""
    elem = onnx.helper.tensor_dtype_to_string
    checks = [
        ("input element type", elem(first.elem_type), elem(other.elem_type)),
        ("output element type", elem(first.output_elem_type), elem(other.output_elem_type)),
        ("batch size", first.batch, other.batch),
        ("input channels", first.channels, other.channels),
        ("input length", first.length, other.length),
        ("class count", first.classes, other.classes),
        (metadata.CLASSES, first.class_names, other.class_names),
        *(
            (key, _meta_int(first.meta, key, first.label), _meta_int(other.meta, key, other.label))
            for key in (metadata.INPUT_CHANNELS, metadata.INPUT_LENGTH)
        ),
        (metadata.NORMALISATION, first.normalisation, other.normalisation),
    ]
    for what, a, b in checks:
        if a is not None and b is not None and a != b:
            raise InputError(
                f"{other.label}: {what} is {_show(b)} but {first.label} has {_show(a)}; "
                "ensemble members must agree"
            )


def _show(value: object) -> str:
    return json.dumps(list(value)) if isinstance(value, tuple) else str(value)


def _refuse_subgraphs(model: onnx.ModelProto, label: str) -> None:
    for node in model.graph.node:
        if any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
            for a in node.attribute
        ):
            raise InputError(
                f"{label}: node {node.name or node.output[0]!r} ({node.op_type}) holds a "
                "subgraph; ensemble members must be plain graphs without If/Loop/Scan"
            )
    if model.functions:
        raise InputError(
            f"{label}: defines local functions ({', '.join(f.name for f in model.functions)}); "
            "ensemble members must be plain graphs without them"
        )


def _opsets(model: onnx.ModelProto, label: str) -> dict[str, int]:
    """``{domain: version}`` with the default domain under ``""`` (required)."""
    found = {
        ("" if o.domain in _DEFAULT_DOMAINS else o.domain): o.version for o in model.opset_import
    }
    if "" not in found:
        raise InputError(f"{label}: imports no default-domain (ai.onnx) opset")
    return found


def other_opsets(sigs: Sequence[MemberSignature]) -> dict[str, int]:
    """Non-default domains of all members; ``InputError`` if two import other versions."""
    merged: dict[str, tuple[int, str]] = {}
    for sig in sigs:
        for domain, version in sig.other_opsets.items():
            seen = merged.setdefault(domain, (version, sig.label))
            if seen[0] != version:
                raise InputError(
                    f"{sig.label}: imports domain {domain!r} version {version} but "
                    f"{seen[1]} imports version {seen[0]}; ensemble members must agree"
                )
    return {d: v for d, (v, _) in merged.items()}


def _meta_int(meta: Mapping[str, str], key: str, label: str) -> int | None:
    raw = meta.get(key)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InputError(f"{label}: {key} is {raw!r}; expected a whole number") from None


def dims(value: onnx.ValueInfoProto) -> tuple[int | str | None, ...]:
    return tensor_spec(value).shape or ()


def static_int(dim: int | str | None) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def _shape_text(dims: Sequence[int | str | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"

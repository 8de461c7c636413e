"""Combine member ONNX classifiers into one ensemble model: the mean of their probabilities.

Contract
--------
``combine(members)`` returns a new model (the members are never modified) computing::

    p(x) = (1/M) · Σ_m q_m(x),   q_m = softmax(f_m(x))  when member m outputs logits
                                 q_m = f_m(x)           when it outputs probabilities

— what ``dsp_deploy.nets.ensemble.Ensemble`` computes for LITETime and InceptionTime, so
members trained one by one (``train --arch lite --seed S``) and combined here give the
ensemble ``train --arch litetime --seed S`` gives, up to float32 rounding of the mean.

* Members: at least 2, each with one run-time input ``[batch, channels, length]`` and one
  output ``[batch, classes]``. They must agree on the input element type, channels, length
  (a static dim or ``dsp.input_length``), class count (a static dim or ``dsp.classes``),
  and on the ``dsp.classes``/``dsp.input_length``/``dsp.input_channels`` metadata where
  present and ``dsp.normalisation`` (absent = ``none``, as the runtime reads it). Members
  may differ in width and architecture. A disagreement raises ``InputError`` naming both
  members and both values.
* A member whose output holds logits gets a Softmax(axis=-1): ``dsp.output``, or
  without it the default every reader shares (``dsp_deploy.signature``): a final
  Softmax means probabilities, any other last node logits.
* Opsets: members at a lower default-domain opset are converted up to the highest with
  ``onnx.version_converter`` (upgrades are what its adapters cover well; downgrades are
  not, e.g. Relu 14 → 13). Other domains must agree on their version.
* Names: every node, edge, initializer and value_info of member m is prefixed ``m<m>/``
  (``onnx.compose.add_prefix``); the ensemble's input and output keep the first member's
  names and type (dynamic batch kept). Subgraphs (If/Loop/Scan) and model-local functions
  are refused: ``add_prefix`` renames outer names used inside a subgraph only in part.
* Mean: one ONNX ``Mean`` node. onnxruntime computes it as ``(q_0 + … + q_{M-1}) · (1/M)``
  in float32 (measured: within 6e-8 of the float64 mean for M = 2…5, and bit-equal to that
  expression), one kernel for all members.
* Metadata: the first member's ``metadata_props``, then ``dsp.output = probabilities``,
  ``dsp.arch`` = ``litetime`` (all ``lite``) | ``inceptiontime`` (all ``inception``) |
  ``ensemble``, ``dsp.dataset`` only when all members agree, ``dsp.version`` = ours,
  member-level ``dsp.compress`` dropped from the top level, and ``dsp.training`` as
  ``train --arch litetime`` writes it — settings all members share, ``seeds`` and
  ``kept_channels`` concatenated over members — plus ``members``: each member's own
  ``arch``, ``training`` and ``compress`` records, so nothing is lost.
* The result passes ``onnx.checker.check_model(full_check=True)``.

``verify(members, ensemble)`` runs seeded standard-normal inputs through onnxruntime and
raises ``VerificationError`` unless the ensemble equals the mean of the members'
probabilities within ``atol``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import compose, version_converter

from dsp_deploy import __version__, metadata
from dsp_deploy.errors import InputError, ModelError, VerificationError
from dsp_deploy.signature import LOGITS, PROBABILITIES, softmax, tensor_spec
from dsp_deploy.signature import from_model as read_model_signature

logger = logging.getLogger(__name__)

__all__ = ["MemberSignature", "combine", "ensemble_arch", "merge_training", "signature", "verify"]

_DEFAULT_DOMAINS = ("", "ai.onnx")
# dsp.training keys that hold one entry per member: concatenated, not compared
_PER_MEMBER_KEYS = ("seeds", "kept_channels")
_ENSEMBLE_ARCH = {"lite": "litetime", "inception": "inceptiontime"}


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


def combine(
    members: Sequence[onnx.ModelProto], *, labels: Sequence[str] | None = None
) -> onnx.ModelProto:
    """The ensemble of ``members`` (mean probabilities); see the module docstring.

    ``labels`` name the members in error messages (e.g. their files); default
    ``member 0``, ``member 1``, ... Raises ``InputError`` when the members cannot form
    an ensemble, ``ModelError`` when the combined graph fails the ONNX checker.
    """
    if len(members) < 2:
        raise InputError(f"an ensemble needs at least 2 member models; got {len(members)}")
    labels = list(labels) if labels is not None else [f"member {i}" for i in range(len(members))]
    if len(labels) != len(members):
        raise ValueError(f"{len(labels)} labels for {len(members)} members")
    sigs = [signature(m, label) for m, label in zip(members, labels, strict=True)]
    for sig in sigs[1:]:
        _check_agree(sigs[0], sig)
    others = _other_opsets(sigs)
    opset = max(s.opset for s in sigs)
    converted = [_convert(m, s, opset) for m, s in zip(members, sigs, strict=True)]

    first = sigs[0]
    graph = onnx.GraphProto(name="ensemble", doc_string=members[0].graph.doc_string)
    graph.input.append(_merged_input(sigs))
    out = onnx.ValueInfoProto()
    out.CopyFrom(first.output)
    graph.output.append(out)
    probs = []
    for i, (model, sig) in enumerate(zip(converted, sigs, strict=True)):
        probs.append(_append_member(graph, model, sig, f"m{i}/", first.input.name))
    graph.node.append(
        onnx.helper.make_node("Mean", probs, [out.name], name=_fresh("ensemble/mean", graph))
    )

    model = onnx.helper.make_model(
        graph,
        opset_imports=[
            onnx.helper.make_opsetid("", opset),
            *(onnx.helper.make_opsetid(d, v) for d, v in sorted(others.items())),
        ],
        ir_version=max(m.ir_version for m in converted),
        producer_name="dsp-deploy",
        producer_version=__version__,
        doc_string=members[0].doc_string,
    )
    _write_metadata(model, sigs)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"the combined ensemble fails the ONNX checker: {first_line}") from e
    logger.info(
        "ensemble of %d members: %d nodes, %d initializers, opset %d",
        len(members),
        len(graph.node),
        len(graph.initializer),
        opset,
    )
    return model


# --- reading and comparing members -------------------------------------------------------


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
    x_dims, y_dims = _dims(x), _dims(y)
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
        batch=_static_int(x_dims[0]) or "dynamic",
        channels=shared.channels,
        length=shared.length,
        classes=classes,
        class_names=names,
        normalisation=shared.normalisation,
        output_kind=shared.output_kind,
        opset=domains.pop(""),
        other_opsets=domains,
        meta=metadata.read_metadata(model),
    )


def _check_agree(first: MemberSignature, other: MemberSignature) -> None:
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


def _other_opsets(sigs: Sequence[MemberSignature]) -> dict[str, int]:
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


def _dims(value: onnx.ValueInfoProto) -> tuple[int | str | None, ...]:
    return tensor_spec(value).shape or ()


def _static_int(dim: int | str | None) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def _shape_text(dims: Sequence[int | str | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


# --- building the graph ------------------------------------------------------------------


def _convert(model: onnx.ModelProto, sig: MemberSignature, opset: int) -> onnx.ModelProto:
    if sig.opset == opset:
        return model
    logger.info("converting %s from opset %d to %d", sig.label, sig.opset, opset)
    try:
        return version_converter.convert_version(model, opset)
    except Exception as e:  # the C++ converter raises RuntimeError, ValueError, ...
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(
            f"{sig.label}: opset {sig.opset} cannot be converted to opset {opset} (another "
            f"member's): {first_line}; export it at opset {opset}"
        ) from e


def _merged_input(sigs: Sequence[MemberSignature]) -> onnx.ValueInfoProto:
    """The first member's input, with channels/length made static where any member is."""
    value = onnx.ValueInfoProto()
    value.CopyFrom(sigs[0].input)
    dims = value.type.tensor_type.shape.dim
    for axis in (1, 2):
        if dims[axis].HasField("dim_value"):
            continue
        for sig in sigs[1:]:
            other = sig.input.type.tensor_type.shape.dim[axis]
            if other.HasField("dim_value") and other.dim_value > 0:
                dims[axis].Clear()
                dims[axis].dim_value = other.dim_value
                break
    return value


def _append_member(
    graph: onnx.GraphProto, model: onnx.ModelProto, sig: MemberSignature, prefix: str, x: str
) -> str:
    """Append ``model`` renamed under ``prefix`` and reading ``x``; returns its probabilities."""
    renamed = compose.add_prefix(model, prefix, rename_functions=False).graph
    own_input = prefix + sig.input.name
    names = {node.name for node in renamed.node}
    for k, node in enumerate(renamed.node):
        node.input[:] = [x if name == own_input else name for name in node.input]
        if not node.name:  # add_prefix skips empty names; reports should say whose node it is
            node.name = f"{prefix}{node.op_type}_{k}"
            while node.name in names:
                node.name += "_"
            names.add(node.name)
    output = renamed.output[0]
    graph.node.extend(renamed.node)
    graph.initializer.extend(renamed.initializer)
    graph.sparse_initializer.extend(renamed.sparse_initializer)
    graph.value_info.extend(v for v in renamed.value_info if v.name != own_input)
    if all(v.name != output.name for v in renamed.value_info):
        graph.value_info.append(output)
    if sig.output_kind == PROBABILITIES:
        return output.name
    probs = _fresh(f"{prefix}probabilities", graph)
    graph.node.append(onnx.helper.make_node("Softmax", [output.name], [probs], name=probs, axis=-1))
    return probs


def _fresh(name: str, graph: onnx.GraphProto) -> str:
    """``name``, or ``name_<k>`` when the graph already uses it."""
    taken = {v.name for v in (*graph.input, *graph.output, *graph.value_info, *graph.initializer)}
    taken.update(n for node in graph.node for n in (*node.output, node.name))
    candidate, k = name, 1
    while candidate in taken:
        candidate, k = f"{name}_{k}", k + 1
    return candidate


# --- metadata ----------------------------------------------------------------------------


def ensemble_arch(archs: Sequence[str | None]) -> str:
    """``litetime`` if every member is ``lite``, ``inceptiontime`` if ``inception``, else
    ``ensemble``."""
    kinds = set(archs)
    if len(kinds) == 1 and (only := kinds.pop()) in _ENSEMBLE_ARCH:
        return _ENSEMBLE_ARCH[only]
    return "ensemble"


def merge_training(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``dsp.training`` of the ensemble from the members' (parsed) records.

    Each record may hold ``arch``, ``training`` and ``compress``. Top level: the
    training settings every member shares, and ``seeds``/``kept_channels`` concatenated
    over members (as ``train --arch litetime`` writes them); ``members``: the records.
    """
    trainings = [r.get("training") for r in records]
    merged: dict[str, Any] = {}
    if all(isinstance(t, dict) for t in trainings):
        shared = set.intersection(*(set(t) for t in trainings))
        for key in sorted(shared):
            values = [t[key] for t in trainings]
            if key in _PER_MEMBER_KEYS and all(isinstance(v, list) for v in values):
                merged[key] = [item for v in values for item in v]
            elif all(v == values[0] for v in values):
                merged[key] = values[0]
    merged["members"] = [dict(r) for r in records]
    return merged


def _member_record(meta: Mapping[str, str]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for field, key in (
        ("arch", metadata.ARCH),
        ("training", metadata.TRAINING),
        ("compress", metadata.COMPRESS),
    ):
        raw = meta.get(key)
        if raw is None:
            continue
        if field == "arch":
            record[field] = raw
            continue
        try:
            record[field] = json.loads(raw)
        except ValueError:  # not ours, or hand-edited: keep the text rather than lose it
            record[field] = raw
    return record


def _write_metadata(model: onnx.ModelProto, sigs: Sequence[MemberSignature]) -> None:
    base = dict(sigs[0].meta)
    base.pop(metadata.COMPRESS, None)
    for key in (metadata.CLASSES, metadata.INPUT_LENGTH, metadata.INPUT_CHANNELS):
        if key not in base:  # a later member may carry what the first lacks
            found = next((s.meta[key] for s in sigs if key in s.meta), None)
            if found is not None:
                base[key] = found
    datasets = {s.meta.get(metadata.DATASET) for s in sigs}
    if len(datasets) == 1 and None not in datasets:
        base[metadata.DATASET] = datasets.pop()
    else:
        base.pop(metadata.DATASET, None)
    records = [_member_record(s.meta) for s in sigs]
    base[metadata.OUTPUT] = PROBABILITIES
    base[metadata.ARCH] = ensemble_arch([s.meta.get(metadata.ARCH) for s in sigs])
    base[metadata.TRAINING] = json.dumps(merge_training(records), sort_keys=True)
    base[metadata.VERSION] = __version__
    metadata.write_metadata(model, base)


# --- verification ------------------------------------------------------------------------


def verify(
    members: Sequence[onnx.ModelProto],
    ensemble: onnx.ModelProto,
    *,
    samples: int = 32,
    seed: int = 0,
    atol: float = 1e-6,
) -> float:
    """Max |ensemble − mean member probabilities| on seeded standard-normal inputs.

    Every model runs on onnxruntime; a logits member's softmax is taken in float64.
    Raises ``VerificationError`` when the difference exceeds ``atol`` (or is not finite)
    or a member's output shape differs from the ensemble's.
    """
    from dsp_deploy.cost import input_shapes
    from dsp_deploy.inference import run_model

    fixed = _static_int(_dims(ensemble.graph.input[0])[0])
    (shape,) = input_shapes(ensemble, batch=fixed or samples)
    x = np.random.default_rng(seed).standard_normal(shape.shape).astype(shape.dtype)
    got = run_model(ensemble, {shape.name: x})[0]
    probs = []
    for i, member in enumerate(members):
        sig = signature(member, f"member {i}")
        out = run_model(member, {sig.input.name: x})[0].astype(np.float64)
        if out.shape != got.shape:
            raise VerificationError(
                f"{sig.label} outputs shape {out.shape}; the ensemble outputs {got.shape}"
            )
        probs.append(softmax(out) if sig.output_kind == LOGITS else out)
    diff = float(np.max(np.abs(got.astype(np.float64) - np.mean(probs, axis=0))))
    if not diff <= atol:  # NaN fails too
        raise VerificationError(
            f"ensemble output differs from the mean of its members' probabilities by {diff:.3g} "
            f"on {samples} random inputs (tolerance {atol:g})"
        )
    logger.info("ensemble verified on %d inputs: max |diff| %.3g", samples, diff)
    return diff

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
* A member whose ``dsp.output`` is ``logits`` gets a Softmax(axis=-1); one without
  ``dsp.output`` is read as every tool reads it (``dsp_deploy.signature``: a final
  Softmax means probabilities, else the kind detected on a probe input), with one
  warning in all naming the members and the metadata to set.
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
returns an ``EnsembleCheck`` (max |difference| from the mean of the members'
probabilities, and whether it is within ``atol``); the caller decides.

Modules: ``members`` (signatures and agreement), ``build`` (the graph, on onnx-ir: one
``AddMember`` pass per member), ``meta`` (metadata), ``verify`` (the check).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import onnx
import onnx_ir as ir

from dsp_deploy.ensemble.build import MemberReport, add_members, convert, skeleton
from dsp_deploy.ensemble.members import MemberSignature, check_agree, other_opsets, signature
from dsp_deploy.ensemble.meta import ensemble_arch, merge_training, write_metadata
from dsp_deploy.ensemble.verify import EnsembleCheck, verify
from dsp_deploy.errors import InputError, ModelError, OptionError
from dsp_deploy.passes import Rewrite
from dsp_deploy.signature import members_warning

logger = logging.getLogger(__name__)

__all__ = [
    "EnsembleCheck",
    "EnsembleReport",
    "MemberReport",
    "MemberSignature",
    "build",
    "combine",
    "ensemble_arch",
    "merge_training",
    "signature",
    "verify",
]


@dataclass(frozen=True)
class EnsembleReport:
    """The members added (in order) and the default-domain opset of the ensemble."""

    members: tuple[MemberReport, ...]
    opset: int


def combine(
    members: Sequence[onnx.ModelProto], *, labels: Sequence[str] | None = None
) -> onnx.ModelProto:
    """The ensemble of ``members`` (mean probabilities); see the module docstring.

    ``labels`` name the members in error messages (e.g. their files); default
    ``member 0``, ``member 1``, ... Raises ``InputError`` when the members cannot form
    an ensemble, ``ModelError`` when the combined graph fails the ONNX checker.
    """
    return build(members, labels=labels).model


def build(
    members: Sequence[onnx.ModelProto], *, labels: Sequence[str] | None = None
) -> Rewrite[EnsembleReport]:
    """:func:`combine` with its report (the members are never modified)."""
    sigs = _signatures(members, labels)
    others = other_opsets(sigs)
    opset = max(s.opset for s in sigs)
    converted = [convert(m, s, opset) for m, s in zip(members, sigs, strict=True)]
    base = skeleton(converted, sigs, opset, others)
    model, reports = add_members(base, [ir.from_proto(m) for m in converted], sigs)
    proto = ir.to_proto(model)
    write_metadata(proto, sigs)
    _check(proto)
    logger.info(
        "ensemble of %d members: %d nodes, %d initializers, opset %d",
        len(members),
        len(proto.graph.node),
        len(proto.graph.initializer),
        opset,
    )
    return Rewrite(proto, True, EnsembleReport(reports, opset))


def _signatures(
    members: Sequence[onnx.ModelProto], labels: Sequence[str] | None
) -> list[MemberSignature]:
    """Each member's signature, all agreeing with the first (else ``InputError``)."""
    if len(members) < 2:
        raise InputError(f"an ensemble needs at least 2 member models; got {len(members)}")
    labels = list(labels) if labels is not None else [f"member {i}" for i in range(len(members))]
    if len(labels) != len(members):
        raise OptionError(f"{len(labels)} labels for {len(members)} members; expected one each")
    sigs = [signature(m, label) for m, label in zip(members, labels, strict=True)]
    for sig in sigs[1:]:
        check_agree(sigs[0], sig)
    warning = members_warning([(sig.shared, sig.label) for sig in sigs])  # once they agree
    if warning is not None:
        logger.warning("%s", warning)
    return sigs


def _check(model: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"the combined ensemble fails the ONNX checker: {first_line}") from e

"""The ensemble's ``metadata_props`` from its members' (module doc of ``dsp_deploy.ensemble``).

The first member's entries are the base; ``dsp.output = probabilities``; ``dsp.arch``
``litetime`` (all ``lite``) | ``inceptiontime`` (all ``inception``) | ``ensemble``;
``dsp.dataset`` only when all members agree; ``dsp.compress`` dropped; ``dsp.training``
as ``train --arch litetime`` writes it, with each member's records under ``members``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import onnx

from dsp_deploy import __version__, metadata
from dsp_deploy.ensemble.members import PROBABILITIES, MemberSignature

# dsp.training keys that hold one entry per member: concatenated, not compared
_PER_MEMBER_KEYS = ("seeds", "kept_channels")
_ENSEMBLE_ARCH = {"lite": "litetime", "inception": "inceptiontime"}


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


def write_metadata(model: onnx.ModelProto, sigs: Sequence[MemberSignature]) -> None:
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

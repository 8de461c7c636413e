"""Where each value of a model's signature came from, and the one warning for guesses.

Part of the model contract (:mod:`dsp_deploy.signature`, which records the origins);
like it, this module imports neither onnx nor onnxruntime.

``ModelSignature.origins`` maps channels, length, classes, normalisation and output_kind
(the fields of ``KEYS``, which names the ``dsp.*`` key declaring each) to one of
``ORIGINS``: ``metadata`` | ``graph`` (a fixed dim, a final Softmax, the output's width)
| ``detected`` (on a probe input) | ``argument`` (``override``: the caller's choice,
e.g. ``Classifier(path, normalisation=...)``) | ``default``. A normalisation, output
kind or class list that is a default or was detected is ``undeclared``:
``default_warning`` is the one warning a reader logs for such a model, naming what was
assumed, the keys to set and the ``dsp-deploy metadata`` command that sets them;
``members_warning`` is the one warning for several models (an ensemble's members),
grouped by what was assumed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING

from dsp_deploy import metadata as meta
from dsp_deploy.signature_output import OUTPUT_KINDS

if TYPE_CHECKING:
    from dsp_deploy.signature import ModelSignature

__all__ = [
    "ARGUMENT",
    "DEFAULT",
    "DETECTED",
    "GRAPH",
    "KEYS",
    "METADATA",
    "ORIGINS",
    "default_warning",
    "members_warning",
    "undeclared",
]

ORIGINS = ("metadata", "graph", "detected", "argument", "default")
METADATA, GRAPH, DETECTED, ARGUMENT, DEFAULT = ORIGINS
KEYS: Mapping[str, str] = MappingProxyType(
    {  # signature field -> the metadata key that declares it
        "channels": meta.INPUT_CHANNELS,
        "length": meta.INPUT_LENGTH,
        "classes": meta.CLASSES,
        "normalisation": meta.NORMALISATION,
        "output_kind": meta.OUTPUT,
    }
)
_GUESSABLE = ("normalisation", "output_kind", "classes")  # fields a warning names, in order


def undeclared(sig: ModelSignature) -> tuple[str, ...]:
    """Metadata keys whose values the reader guessed or defaulted (none given by the caller)."""
    return tuple(KEYS[f] for f in _GUESSABLE if sig.origin(f) in (DEFAULT, DETECTED))


def default_warning(sig: ModelSignature, path: str) -> str | None:
    """The one warning for a model read with defaults: what was assumed, how to declare it."""
    assumed = _assumed(sig)
    if not assumed:
        return None
    return (
        f"model {path} has no {', '.join(assumed)} metadata: "
        + "; ".join(text for text, _ in assumed.values())
        + f". Declare them: dsp-deploy metadata {path} "
        + " ".join(option for _, option in assumed.values())
        + " -o OUT.onnx"
    )


def members_warning(members: Sequence[tuple[ModelSignature, str]]) -> str | None:
    """One warning for several models read with defaults (an ensemble's ``(signature,
    label)`` members): the members grouped by what was assumed, and the command."""
    groups: dict[tuple[tuple[str, tuple[str, str]], ...], list[str]] = {}
    for sig, label in members:
        if assumed := _assumed(sig):
            groups.setdefault(tuple(assumed.items()), []).append(label)
    if not groups:
        return None
    parts = [
        f"{', '.join(labels)}: no {', '.join(k for k, _ in group)} "
        f"({'; '.join(text for _, (text, _) in group)})"
        for group, labels in groups.items()
    ]
    keys = [KEYS[f] for f in _GUESSABLE]
    options = {k: {o for g in groups for key, (_, o) in g if key == k} for k in keys}
    flags = [
        next(iter(o)) if len(o) == 1 else f"--output {'|'.join(OUTPUT_KINDS)}"
        for o in options.values()
        if o
    ]
    count = sum(map(len, groups.values()))
    return (
        f"{count} of {len(members)} members have no metadata for what was assumed: "
        + "; ".join(parts)
        + f". Declare it on each: dsp-deploy metadata MEMBER {' '.join(flags)} -o OUT.onnx"
    )


def _assumed(sig: ModelSignature) -> dict[str, tuple[str, str]]:
    """Each undeclared key → (what the reader assumed, the ``metadata`` option setting it)."""
    kind, origin = sig.output_kind, sig.origin("output_kind")
    texts = {
        meta.NORMALISATION: ("its input goes in raw", "--normalisation znorm|none"),
        meta.OUTPUT: (f"its output reads as {kind} ({origin})", f"--output {kind}"),
        meta.CLASSES: ("classes are column indices", "--classes NAME,NAME,..."),
    }
    return {key: texts[key] for key in undeclared(sig)}

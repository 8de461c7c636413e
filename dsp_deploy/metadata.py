"""The ``metadata_props`` keys our ONNX models carry, so apps and tools agree on them.

Everything an app needs to feed a model correctly travels inside the ``.onnx`` file:

====================  ==========================================================
key                   value
====================  ==========================================================
dsp.classes           JSON list of class names, in output order
dsp.input_length      series length L the model was trained on (int as text)
dsp.input_channels    channels (1 for univariate UCR data)
dsp.normalisation     ``znorm-per-series`` (each series: (x - mean) / std, std 0 → 1)
dsp.output            ``probabilities`` (softmax) or ``logits``
dsp.arch              lite | litetime | inception | inceptiontime | ...
dsp.dataset           dataset name or path the model was trained on
dsp.training          JSON object: epochs, sparsity, seed(s), layer weights, ...
dsp.version           dsp-deploy version that wrote the file
dsp.compress          JSON object added by ``compress``: source sha256, criterion,
                      params/MACs before and after, ...
dsp.quantize          JSON object added by ``quantize``: source sha256, scheme,
                      target, layers kept in float, gate reports, ...
====================  ==========================================================

Without ``dsp.normalisation`` a model takes raw input; without ``dsp.output`` its first
output is ``probabilities`` when a Softmax produces it, else what a probe input shows:
the one default every reader shares (:mod:`dsp_deploy.signature`).

Seeing and setting them (``dsp-deploy metadata``): ``dsp_deploy.declare``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the app-side runtime reads these keys without importing onnx
    import onnx

CLASSES = "dsp.classes"
INPUT_LENGTH = "dsp.input_length"
INPUT_CHANNELS = "dsp.input_channels"
NORMALISATION = "dsp.normalisation"
OUTPUT = "dsp.output"
ARCH = "dsp.arch"
DATASET = "dsp.dataset"
TRAINING = "dsp.training"
VERSION = "dsp.version"
COMPRESS = "dsp.compress"
QUANTIZE = "dsp.quantize"

ZNORM = "znorm-per-series"


def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """All ``metadata_props`` of ``model`` as a plain dict."""
    return {p.key: p.value for p in model.metadata_props}


def write_metadata(model: onnx.ModelProto, values: Mapping[str, Any]) -> None:
    """Set (or replace) metadata entries on ``model`` in place.

    Non-string values are stored as JSON so they read back unambiguously.
    """
    existing = {p.key: p for p in model.metadata_props}
    for key, value in values.items():
        text = value if isinstance(value, str) else json.dumps(value)
        if key in existing:
            existing[key].value = text
        else:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, text


def class_names(metadata: Mapping[str, str]) -> tuple[str, ...] | None:
    """Class names from metadata, or None when the model does not carry them."""
    raw = metadata.get(CLASSES)
    return None if raw is None else tuple(str(c) for c in json.loads(raw))

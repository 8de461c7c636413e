"""The ``dsp.quantize`` metadata record ``quantize`` writes into the model it built.

A JSON object: ``source_sha256`` (of the serialized input model), ``scheme`` (the
flavour, e.g. ``QDQ U8S8``, or ``float`` when INT8 was not kept), ``target``,
``per_channel`` weights, ``kept_float`` (nodes left in float by the fallback),
``a16w8`` (nodes with 16-bit activations), ``weights_7bit`` (Convs whose weights are
7-bit: they read a signed tensor, ``quantize.build``), ``unfused`` (Convs onnxruntime would not
fuse into an integer op here, left float), ``equalised`` pairs, ``bias_correction``,
the decision, held-out and eval reports, ``gates`` (``compress.gates.GateReport``),
``latency_ratio`` (INT8 / float, one thread, per batch; null when not measured) and
``calibration_samples`` [decision, judged].
"""

from __future__ import annotations

import hashlib
from typing import Any

import onnx

from dsp_deploy import metadata
from dsp_deploy.compress.gates import GateReport
from dsp_deploy.compress.verify import ParityReport
from dsp_deploy.quantize.options import QuantizeOptions

__all__ = ["QUANTIZE", "record", "stamp"]

QUANTIZE = metadata.QUANTIZE


def record(
    options: QuantizeOptions,
    scheme: str,
    kept_float: tuple[str, ...],
    wide: tuple[str, ...],
    built: Any,
    holdout: ParityReport | None,
    evaluation: ParityReport | None,
    gate: GateReport,
    latency: dict[int, float] | None,
    samples: tuple[int, int],
) -> dict[str, Any]:
    """The record (module docstring) of one run, less ``source_sha256``; ``built`` is
    the pipeline's build (``unfused``, ``pairs``, ``decision``)."""
    return {
        "scheme": scheme,
        "target": options.target,
        "per_channel": True,
        "kept_float": list(kept_float),
        "a16w8": list(wide),
        "weights_7bit": list(built.narrow) if scheme != "float" else [],
        "unfused": list(built.unfused),
        "equalised": built.pairs,
        "bias_correction": options.bias_correction,
        "decision": built.decision.as_dict(),
        "holdout": None if holdout is None else holdout.as_dict(),
        "eval": None if evaluation is None else evaluation.as_dict(),
        "gates": gate.as_dict(),
        "latency_ratio": None if latency is None else {str(k): v for k, v in latency.items()},
        "calibration_samples": list(samples),
    }


def stamp(built: onnx.ModelProto, source: onnx.ModelProto, values: dict[str, Any]) -> None:
    """Write ``dsp.quantize`` into ``built`` (never the caller's), source digest first."""
    digest = hashlib.sha256(source.SerializeToString()).hexdigest()
    metadata.write_metadata(built, {QUANTIZE: {"source_sha256": digest, **values}})

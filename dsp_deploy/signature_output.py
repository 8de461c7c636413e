"""The output kind of a classifier without ``dsp.output``: from its graph, else detected.

Part of the model contract (:mod:`dsp_deploy.signature`, which applies it and records
where the kind came from); like it, this module imports neither onnx nor onnxruntime.

* From the graph: the first output produced by a ``Softmax`` → ``probabilities``
  (``graph_ends_in_softmax`` on a ``GraphProto``, ``file_ends_in_softmax`` on the
  file's bytes, for apps without onnx).
* Detected (``detect_kind``), for any other producer: the model is run once on a seeded
  standard-normal probe ``(b, C, L)`` (``probe``: b = the fixed batch, else 4, in the
  input's float type), and rows that are all ≥ 0 and sum to 1 (within 1e-3,
  ``looks_like_probabilities``) mean ``probabilities``, anything else ``logits``. A
  probabilities model gives such rows for any input, a logits model almost never (a
  LogSoftmax output, negative, reads as logits: its softmax is the probabilities).
* Logits become probabilities with one ``softmax`` over the last axis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from dsp_deploy import protobuf_wire as wire
from dsp_deploy.errors import ModelError

__all__ = [
    "LOGITS",
    "OUTPUT_KINDS",
    "PROBABILITIES",
    "detect_kind",
    "file_ends_in_softmax",
    "graph_ends_in_softmax",
    "looks_like_probabilities",
    "probe",
    "softmax",
]

LOGITS, PROBABILITIES = "logits", "probabilities"
OUTPUT_KINDS = (PROBABILITIES, LOGITS)
_PROBE_SEED, _PROBE_BATCH, _SUM_TOLERANCE = 0, 4, 1e-3
_FLOATS = {"tensor(double)": np.float64, "tensor(float16)": np.float16}  # else float32


def looks_like_probabilities(scores: np.ndarray) -> bool:
    """Whether every row of ``(n, K)`` scores is ≥ 0 and sums to 1 (within 1e-3)."""
    rows = np.asarray(scores, dtype=np.float64)
    if rows.ndim != 2 or rows.size == 0 or not np.isfinite(rows).all():
        return False
    return bool(rows.min() >= 0 and np.abs(rows.sum(axis=1) - 1).max() <= _SUM_TOLERANCE)


def probe(dtype: str, batch: int | None, channels: int, length: int) -> np.ndarray:
    """The seeded standard-normal input ``(batch or 4, C, L)`` in the input's ``dtype``
    (as onnxruntime names it: ``tensor(float)``)."""
    shape = (batch or _PROBE_BATCH, channels, length)
    x = np.random.default_rng(_PROBE_SEED).standard_normal(shape)
    return x.astype(_FLOATS.get(dtype, np.float32))


def detect_kind(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, label: str) -> str:
    """``probabilities`` or ``logits``, from ``run(x)`` (the first output on the probe);
    ``ModelError`` naming ``label`` when the model cannot run on it."""
    try:
        scores = run(x)
    except Exception as e:  # onnxruntime raises its own exception types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{label}: cannot run on an input of shape {x.shape}: {first}") from e
    return PROBABILITIES if looks_like_probabilities(scores) else LOGITS


def graph_ends_in_softmax(graph: Any) -> bool:
    """Whether a ``GraphProto``'s first output is produced by a Softmax node."""
    if not graph.output:
        return False
    name = graph.output[0].name
    producer = next((n for n in graph.node if name in n.output), None)
    return producer is not None and producer.op_type == "Softmax"


def file_ends_in_softmax(data: bytes) -> bool:
    """``graph_ends_in_softmax`` from a serialized model, for apps without onnx."""
    return wire.ends_in_softmax(data)


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax over the last axis, in the input's float type."""
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)

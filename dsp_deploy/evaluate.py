"""Accuracy of an ONNX classifier on a dataset split, on onnxruntime only (no torch).

Contract
--------
``evaluate(model, source, split)`` reads the model with ``dsp_deploy.io.load_model`` and
its contract with ``dsp_deploy.signature`` (the runtime's reading, default included),
prepares the split with ``dsp_deploy.data`` the way that asks (``dsp.normalisation``;
raw values when absent, as the runtime feeds them, with the runtime's one warning naming
the metadata to set) and checks that it fits:

* the model has one float32 input of rank 3, ``(N, C, L)``; C and L (each fixed dim or,
  where the dim is dynamic, ``dsp.input_channels`` / ``dsp.input_length``) equal the
  data's, else ``InputError`` naming both shapes;
* with ``dsp.classes`` the model's class names must be the dataset's (same set, any
  order; numeric names compare by value, "1" = "1.0"): output column j is mapped to the
  dataset class of the same name. Without it, column j is dataset class j, and the
  output width must equal the number of classes.

The prediction is ``argmax`` over the first output ``(n, K)`` (probabilities or logits
alike). A fixed batch dim b is honoured by running chunks of b (the last one padded).
``EvalResult.confusion[i][j]`` counts series of dataset class i predicted as class j;
``seconds`` is the time spent in onnxruntime.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from dsp_deploy import inference
from dsp_deploy import metadata as meta
from dsp_deploy.data import SPLITS, Dataset, label_key, load_dataset
from dsp_deploy.errors import InputError, ModelError
from dsp_deploy.io import load_model, model_inputs
from dsp_deploy.signature import ModelSignature, default_warning, detect_output, from_model

logger = logging.getLogger(__name__)

__all__ = ["EvalResult", "evaluate"]

Dim = int | str | None  # fixed size, symbolic name, or unknown


@dataclass(frozen=True)
class EvalResult:
    """Accuracy of one model on one dataset split."""

    accuracy: float
    n: int
    correct: int
    dataset: str
    split: str
    model: str
    seconds: float  # time in onnxruntime for the whole split
    classes: tuple[str, ...]  # dataset class names, the confusion matrix's order
    confusion: tuple[tuple[int, ...], ...]  # [true class][predicted class]

    def per_class_accuracy(self) -> tuple[float, ...]:
        """Recall of each class (NaN for a class with no series in this split)."""
        return tuple(
            row[i] / sum(row) if sum(row) else math.nan for i, row in enumerate(self.confusion)
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, ``accuracy`` first."""
        out = asdict(self)
        out["classes"] = list(self.classes)
        out["confusion"] = [list(row) for row in self.confusion]
        return out


def evaluate(
    model_path: str | os.PathLike,
    source: str | os.PathLike,
    split: str = "test",
    *,
    batch_size: int = 256,
    threads: int | None = None,
) -> EvalResult:
    """Run ``model_path`` on ``split`` of ``source`` and count correct predictions."""
    if split not in SPLITS:
        raise InputError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1; got {batch_size}")
    if threads is not None and threads < 1:
        raise InputError(f"threads must be at least 1; got {threads}")
    path = os.fspath(model_path)
    model = load_model(model_path)
    signature = _signature(model, path)
    data = load_dataset(source, split, normalise=signature.normalises)
    _check_shape(signature, data, path)
    columns = _column_classes(signature, data, path)
    session = inference.session(model, threads, label=f"model {path}")
    signature = _resolve(signature, session, path)
    start = time.perf_counter()
    scores = _predict(session, signature, data.X, batch_size, path)
    seconds = time.perf_counter() - start
    if columns is None:
        columns = _index_order(scores.shape[1], data, path)
    elif scores.shape[1] != len(columns):
        raise ModelError(
            f"model {path} outputs {scores.shape[1]} scores per series but its "
            f"{meta.CLASSES} names {len(columns)} classes"
        )
    _warn_defaults(signature, path)
    predicted = columns[scores.argmax(axis=1)]
    return _result(data, predicted, path, seconds)


def _signature(model: onnx.ModelProto, path: str) -> ModelSignature:
    """The shared signature (``dsp_deploy.signature``) of a one-input float32 model."""
    inputs = model_inputs(model)
    if len(inputs) != 1:
        names = [v.name for v in inputs]
        raise ModelError(f"model {path} has inputs {names}; expected one input (N, C, L)")
    value = inputs[0]
    if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        kind = onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)
        raise ModelError(f"model {path} input '{value.name}' has type {kind}; expected FLOAT")
    sig = from_model(model, f"model {path}")
    dims = sig.inputs[0].shape
    if dims is not None and len(dims) != 3:
        raise ModelError(f"model {path} input has shape {_format(dims)}; expected rank 3 (N, C, L)")
    return sig


def _resolve(signature: ModelSignature, session: ort.InferenceSession, path: str) -> ModelSignature:
    """The output kind detected as the runtime does (its warning: ``_warn_defaults``)."""
    return detect_output(
        signature, lambda x: session.run([signature.output_name], {signature.input_name: x})[0],
        f"model {path}",
    )  # fmt: skip


def _warn_defaults(signature: ModelSignature, path: str) -> None:
    """The runtime's one warning on defaults, once the model is known to fit the data (a
    bad input stays one line)."""
    warning = default_warning(signature, path)
    if warning is not None:
        logger.warning("%s", warning)


def _expected_dims(signature: ModelSignature) -> tuple[Dim, ...]:
    """(N, C, L): the batch dim as the graph has it, C and L from the signature."""
    dims = signature.inputs[0].shape or (None, None, None)
    return (dims[0], signature.channels, signature.length)


def _format(dims: tuple[Dim, ...]) -> str:
    names = ["N" if i == 0 and not isinstance(d, int) else d for i, d in enumerate(dims)]
    return "(" + ", ".join(str(d) if d is not None else "?" for d in names) + ")"


def _check_shape(signature: ModelSignature, data: Dataset, path: str) -> None:
    dims = _expected_dims(signature)
    for axis in (1, 2):
        want = dims[axis]
        if want is not None and want != data.X.shape[axis]:
            raise InputError(
                f"model {path} input '{signature.input_name}' expects {_format(dims)}; "
                f"dataset {data.name} ({data.split}) has {data.X.shape}"
            )


def _column_classes(signature: ModelSignature, data: Dataset, path: str) -> np.ndarray | None:
    """Dataset class index of each model output column (None: decide by index order)."""
    if signature.classes is None:
        logger.debug("model %s has no %s; assuming index order", path, meta.CLASSES)
        return None
    key = label_key((*signature.classes, *data.classes))
    index = {key(c): i for i, c in enumerate(data.classes)}
    model_keys = [key(c) for c in signature.classes]
    if len(set(model_keys)) != len(model_keys) or set(model_keys) != set(index):
        raise InputError(
            f"model {path} predicts classes {list(signature.classes)}; "
            f"dataset {data.name} has classes {list(data.classes)}"
        )
    return np.array([index[k] for k in model_keys], dtype=np.int64)


def _index_order(width: int, data: Dataset, path: str) -> np.ndarray:
    if width != len(data.classes):
        raise InputError(
            f"model {path} outputs {width} scores per series; dataset {data.name} has "
            f"{len(data.classes)} classes (and the model names none in {meta.CLASSES})"
        )
    return np.arange(width, dtype=np.int64)


def _predict(
    session: ort.InferenceSession,
    signature: ModelSignature,
    X: np.ndarray,
    batch_size: int,
    path: str,
) -> np.ndarray:
    fixed = signature.batch
    step = fixed or batch_size
    chunks = []
    for start in range(0, len(X), step):
        batch = X[start : start + step]
        n = len(batch)
        if n < step and step == fixed:  # a fixed batch dim: pad the last chunk
            batch = np.concatenate([batch, np.zeros((step - n, *X.shape[1:]), X.dtype)])
        chunks.append(_run(session, signature, batch, path)[:n])
    return np.concatenate(chunks)


def _run(
    session: ort.InferenceSession, signature: ModelSignature, batch: np.ndarray, path: str
) -> np.ndarray:
    feed = {signature.input_name: batch}
    (scores,) = inference.run_batch(
        session, [signature.output_name], feed, f"the dataset (model {path})"
    )
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[0] != len(batch):
        raise ModelError(
            f"model {path} output '{signature.output_name}' has shape "
            f"{scores.shape} for a batch of {len(batch)}; expected (N, classes)"
        )
    return scores


def _result(data: Dataset, predicted: np.ndarray, path: str, seconds: float) -> EvalResult:
    size = len(data.classes)
    confusion = np.zeros((size, size), dtype=np.int64)
    np.add.at(confusion, (data.y, predicted), 1)
    correct = int(np.trace(confusion))
    n = len(data.y)
    logger.info("%s on %s (%s): %d/%d correct", path, data.name, data.split, correct, n)
    return EvalResult(
        accuracy=correct / n,
        n=n,
        correct=correct,
        dataset=data.name,
        split=data.split,
        model=path,
        seconds=seconds,
        classes=data.classes,
        confusion=tuple(tuple(int(v) for v in row) for row in confusion),
    )

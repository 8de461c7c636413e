"""onnxruntime sessions and batched runs of in-memory models, for every tool in the package.

One place for the session options (CPU provider, ``threads`` intra-op threads with one
inter-op thread, errors only in onnxruntime's log) and for turning onnxruntime's own
exception types (pybind11's ``Fail``, ``InvalidArgument``, ``NotImplemented``, ...) into a
one-line ``ModelError``. ``run_model`` splits the inputs into batches along axis 0 and
concatenates each output over them.

The app-side ``runtime`` keeps its own session code so it can be vendored alone, and the
``bench`` worker sets its own options (an optimisation level, sequential execution) in a
file that must run without this package; both follow the same settings.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from dsp_deploy import progress
from dsp_deploy.errors import ModelError

if TYPE_CHECKING:
    import onnx

__all__ = ["batches", "first_line", "run_batch", "run_model", "session", "session_options"]

PROVIDERS = ("CPUExecutionProvider",)


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type when the message is empty)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def session_options(
    threads: int | None = None, *, optimise: bool = True, log_level: int = 3, spin: bool = True
) -> ort.SessionOptions:
    """CPU session options: ``threads`` intra-op threads (None: onnxruntime's choice);
    ``optimise=False`` runs the graph as written (no fusions, no constant folding);
    ``spin=False``: idle threads sleep instead of spinning (the same results, less CPU
    time beside other work; for long batched runs, where spinning saves nothing)."""
    options = ort.SessionOptions()
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if not optimise:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = log_level  # 3: errors only, which come back as exceptions
    return options


def session(
    model: onnx.ModelProto,
    threads: int | None = None,
    *,
    label: str = "the model",
    optimise: bool = True,
    spin: bool = True,
) -> ort.InferenceSession:
    """An onnxruntime CPU session for an in-memory model; ``ModelError`` naming ``label``
    (``spin``: ``session_options``)."""
    options = session_options(threads, optimise=optimise, spin=spin)
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=list(PROVIDERS))
    except Exception as e:  # NotImplemented (no kernel for an op and dtype), Fail, ...
        raise ModelError(f"onnxruntime's CPU provider cannot load {label}: {first_line(e)}") from e


def batches(inputs: Mapping[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Yield feeds of at most ``batch_size`` samples, in order (one ``progress`` task)."""
    n = len(next(iter(inputs.values())))
    with progress.task(total=n) as advance:
        for start in range(0, n, batch_size):
            yield {k: v[start : start + batch_size] for k, v in inputs.items()}
            advance(min(batch_size, n - start))


def run_batch(
    sess: ort.InferenceSession,
    fetch: Sequence[str] | None,
    feed: Mapping[str, np.ndarray],
    what: str = "the calibration data",
) -> list[np.ndarray]:
    """``sess.run`` with onnxruntime's failures as a one-line ``ModelError``."""
    try:
        return sess.run(fetch, feed)
    except Exception as e:  # onnxruntime's Fail, InvalidArgument, ... (pybind11 types)
        raise ModelError(f"onnxruntime cannot run the model on {what}: {first_line(e)}") from e


def run_model(
    model: onnx.ModelProto | ort.InferenceSession,
    inputs: Mapping[str, np.ndarray],
    *,
    batch_size: int = 64,
    threads: int | None = None,
    fetch: Sequence[str] | None = None,
) -> tuple[np.ndarray, ...]:
    """The outputs ``fetch`` (None: all) of ``model`` or of an open session, in batches."""
    sess = model if isinstance(model, ort.InferenceSession) else session(model, threads)
    parts = [run_batch(sess, fetch, feed) for feed in batches(inputs, batch_size)]
    return tuple(np.concatenate(cols) for cols in zip(*parts, strict=True))

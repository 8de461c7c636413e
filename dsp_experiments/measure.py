"""What a sweep row measures against the dense reference: accuracy, cost, latency.

The reference for a (arch, dataset) is the published architecture exported for the
dataset's shape with its initial weights (:func:`dense_model`): params and MACs depend on
shapes only, and so does latency. :func:`paired_latency` times a model against that
reference as ``dsp-deploy bench`` times its ratios: both back to back in
``LATENCY_ROUNDS`` paired rounds on one onnxruntime thread, on the thread's CPU clock,
median of the per-round ratios, so the load other tasks put on the machine cancels.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx


def predict(model: onnx.ModelProto, X: np.ndarray, threads: int) -> np.ndarray:
    from dsp_deploy.inference import run_model
    from dsp_deploy.train.export import INPUT_NAME

    (probs,) = run_model(model, {INPUT_NAME: X}, batch_size=256, threads=threads)
    return probs.astype(np.float32)


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(probs.argmax(axis=1) == y))


LATENCY_ROUNDS = 20
LATENCY_BLOCK_MS = 10.0


def paired_latency(
    model: onnx.ModelProto, reference: onnx.ModelProto, length: int, runs: int
) -> dict[str, float]:
    """``latency_ratio`` (``model`` / ``reference``) and ``latency_ms`` at batch 1, one thread.

    ``LATENCY_ROUNDS`` paired rounds (``bench``'s loop); each round times a block of at
    least ``runs / LATENCY_ROUNDS`` calls and ``LATENCY_BLOCK_MS`` of the reference.
    """
    from dsp_deploy.bench.worker import block_size, paired_rounds
    from dsp_deploy.inference import session as ort_session
    from dsp_deploy.train.export import INPUT_NAME

    x = np.random.default_rng(0).standard_normal((1, 1, length), np.float32)
    calls = []
    for m in (reference, model):
        s = ort_session(m, 1)
        calls.append(lambda s=s: s.run(None, {INPUT_NAME: x}))
        for _ in range(3):  # first calls allocate
            calls[-1]()
    per_block = block_size(calls[0], -(-runs // LATENCY_ROUNDS), LATENCY_BLOCK_MS)
    ref_ns, model_ns = paired_rounds(calls, per_block, LATENCY_ROUNDS)
    return {
        "latency_ms": float(np.median(model_ns)) / 1e6,
        "latency_ratio": float(np.median(np.divide(model_ns, ref_ns))),
    }


@lru_cache(maxsize=16)
def _dense_bytes(arch: str, n_classes: int, length: int) -> bytes:
    from dsp_deploy.archs import get_arch
    from dsp_deploy.nets.ensemble import probability_model
    from dsp_deploy.train.export import to_onnx

    net = probability_model([get_arch(arch).build(n_classes)])
    return to_onnx(net, length=length).SerializeToString()


def dense_model(arch: str, n_classes: int, length: int) -> onnx.ModelProto:
    """The published ``arch`` as ONNX for this dataset's shape, with its initial weights."""
    import onnx

    return onnx.load_from_string(_dense_bytes(arch, n_classes, length))


@lru_cache(maxsize=64)
def dense_cost(arch: str, n_classes: int, length: int) -> tuple[int, int]:
    """(params, MACs) of the published ``arch`` as ONNX, for this dataset's shape."""
    from dsp_deploy.cost import model_cost

    cost = model_cost(dense_model(arch, n_classes, length), length=length)
    return cost.params, cost.macs

"""Activation ranges chosen per tensor, handed to onnxruntime's quantizer as its cache.

onnxruntime's ``quantize_static`` calibrates every tensor with one method (MinMax,
Entropy, Percentile, Distribution). Here each tensor gets the candidate range that
quantizes *its own* calibration values best. For the values ``v`` of a tensor and a range
``[lo, hi]`` (``lo ≤ 0 ≤ hi``, as onnxruntime forces), asymmetric 8-bit quantization is::

    scale = (hi − lo) / 255      zp = round(−lo / scale)
    q(v)  = (clip(round(v / scale) + zp, 0, 255) − zp) · scale

and the chosen range minimises ``mean (q(v) − v)²`` over the candidates: min/max (what
MinMax gives), and both tails clipped at the 99.9th, 99.99th and 99.999th percentiles
of ``|v|`` per side (Percentile's family), plus ``max · 2^-k`` for k = 1..4 (the
search NNCF and TensorRT's MSE calibrators do). A tensor that is all zero keeps
``[0, 0]`` widened to ``[0, 1e-8]`` (onnxruntime refuses an empty range).

Values are the model's own on the calibration samples (``activations``: every float
tensor as an extra output of a copy, in batches), subsampled to ``MAX_VALUES`` per tensor
with a fixed seed. ``write_cache`` writes onnxruntime's calibration-cache JSON
(``save_tensors_data``), so ``quantize_static`` skips its own calibration and uses them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from dsp_deploy.compress.calibrate import with_outputs
from dsp_deploy.inference import run_model, session

__all__ = ["TensorRange", "activations", "choose_range", "float_tensors", "write_cache"]

MAX_VALUES = 200_000
PERCENTILES = (99.9, 99.99, 99.999)
LEVELS = 255


@dataclass(frozen=True)
class TensorRange:
    """The range chosen for one tensor and the candidate that gave it."""

    lo: float
    hi: float
    method: str
    mse: float


def float_tensors(model: onnx.ModelProto) -> tuple[str, ...]:
    """Graph inputs and node outputs of float element type (shape inference's view:
    onnx's defaults, not strict; ``model`` itself is not modified)."""
    ir_model = ir.from_proto(model)
    ShapeInferencePass(check_type=False, strict_mode=False, data_prop=False)(ir_model)
    graph = ir_model.graph
    names = [v.name for v in graph.inputs if not v.is_initializer()]
    names += [o.name for n in graph for o in n.outputs if o.name and o.dtype == ir.DataType.FLOAT]
    return tuple(dict.fromkeys(names))


def activations(
    model: onnx.ModelProto,
    inputs: Mapping[str, np.ndarray],
    names: Sequence[str],
    *,
    batch_size: int = 64,
    threads: int | None = None,
) -> dict[str, np.ndarray]:
    """Each tensor of ``names`` over all samples (batch first), one run of a copy."""
    fetch = [n for n in names if n not in inputs]
    given = {n: inputs[n] for n in names if n in inputs}
    if not fetch:
        return given
    probe = with_outputs(model, fetch)
    sess = session(probe, threads, optimise=False)  # as written: QDQ emulated in float
    outputs = run_model(sess, inputs, batch_size=batch_size, fetch=fetch)
    return {**given, **dict(zip(fetch, outputs, strict=True))}


def _subsample(values: np.ndarray) -> np.ndarray:
    flat = values.reshape(-1).astype(np.float64)
    if flat.size <= MAX_VALUES:
        return flat
    return np.random.default_rng(0).choice(flat, MAX_VALUES, replace=False)


def quant_mse(v: np.ndarray, lo: float, hi: float) -> float:
    """``mean (q(v) − v)²`` for the range (module doc)."""
    scale = (hi - lo) / LEVELS
    if scale <= 0:
        return float(np.mean(v**2))
    zp = np.round(-lo / scale)
    q = (np.clip(np.round(v / scale) + zp, 0, LEVELS) - zp) * scale
    return float(np.mean((q - v) ** 2))


def _candidates(v: np.ndarray) -> list[tuple[str, float, float]]:
    lo, hi = min(float(v.min()), 0.0), max(float(v.max()), 0.0)
    found = [("minmax", lo, hi)]
    neg, pos = -v[v < 0], v[v > 0]
    for p in PERCENTILES:
        cut_lo = -float(np.percentile(neg, p)) if neg.size else 0.0
        cut_hi = float(np.percentile(pos, p)) if pos.size else 0.0
        found.append((f"percentile {p}", cut_lo, cut_hi))
    found += [(f"mse max/2^{k}", lo / 2**k, hi / 2**k) for k in range(1, 5)]
    return found


def choose_range(values: np.ndarray) -> TensorRange:
    """The candidate range with the least quantization error on ``values`` (module doc)."""
    v = _subsample(values)
    if not v.size or not np.any(v):
        return TensorRange(0.0, 1e-8, "zero", 0.0)
    scored = [(quant_mse(v, lo, hi), name, lo, hi) for name, lo, hi in _candidates(v)]
    mse, name, lo, hi = min(scored, key=lambda t: t[0])
    return TensorRange(lo, hi, name, mse)


def write_cache(ranges: Mapping[str, TensorRange], path: Path) -> None:
    """onnxruntime's calibration cache (MinMax) holding ``ranges``."""
    from onnxruntime.quantization import CalibrationMethod, save_tensors_data
    from onnxruntime.quantization.calibrate import TensorData, TensorsData

    data = {
        name: TensorData(lowest=np.float32(r.lo), highest=np.float32(r.hi))
        for name, r in ranges.items()
    }
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), path)

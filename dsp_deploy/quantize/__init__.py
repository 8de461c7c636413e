"""INT8 post-training quantization on top of compress: ``quantize(model, calibration)``.

BN folding, cross-layer equalisation, per-tensor activation ranges, bias correction and
a sensitivity-ordered float fallback, on onnxruntime's own quantizer (QDQ, per-channel
weights); gated like ``compress``. Deploy side: onnx, onnx-ir, onnxruntime, numpy only.
See ``quantize.pipeline`` for the steps and ``benchmarks/results/quantize.md`` for numbers.
"""

from dsp_deploy.quantize.options import TARGETS, QuantizeOptions
from dsp_deploy.quantize.pipeline import QuantizeResult, quantize

__all__ = ["TARGETS", "QuantizeOptions", "QuantizeResult", "quantize"]

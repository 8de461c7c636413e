"""Default verification tolerances, from the element type of the model's outputs.

``verify`` accepts |a − b| ≤ atol + rtol·|a|. A lossless prune leaves the function alone
and changes only how it is computed (smaller convs, other kernels, sums in another
order), so an exact result may still differ by rounding, and the tolerance must pass
rounding while refusing any real change. Rounding is set by the outputs' precision,
ε = 2**−p (p stored significand bits); outputs here are logits or probabilities, of
magnitude about 1:

* float32 (ε = 1.2e−7) and float64: atol 1e−5, rtol 1e−4 (≈ 84 ε and 840 ε of
  float32): room for reordered sums over a few thousand terms, far below what removing
  a live channel does to a classifier's outputs.
* float16 (ε = 2**−10 = 9.8e−4, unit roundoff u = ε/2 = 4.9e−4). onnxruntime's CPU
  provider runs most float16 operators in float32 between Casts that it inserts, so a
  graph with other nodes (the pruned one, or one with probe outputs) rounds its
  intermediates to float16 at other places; each such rounding moves a value by up to
  u relative, and the d layers after it carry that on. So rtol 1e−2 ≈ 10 ε = 20 u (a
  chain of roundings through a conv stack of depth up to ~20), and atol 1e−3 ≈ ε (one
  ulp at magnitude 1: outputs near 0, such as a softmax's small probabilities, carry the
  absolute rounding of the magnitude-1 values they were computed from). A float32
  tolerance would refuse float16 models on their own rounding: two sessions of one
  unchanged model differ by one ulp (4.9e−4 at |y| ≈ 0.5), 0.05–0.08 of this tolerance
  (``tests/test_io_dtypes.py``). The price is resolution: a live channel whose removal
  moves the outputs by fewer than ~10 ulps passes, as no output tolerance could tell it
  from float16 rounding; the lossless ``dead`` criterion removes only channels that are
  exactly 0, so this gate is its safety net, not its decision.

The narrowest float type among the outputs decides; a model without float outputs, or
with float16 inside but float32 outputs, gets the float32 tolerance (a refusal, when its
rounding exceeds it, that ``--atol``/``--rtol`` lift).
"""

from __future__ import annotations

import onnx

__all__ = ["FLOAT16_TOLERANCE", "FLOAT32_TOLERANCE", "default_tolerance", "resolve_tolerance"]

FLOAT32_TOLERANCE = (1e-5, 1e-4)  # (atol, rtol), float32 and float64 outputs
FLOAT16_TOLERANCE = (1e-3, 1e-2)  # (atol, rtol): ≈ ε and 10 ε of float16, ε = 9.8e-4


def default_tolerance(model: onnx.ModelProto) -> tuple[float, float]:
    """(atol, rtol) for ``model``'s outputs: float16's when any output is float16."""
    elems = {o.type.tensor_type.elem_type for o in model.graph.output}
    return FLOAT16_TOLERANCE if onnx.TensorProto.FLOAT16 in elems else FLOAT32_TOLERANCE


def resolve_tolerance(
    model: onnx.ModelProto, atol: float | None, rtol: float | None
) -> tuple[float, float]:
    """``atol`` and ``rtol``, each ``default_tolerance(model)``'s where None."""
    default_atol, default_rtol = default_tolerance(model)
    return (default_atol if atol is None else atol, default_rtol if rtol is None else rtol)

"""The two settings ``compress`` resolves against the model it is given.

* batch size (``run_batch_size``): the option, or 1 for a model whose batch dim is fixed
  at 1; a larger fixed batch is refused (the last batch could not be filled without
  changing the statistics);
* ``min_count`` None (``default_min_count``): the paper's keep rule of the model's
  architecture, ``dsp.arch`` looked up in ``nets.registry.ARCHS`` (a table that imports
  no torch): n_c > 1 for LITE and LITETime, n_c > 0 for anything else (InceptionTime,
  an unknown architecture, no ``dsp.arch``).
"""

from __future__ import annotations

import onnx

from dsp_deploy import metadata
from dsp_deploy.archs import ARCHS
from dsp_deploy.errors import ModelError
from dsp_deploy.io import model_inputs

__all__ = ["default_min_count", "run_batch_size"]


def run_batch_size(model: onnx.ModelProto, batch_size: int) -> int:
    """``batch_size``, or 1 for a model whose batch dim is fixed at 1 (module docstring)."""
    fixed = set()
    for value in model_inputs(model):
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            fixed.add(int(dims[0].dim_value))
    if not fixed:
        return batch_size
    if fixed == {1}:
        return 1
    raise ModelError(
        f"the model's batch dimension is fixed at {max(fixed)}; compress needs a dynamic "
        "batch dimension or batch 1 (export the model with a dynamic batch axis)"
    )


def default_min_count(model: onnx.ModelProto) -> int:
    """The paper's keep rule for the model's ``dsp.arch`` (0 when unknown or absent)."""
    spec = ARCHS.get(metadata.read_metadata(model).get(metadata.ARCH, ""))
    return 0 if spec is None else spec.min_count

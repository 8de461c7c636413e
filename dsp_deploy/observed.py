"""Shapes of a model's tensors that ONNX shape inference leaves unknown, from onnxruntime.

Two sources, asked in order by :func:`dsp_deploy.cost.model_cost`, both through one
session of a copy of the model that also outputs the tensors asked for (graph
optimisations off, so every tensor exists as written):

* onnxruntime's own shape inference, read from the session's outputs without running
  it: it has schemas for its contrib ops (``com.microsoft`` FusedConv, QGemm,
  QLinearConcat, ...), which the ``onnx`` package has not;
* one run on a sample (``feeds_from``: the first rows of the calibration data, as many as
  the model's batch): the shapes it produces. Only run time knows a Pad or Reshape whose
  amounts are computed from ``Shape`` through ops that neither inference follows (Mod,
  Cast, ConstantOfShape chains of an exporter's "same" padding), or anything
  data-dependent; those shapes hold for that sample's length.

onnxruntime is imported only when a model needs it. Its failures become one-line
``ModelError``s.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import onnx

from dsp_deploy.errors import InputError
from dsp_deploy.passes import copy_model

if TYPE_CHECKING:
    import onnxruntime as ort

logger = logging.getLogger(__name__)

Shape = tuple[int, ...]

__all__ = ["feeds_from", "run_inputs", "runtime_shapes"]


def run_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs fed at run time (not initializers), tensors only."""
    initializers = {t.name for t in model.graph.initializer}
    return [
        v for v in model.graph.input
        if v.name not in initializers and v.type.HasField("tensor_type")
    ]  # fmt: skip


def runtime_shapes(
    model: onnx.ModelProto, names: tuple[str, ...], feeds: Mapping[str, np.ndarray] | None
) -> dict[str, Shape]:
    """Shapes of ``names`` as onnxruntime infers them for ``model`` (static inputs), and,
    given ``feeds``, as one run on them produces; names neither knows are left out."""
    session = _shape_session(model, names)
    found: dict[str, Shape] = {}
    for out in session.get_outputs():
        if out.name in names and all(isinstance(d, int) for d in out.shape):
            found[out.name] = tuple(out.shape)
    fetch = [n for n in names if n not in found]
    if feeds is not None and fetch:
        from dsp_deploy.inference import run_batch

        values = run_batch(session, fetch, dict(feeds), "the sample")
        found.update((n, tuple(v.shape)) for n, v in zip(fetch, values, strict=True))
    logger.debug("shapes from onnxruntime: %d of %d", len(found), len(names))
    return found


def _shape_session(model: onnx.ModelProto, names: tuple[str, ...]) -> ort.InferenceSession:
    probe = copy_model(model)
    for out in probe.graph.output:  # a declared symbolic shape would mask the inferred one
        if out.name in names:
            out.type.tensor_type.ClearField("shape")
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in have)
    from dsp_deploy.inference import session  # onnxruntime: only models static inference

    return session(probe, 1, label="the model to infer shapes", optimise=False)  # cannot size


def feeds_from(model: onnx.ModelProto, sample: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The first rows of ``sample`` per input, as many as its batch (fixed by then), in
    the input's element type."""
    feeds = {}
    for value in run_inputs(model):
        if value.name not in sample:
            raise InputError(f"the sample has no array for model input {value.name!r}")
        tensor = value.type.tensor_type
        rows = np.asarray(sample[value.name])
        if len(tensor.shape.dim) >= 2:  # a fixed batch larger than the sample: repeat rows
            batch = tensor.shape.dim[0].dim_value
            rows = np.resize(rows[:batch], (batch, *rows.shape[1:]))
        feeds[value.name] = rows.astype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    return feeds

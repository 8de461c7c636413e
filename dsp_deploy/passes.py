"""Graph transformations as onnx-ir passes with one result type.

Every transformation of a model (normalise, fold constants, fuse Concat+BN, the 2-D
layout, prune, ensemble, the export clean-ups) is a ``ModelPass``: an onnx-ir
``FunctionalPass`` — it returns a new model and never changes its input, which
onnx-ir's ``PassBase`` checks — whose ``rewrite`` edits a clone in place and returns
``(modified, report)``. Callers outside the graph layer hold ``onnx.ModelProto``;
``apply`` converts at the boundary and gives one result type::

    Rewrite(model: onnx.ModelProto, modified: bool, report: R)

``report`` is the pass's own frozen record (what it did and why it left things alone).
A pass that changes value shapes clears the shapes it changed and checks the new ones
itself: onnx-ir's shape inference only logs when inference fails.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Generic, TypeVar

import onnx
import onnx_ir as ir

R = TypeVar("R")


@dataclass
class ReportedResult(ir.passes.PassResult, Generic[R]):
    """onnx-ir's ``PassResult`` with the pass's report."""

    report: R | None = None


@dataclass(frozen=True)
class Rewrite(Generic[R]):
    """A transformed model, whether it differs from the input, and the pass's report."""

    model: onnx.ModelProto
    modified: bool
    report: R


class ModelPass(ir.passes.FunctionalPass, Generic[R]):
    """A functional pass: ``rewrite`` edits a clone of the input and reports."""

    @abc.abstractmethod
    def rewrite(self, model: ir.Model) -> tuple[bool, R]:
        """Edit ``model`` (a clone: free to change) and return (modified, report)."""

    def call(self, model: ir.Model) -> ReportedResult[R]:
        clone = model.clone()
        modified, report = self.rewrite(clone)
        return ReportedResult(clone, modified, report)


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A deep copy of a proto model (what keeps a caller's proto untouched: ``apply``)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def apply(transform: ModelPass[R], model: onnx.ModelProto) -> Rewrite[R]:
    """Run ``transform`` on ``model`` (untouched) and return the result as a proto.

    The pass edits an onnx-ir model deserialised from a private copy of the proto, which
    nothing else holds, so it needs no second copy (``call``'s clone). The proto copy is
    what keeps the input untouched: onnx-ir's initializer tensors wrap the proto's own
    ``TensorProto`` objects and ``Model.clone`` shares them, so renaming such a value
    would rename the caller's tensor too (onnx-ir 1.1.0; a copy costs one memcpy).
    """
    private = ir.from_proto(copy_model(model))
    modified, report = transform.rewrite(private)
    return Rewrite(ir.to_proto(private), modified, report)

"""``passes.apply``: a functional pass never changes the proto it was given."""

from __future__ import annotations

import sys
from pathlib import Path

import onnx_ir as ir
import pytest

from dsp_deploy.passes import ModelPass, apply

sys.path.insert(0, str(Path(__file__).parent))
import onnx_graphs as G  # noqa: E402


class RenameInitializers(ModelPass[int]):
    """Renames every initializer (the edit that aliased the input's tensors)."""

    def rewrite(self, model: ir.Model) -> tuple[bool, int]:
        values = list(model.graph.initializers.values())
        for value in values:
            model.graph.initializers.pop(value.name)
            value.name = f"{value.name}_renamed"
            model.graph.register_initializer(value)
        return bool(values), len(values)


def test_a_pass_run_directly_leaves_its_input_model_untouched() -> None:
    model = ir.from_proto(G.chain())
    names = set(model.graph.initializers)
    result = RenameInitializers()(model)
    assert result.model is not model and set(model.graph.initializers) == names


def test_apply_leaves_its_input_untouched_and_reports() -> None:
    model = G.chain()
    before = model.SerializeToString()
    result = apply(RenameInitializers(), model)
    assert model.SerializeToString() == before
    assert result.modified and result.report == len(model.graph.initializer)
    assert {t.name for t in result.model.graph.initializer} == {
        f"{t.name}_renamed" for t in model.graph.initializer
    }


def test_a_pass_may_not_return_its_input() -> None:
    class Lazy(ModelPass[None]):
        def call(self, model: ir.Model):  # breaks the functional contract on purpose
            from dsp_deploy.passes import ReportedResult

            return ReportedResult(model, False, None)

        def rewrite(self, model: ir.Model) -> tuple[bool, None]:
            return False, None

    # onnx-ir's PassBase holds the contract wherever a pass runs on an ir.Model
    with pytest.raises(ir.passes.PassError, match="not in-place"):
        Lazy()(ir.from_proto(G.chain()))

"""compress/inspect on models that load but cannot be measured: one line, exit 2, no output."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "lite_gunpoint.onnx"
CALIB = ROOT / "calibration" / "lite_gunpoint.npz"


def _with_batch(tmp_path: Path, batch: int) -> Path:
    model = onnx.load(MODEL)
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = batch
    path = tmp_path / f"batch{batch}.onnx"
    onnx.save(model, path)
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_model_with_batch_fixed_at_1_is_compressed_one_sample_at_a_time(
    run_cli, tmp_path: Path
) -> None:
    model, out = _with_batch(tmp_path, 1), tmp_path / "out.onnx"
    result = run_cli("compress", model, "--calib", CALIB, "-o", out, "--json")
    assert result.code == 0, result.stderr
    assert out.is_file()


@pytest.mark.parametrize("command", ["compress", "inspect"])
def test_a_larger_fixed_batch_is_refused_naming_the_file(
    run_cli, tmp_path: Path, command: str
) -> None:
    model, out = _with_batch(tmp_path, 134), tmp_path / "out.onnx"
    before = _digest(model)
    extra = ("-o", out) if command == "compress" else ()
    result = run_cli(command, model, "--calib", CALIB, *extra)
    assert result.code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert str(model) in result.stderr and "batch dimension is fixed at 134" in result.stderr
    assert not out.exists() and _digest(model) == before


def test_activations_that_overflow_are_refused_without_numpy_warnings(
    run_cli, tmp_path: Path
) -> None:
    """Finite weights near float32's limit give inf activations: a clear error, not a
    RuntimeWarning or a model pruned on meaningless statistics."""
    model = onnx.load(MODEL)
    for tensor in model.graph.initializer:
        if tensor.name.endswith("branches.0.conv.weight"):
            w = numpy_helper.to_array(tensor)
            tensor.CopyFrom(numpy_helper.from_array(np.full_like(w, 3e38), tensor.name))
    path, out = tmp_path / "huge.onnx", tmp_path / "out.onnx"
    onnx.save(model, path)
    result = run_cli("compress", path, "--calib", CALIB, "-o", out)
    assert result.code == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "NaN or infinite values" in result.stderr
    assert str(path) in result.stderr
    assert not out.exists()

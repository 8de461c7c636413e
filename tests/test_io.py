"""io: model and calibration files — every bad input is one clear error, nothing written."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from dsp_deploy import io
from dsp_deploy.errors import CalibrationError, InputError, ModelError

sys.path.insert(0, str(Path(__file__).parent))
import onnx_graphs as G  # noqa: E402


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save(G.chain(), path)
    return path


def test_load_model_round_trip(model_file: Path) -> None:
    assert io.load_model(model_file).SerializeToString() == G.chain().SerializeToString()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "does not exist"),
        (b"", "is empty"),
        (b"not an onnx model at all \x00\xff", "not a readable ONNX model|holds no ONNX graph"),
    ],
)
def test_load_model_bad_files(tmp_path: Path, content: bytes | None, match: str) -> None:
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelError, match=match) as e:
        io.load_model(path)
    assert str(path) in str(e.value)


def test_load_model_truncated(tmp_path: Path, model_file: Path) -> None:
    path = tmp_path / "cut.onnx"
    path.write_bytes(model_file.read_bytes()[:50])
    with pytest.raises(ModelError, match="cut.onnx"):
        io.load_model(path)


def test_load_model_checker_failure(tmp_path: Path) -> None:
    model = G.chain()
    model.graph.node[0].input[1] = "missing_weight"
    path = tmp_path / "invalid.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelError, match="fails the ONNX checker"):
        io.load_model(path)


def test_save_model_is_atomic_and_refuses_inputs(tmp_path: Path, model_file: Path) -> None:
    out = tmp_path / "out.onnx"
    io.save_model(G.chain(), out, inputs=[model_file])
    assert io.load_model(out).graph.node
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    with pytest.raises(InputError, match="is the input"):
        io.save_model(G.chain(), model_file, inputs=[model_file])
    with pytest.raises(InputError, match="directory"):
        io.save_model(G.chain(), tmp_path, inputs=[model_file])


def _npz(tmp_path: Path, **arrays) -> Path:
    path = tmp_path / "calib.npz"
    np.savez(path, **arrays)
    return path


def test_calibration_any_key_for_single_input(tmp_path: Path) -> None:
    x = G.inputs(5)
    calib = io.load_calibration(_npz(tmp_path, series=x, y=np.arange(5) % 2), G.chain())
    np.testing.assert_array_equal(calib.inputs["x"], x)
    assert calib.labels.dtype == np.int64 and len(calib) == 5


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x": np.full((4, 1, G.L), np.nan, np.float32)}, "NaN/inf"),
        ({"x": np.full((4, 1, G.L), np.inf, np.float32)}, "NaN/inf"),
        ({"x": np.zeros((0, 1, G.L), np.float32)}, "empty"),
        ({"x": np.zeros((4, G.L), np.float32)}, r"shape \(4, 32\).*expects \(N, 1, 32\)"),
        ({"x": np.zeros((4, 2, G.L), np.float32)}, r"shape \(4, 2, 32\)"),
        ({"x": np.array([["a"] * G.L] * 4).reshape(4, 1, G.L)}, "dtype"),
        ({"a": np.zeros((4, 1, G.L)), "b": np.zeros((4, 1, G.L))}, "expected one array"),
        ({"x": np.zeros((4, 1, G.L)), "y": np.array([0, 1])}, "expected 4 integer labels"),
    ],
)
def test_calibration_rejects(tmp_path: Path, arrays: dict, match: str) -> None:
    with pytest.raises(CalibrationError, match=match):
        io.load_calibration(_npz(tmp_path, **arrays), G.chain())


def test_calibration_rejects_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([object(), 1], dtype=object))
    with pytest.raises(CalibrationError, match="object"):
        io.load_calibration(path, G.chain())


@pytest.mark.parametrize("content", [None, b"not a zip", b""])
def test_calibration_unreadable(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "c.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CalibrationError, match="c.npz"):
        io.load_calibration(path, G.chain())


def test_calibration_multi_input_needs_all_names(tmp_path: Path) -> None:
    model = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        two (float[N, 3] a, float[N, 3] b) => (float[N, 3] s) { s = Add (a, b) }"""
    )
    ok = io.load_calibration(_npz(tmp_path, a=np.ones((2, 3)), b=np.ones((2, 3))), model)
    assert sorted(ok.inputs) == ["a", "b"]
    with pytest.raises(CalibrationError, match=r"expected arrays \['a', 'b'\]"):
        io.load_calibration(_npz(tmp_path, a=np.ones((2, 3)), c=np.ones((2, 3))), model)


def test_cli_bad_inputs_exit_2_and_write_nothing(tmp_path: Path, model_file: Path, run_cli) -> None:
    good = _npz(tmp_path, x=G.inputs(8))
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    bad_calib = tmp_path / "bad.npz"
    np.savez(bad_calib, x=np.full((4, 1, G.L), np.nan, np.float32))
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    cases = [
        ("compress", empty, "--calib", good),
        ("compress", tmp_path / "missing.onnx", "--calib", good),
        ("compress", model_file, "--calib", tmp_path / "missing.npz"),
        ("compress", model_file, "--calib", bad_calib),
        ("compress", model_file, "--calib", good, "-o", model_file),
        ("inspect", empty),
    ]
    for args in cases:
        result = run_cli(*args)
        assert result.code == 2, (args, result)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path))


def test_written_files_get_umask_permissions_not_mkstemp_0600(tmp_path) -> None:
    from dsp_deploy.io import save_calibration

    old = os.umask(0o022)
    try:
        io.save_model(G.chain(), tmp_path / "m.onnx")
        save_calibration(tmp_path / "c.npz", x=np.zeros((2, 1, 8), np.float32))
    finally:
        os.umask(old)
    assert (tmp_path / "m.onnx").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "c.npz").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz", "m.onnx"]  # no temp left

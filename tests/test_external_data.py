"""External-data models and model-side resource limits (issue 7, items 3 and 5).

A model whose tensors live in a data file beside it loads relative to its own folder;
a location that escapes the folder, or a data file that is missing or too short, is a
``ModelError`` naming the model and the location — checked by us before any byte is
read, and refused by onnx 1.23 itself too (tested, so we notice if either changes).
``compress`` writes external data beside its output when its input had it. Files that
declare more than memory holds are refused before anything is allocated: sparse files
stand in for huge ones, so no test needs gigabytes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_graphs
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from dsp_deploy import external_data, io, modelcheck
from dsp_deploy.errors import ModelError
from dsp_deploy.runtime import Classifier

DATA = "chain.onnx.data"
ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "models" / "lite_gunpoint.onnx"
SHIPPED_CALIB = ROOT / "calibration" / "lite_gunpoint.npz"


def save_external(model: onnx.ModelProto, path: Path, location: str = DATA) -> Path:
    onnx.save_model(model, path, save_as_external_data=True, location=location, size_threshold=0)
    return path


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def relocate(path: Path, location: str, *, length: int | None = None) -> Path:
    """Point the model's first external tensor at ``location`` (and ``length``)."""
    model = onnx.load(path, load_external_data=False)
    tensor = model.graph.initializer[0]
    for entry in tensor.external_data:
        if entry.key == "location":
            entry.value = location
        if entry.key == "length" and length is not None:
            entry.value = str(length)
    onnx.save(model, path)
    return path


@pytest.fixture
def external(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    return save_external(onnx_graphs.chain(), folder / "chain.onnx")


def test_loads_relative_to_the_model_folder_not_the_cwd(
    external: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = io.load_model(external)
    expected = weights(onnx_graphs.chain())
    got = weights(loaded)
    assert got.keys() == expected.keys()
    for name, array in expected.items():
        np.testing.assert_array_equal(got[name], array)
    assert not any(external_data.is_external(t) for t in loaded.graph.initializer)


def test_a_subfolder_inside_the_model_folder_is_fine(external: Path) -> None:
    (external.parent / "weights").mkdir()
    (external.parent / DATA).rename(external.parent / "weights" / DATA)
    model = onnx.load(external, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = f"weights/{DATA}"
    onnx.save(model, external)
    assert weights(io.load_model(external)).keys() == weights(onnx_graphs.chain()).keys()


def _outside(external: Path) -> str:
    outside = external.parent.parent / "outside.data"
    outside.write_bytes((external.parent / DATA).read_bytes())
    return "../outside.data"


def _absolute(external: Path) -> str:
    return str((external.parent / DATA).resolve())


def _symlink(external: Path) -> str:
    outside = external.parent.parent / "outside.data"
    outside.write_bytes((external.parent / DATA).read_bytes())
    (external.parent / "link.data").symlink_to(outside)
    return "link.data"


def _symlinked_folder(external: Path) -> str:
    (external.parent.parent / "real").mkdir()
    (external.parent.parent / "real" / DATA).write_bytes((external.parent / DATA).read_bytes())
    (external.parent / "sub").symlink_to(external.parent.parent / "real")
    return f"sub/{DATA}"


def _missing(external: Path) -> str:
    return "missing.data"


def _short(external: Path) -> str:
    (external.parent / "short.data").write_bytes(b"\0" * 10)
    return "short.data"


def _dotdot_inside(external: Path) -> str:
    return f"a/../../{external.parent.name}/../outside.data"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_outside, "points outside the model's folder"),
        (_dotdot_inside, "points outside the model's folder"),
        (_absolute, "an absolute path"),
        (_symlink, "is a symbolic link"),
        (_symlinked_folder, "is a symbolic link"),
        (_missing, "expected a data file at .*, found nothing"),
        (_short, "expected 48 bytes at offset 0; short.data holds 10 bytes"),
    ],
)
def test_bad_locations_are_model_errors_naming_model_and_location(
    external: Path, make, message: str
) -> None:
    location = make(external)
    relocate(external, location)
    with pytest.raises(ModelError, match=message) as info:
        io.load_model(external)
    assert str(external) in str(info.value)
    assert repr(location) in str(info.value)
    # onnx 1.23 refuses each of these on its own as well (defence in depth).
    with pytest.raises((onnx.checker.ValidationError, ValueError, OSError)):
        onnx.load(external)


def test_a_length_that_disagrees_with_the_dims_is_refused(external: Path) -> None:
    relocate(external, DATA, length=40)
    with pytest.raises(
        ModelError, match=r"length 40 bytes; dims \[4, 1, 3\] of type FLOAT need 48"
    ):
        io.load_model(external)


def test_the_runtime_validates_external_data_before_onnxruntime(external: Path) -> None:
    relocate(external, _outside(external))
    with pytest.raises(ModelError, match="points outside the model's folder"):
        Classifier(external)


def test_cli_refuses_an_escaping_location_in_one_line(external: Path, run_cli) -> None:
    relocate(external, _outside(external))
    before = sorted(os.listdir(external.parent))
    calib = external.parent.parent / "calib.npz"
    np.savez(calib, x=onnx_graphs.inputs(8))
    for args in (["inspect", external], ["compress", external, "--calib", calib]):
        result = run_cli(*args)
        assert result.code == 2
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ")
        assert str(external) in lines[0] and "'../outside.data'" in lines[0]
    assert sorted(os.listdir(external.parent)) == before


# --- compress keeps the layout -----------------------------------------------------------


def _outputs(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_compress_writes_external_data_beside_its_output(tmp_path: Path, run_cli) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    src = save_external(onnx.load(SHIPPED), folder / "lite.onnx", "lite.onnx.data")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    out = tmp_path / "out" / "lite.pruned.onnx"
    out.parent.mkdir()

    result = run_cli("compress", src, "--calib", SHIPPED_CALIB, "-o", out, "--threads", "1")

    assert result.code == 0, result.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # inputs untouched
    written = sorted(p.name for p in out.parent.iterdir())
    assert len(written) == 2 and written[0] == out.name
    data = out.parent / written[1]
    assert data.name.startswith(f"{out.name}.") and data.name.endswith(".data")
    assert io.uses_external_data(out)
    assert out.stat().st_size < data.stat().st_size  # the weights are outside the model
    pruned, dense = io.load_model(out), onnx.load(SHIPPED)
    assert len(pruned.graph.node) == len(dense.graph.node)
    assert sum(numpy_helper.to_array(t).size for t in pruned.graph.initializer) < sum(
        numpy_helper.to_array(t).size for t in dense.graph.initializer
    )
    with np.load(SHIPPED_CALIB) as f:
        x = f["x"][:8]
    np.testing.assert_allclose(_outputs(out, x), _outputs(src, x), atol=1e-4)  # compress's gate


def test_compress_of_an_inline_model_writes_no_data_file(tmp_path: Path, run_cli) -> None:
    src = tmp_path / "chain.onnx"
    onnx.save(onnx_graphs.chain(), src)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=onnx_graphs.inputs(40))
    out = tmp_path / "out.onnx"
    assert run_cli("compress", src, "--calib", calib, "-o", out, "--holdout", "0").code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz", "chain.onnx", "out.onnx"]
    assert not io.uses_external_data(out)


def test_resaving_replaces_the_data_file_and_leaves_no_stale_one(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    first, second = onnx.load(SHIPPED), onnx.load(SHIPPED)
    big = max(second.graph.initializer, key=lambda t: len(t.raw_data))
    big.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(big) * 2, big.name))
    io.save_model(first, out, external_data=True)
    old = {p.name for p in tmp_path.iterdir()}
    io.save_model(second, out, external_data=True)
    new = {p.name for p in tmp_path.iterdir()}
    assert len(old) == len(new) == 2 and old != new  # content-named data file
    loaded = weights(io.load_model(out))
    for name, array in weights(second).items():
        np.testing.assert_array_equal(loaded[name], array)
    (tmp_path / "m.onnx.unrelated.data").write_bytes(b"keep me")
    io.save_model(first, out, external_data=True)
    assert (tmp_path / "m.onnx.unrelated.data").exists()  # only our <hash>.data names go
    io.save_model(first, out, external_data=False)  # inline now: the data file goes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.unrelated.data"]
    assert weights(io.load_model(out)).keys() == weights(first).keys()


def test_data_file_is_complete_before_the_model_points_at_it(tmp_path: Path) -> None:
    # The model is replaced last, so a reader that sees it finds all of its data: every
    # tensor's region lies inside a data file that is already whole.
    out = tmp_path / "m.onnx"
    io.save_model(onnx.load(SHIPPED), out, external_data=True)
    model = onnx.load(out, load_external_data=False)
    assert external_data.check_external_data(model, out) > 0
    assert not list(tmp_path.glob(".*.tmp"))


def test_save_model_keeps_small_tensors_inline(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    io.save_model(onnx_graphs.chain(), out, external_data=True)  # every tensor < 1 KiB
    assert not io.uses_external_data(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


# --- resource limits ---------------------------------------------------------------------


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)  # a hole: no disk blocks, no memory
    return path


def test_a_model_file_over_2_gib_is_refused_before_reading(tmp_path: Path, run_cli) -> None:
    big = _sparse(tmp_path / "big.onnx", 3 * 2**30)
    result = run_cli("inspect", big)
    assert result.code == 2
    assert result.stderr.startswith(f"error: model file {big} is 3.0 GiB")
    assert "under 2 GiB" in result.stderr


def test_a_model_file_larger_than_memory_is_refused_before_reading(tmp_path: Path) -> None:
    path = _sparse(tmp_path / "m.onnx", 8 * 2**20)
    with pytest.raises(ModelError, match=r"8\.0 MiB; loading it needs about 16\.0 MiB.*4\.0 MiB"):
        modelcheck.check_file(path, available=4 * 2**20)
    assert modelcheck.check_file(path, available=64 * 2**20) == 8 * 2**20


def test_external_data_larger_than_memory_is_refused_before_reading(tmp_path: Path) -> None:
    # 2**38 float32 = 1 TiB, declared consistently by dims, length and a sparse data file.
    n = 2**38
    _sparse(tmp_path / "huge.data", 4 * n)
    tensor = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[n])
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "huge.data"), ("offset", "0"), ("length", str(4 * n))):
        tensor.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])],
        "huge",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])],
        [tensor],
    )
    path = tmp_path / "huge.onnx"
    onnx.save(helper.make_model(graph), path)
    with pytest.raises(ModelError, match=r"keeps 1\.0 TiB of weights in external data"):
        io.load_model(path)


def _with_input_dim(tmp_path: Path, dim: int) -> Path:
    model = onnx_graphs.chain()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = dim
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    return path


def test_huge_declared_input_dims_are_refused_before_allocation(tmp_path: Path, run_cli) -> None:
    path = _with_input_dim(tmp_path, 2**40)
    with pytest.raises(ModelError, match=r"input 'x' of shape \('N', 1, 1099511627776\) needs"):
        io.load_model(path)
    result = run_cli("bench", path, "--runs", "1", "--warmup", "0", "--rounds", "1")
    assert result.code == 2 and "1099511627776" in result.stderr


@pytest.mark.parametrize("dim", [-5, 0])
def test_negative_or_zero_declared_input_dims_are_refused(tmp_path: Path, dim: int) -> None:
    # 0 found by fuzzing: compress fed the model and onnxruntime raised past our errors.
    message = rf"declares shape \('N', 1, {dim}\); expected dims >= 1"
    with pytest.raises(ModelError, match=message):
        io.load_model(_with_input_dim(tmp_path, dim))


def test_a_huge_constant_of_shape_is_refused_by_its_inferred_size(tmp_path: Path) -> None:
    model = onnx_graphs.chain()
    model.graph.initializer.append(
        numpy_helper.from_array(np.array([2**20, 2**20, 64], np.int64), "big_shape")
    )
    model.graph.node.append(helper.make_node("ConstantOfShape", ["big_shape"], ["big"]))
    model.graph.output.append(
        helper.make_tensor_value_info("big", TensorProto.FLOAT, ["a", "b", "c"])
    )
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelError, match=r"tensor 'big' of shape \(1048576, 1048576, 64\)"):
        io.load_model(path)


def test_huge_initializer_dims_without_the_bytes_are_refused(tmp_path: Path) -> None:
    model = onnx_graphs.chain()
    model.graph.initializer[0].dims[0] = 2**40  # raw_data stays 48 bytes
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelError, match="fails the ONNX checker: .*too small for the declared"):
        io.load_model(path)

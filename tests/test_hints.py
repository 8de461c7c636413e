"""Hints for a user's first steps: files that are not ONNX, dataset-name typos, fixed batch.

Each hint is one line naming what was found and what to do (the untrained-model warning
is tested in test_train.py, the nothing-to-prune hint in test_compress_cli.py).
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest

from dsp_deploy.dataset_files import closest_names
from dsp_deploy.errors import DatasetError, InputError, ModelError
from dsp_deploy.io import foreign_format, load_model
from dsp_deploy.runtime import Classifier

EXPORT = "export it to ONNX first"


def onnx_bytes(batch: str = "N") -> bytes:
    model = onnx.parser.parse_model(
        f"""
        <ir_version: 8, opset_import: ["" : 17]>
        net (float[{batch}, 1, 4] x) => (float[{batch}, 4] p)
        {{
            p = Flatten <axis = 1> (x)
        }}
        """
    )
    return model.SerializeToString()


def torch_zip() -> bytes:
    """What torch.save writes since 1.6: a ZIP whose first member is ``<name>/data.pkl``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("mine/data.pkl", pickle.dumps({"weight": [1.0, 2.0]}, protocol=2))
        z.writestr("mine/version", "3\n")
    return buffer.getvalue()


def npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((2, 1, 4), np.float32))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "data", "found"),
    [
        ("mine.pt", torch_zip(), f"a PyTorch checkpoint (torch.save): {EXPORT}"),
        ("mine.bin", torch_zip(), f"a PyTorch checkpoint (torch.save): {EXPORT}"),
        ("old.pth", pickle.dumps({"w": 1}, protocol=2), "a pickle (a PyTorch checkpoint"),
        ("mine.pth", b"\x00\x01garbage", f"a PyTorch checkpoint: {EXPORT}"),
        ("model.h5", b"\x89HDF\r\n\x1a\n" + bytes(8), "an HDF5 file (a Keras .h5 model?)"),
        ("calib.npz", npz(), "a NumPy .npz archive (calibration data belongs in --calib)"),
        ("calib.onnx", npz(), "a ZIP archive"),
        ("x.npy", b"\x93NUMPY\x01\x00", "a NumPy .npy array"),
    ],
)
def test_files_that_are_not_onnx_are_named(tmp_path: Path, name: str, data: bytes, found) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    assert foreign_format(path).startswith(found)
    with pytest.raises(ModelError) as info:
        load_model(path)
    assert str(info.value).startswith(f"model file {path} is {found}")
    assert str(info.value).endswith(", not ONNX") and "\n" not in str(info.value)


def test_an_onnx_file_with_another_suffix_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "exported.pt"
    path.write_bytes(onnx_bytes())
    assert foreign_format(path) is None
    assert load_model(path).graph.node[0].op_type == "Flatten"


def test_a_checkpoint_on_the_command_line_is_one_line(run_cli, tmp_path: Path) -> None:
    path = tmp_path / "mine.pt"
    path.write_bytes(torch_zip())
    for args in (("metadata", path), ("inspect", path), ("bench", path, "--runs", "1")):
        result = run_cli(*args)
        assert result.code == 2, result
        assert result.stderr == (
            f"error: model file {path} is a PyTorch checkpoint (torch.save): {EXPORT} "
            "(README: Bring your own model), not ONNX\n"
        )
    with pytest.raises(ModelError, match="PyTorch checkpoint"):
        Classifier(path)


def test_dataset_typos_get_the_closest_names() -> None:
    known = ("GunPoint", "GunPointAgeSpan", "ArrowHead", "ItalyPowerDemand")
    assert closest_names("GunPont", known) == ("GunPoint", "GunPointAgeSpan")
    assert closest_names("arrowhed", known) == ("ArrowHead",)
    assert closest_names("Zebra", known) == ()


def test_a_misspelt_bundled_dataset_suggests_it() -> None:
    from dsp_deploy.data import load_dataset

    with pytest.raises(DatasetError) as info:
        load_dataset("GunPont", "test")
    assert "closest names: GunPoint" in str(info.value)  # aeon bundles GunPoint


def test_a_fixed_batch_says_how_to_re_export() -> None:
    from dsp_deploy.cost import input_shapes

    with pytest.raises(InputError) as info:
        input_shapes(onnx.load_from_string(onnx_bytes(batch="1")), batch=64)
    assert str(info.value) == (
        "model input 'x' has a fixed batch of 1; cannot run it at batch 64: re-export it "
        "with a dynamic batch axis, torch.onnx.export(..., dynamic_axes={'x': {0: 'batch'}})"
    )

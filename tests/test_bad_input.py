"""Every bad input to every command is refused cleanly (issue #7, items 1, 5 and 6).

The contract each case checks, end to end through the CLI (``run_cli``, in-process):
exit 2, stdout empty, exactly one stderr line ``error: ...`` that names the file or
option and the problem, no traceback, and — by hashing every file under ``tmp_path``
before and after — nothing written and every input byte-for-byte unchanged.

Inputs are copies of the shipped LITE/GunPoint model and calibration set, and tiny files
written in ``tmp_path``. Cases already covered elsewhere are not repeated here (see
``tests/test_io.py``, ``test_data.py``, ``test_eval.py``, ``test_bench.py``,
``test_train.py``, ``test_compress_cli.py``).
"""

from __future__ import annotations

import hashlib
import io as bytes_io
import os
import shutil
import socket
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from dsp_deploy import io, memory
from dsp_deploy.errors import CalibrationError, DatasetError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = ROOT / "models" / "lite_gunpoint.onnx"
SHIPPED_CALIB = ROOT / "calibration" / "lite_gunpoint.npz"
L = 150  # the shipped model's input is (N, 1, 150), two classes


# --- the contract -----------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (and every folder, as a marker)."""
    out = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        out[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A folder holding copies of the shipped model and calibration set."""
    shutil.copy(SHIPPED_MODEL, tmp_path / "m.onnx")
    shutil.copy(SHIPPED_CALIB, tmp_path / "c.npz")
    return tmp_path


@pytest.fixture
def rejects(run_cli, work: Path) -> Callable[..., None]:
    """``rejects(args, *needles)``: the command fails cleanly and touches nothing."""

    def check(args: list[object], *needles: str, code: int = 2) -> None:
        before = snapshot(work)
        result = run_cli(*args)
        assert result.code == code, (args, result)
        assert result.stdout == "", result.stdout
        assert result.stderr.startswith("error: "), result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert "Traceback" not in result.stderr
        for needle in needles:
            assert needle in result.stderr, (needle, result.stderr)
        assert snapshot(work) == before, "files were written or changed"

    return check


# --- calibration files: compress and inspect --------------------------------------------


def _good_x(n: int = 8) -> np.ndarray:
    with np.load(SHIPPED_CALIB) as npz:
        return npz["x"][:n]


def _savez(**arrays: np.ndarray) -> Callable[[Path], None]:
    return lambda path: np.savez(path, **arrays)


def _write(content: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(content)


def _zip_of(name: str, data: bytes) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(name, data)

    return build


def _npy_header_only(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    """An .npy header declaring ``shape`` with no data behind it."""
    buffer = bytes_io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = bytes_io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _truncated(path: Path) -> None:
    np.savez(path, x=_good_x())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _dtype(dtype: str) -> np.ndarray:
    return np.zeros((4, 1, L), dtype=dtype)


HUGE = (10**12, 1, L)  # 600 TB of float32: must be refused from the header alone

CALIBRATION_CASES: dict[str, tuple[Callable[[Path], None] | None, str]] = {
    "missing": (None, "does not exist"),
    "directory": (lambda p: p.mkdir(), "is not a file"),
    "text-file": (_write(b"x,y\n1,2\n"), "not a zip archive"),
    "empty-file": (_write(b""), "not a readable .npz"),
    "single-npy": (lambda p: p.write_bytes(_npy_bytes(_good_x())), "single .npy array"),
    "zip-not-npz": (_zip_of("readme.txt", b"hello"), "'readme.txt' is not an .npy array"),
    "truncated": (_truncated, "not a readable .npz"),
    "pickled-object": (_savez(x=np.array([object(), 1], dtype=object)), "object (pickled)"),
    "strings": (_savez(x=np.full((4, 1, L), "a")), "dtype <U1"),
    "bool": (_savez(x=_dtype("bool")), "dtype bool"),
    "complex": (_savez(x=_dtype("complex64")), "dtype complex64"),
    "structured": (_savez(x=np.zeros(4, dtype=[("a", "f4")])), "dtype [('a', '<f4')]"),
    "nan": (_savez(x=np.where(_good_x() > 1, np.nan, _good_x())), "NaN/inf"),
    "inf": (_savez(x=np.full((4, 1, L), -np.inf, np.float32)), "NaN/inf"),
    "float64-overflow": (_savez(x=np.full((4, 1, L), 1e300)), "beyond float32's range"),
    "int-not-exact": (_savez(x=np.full((4, 1, L), 2**30, np.int64)), "2**24"),
    "no-samples": (_savez(x=np.zeros((0, 1, L), np.float32)), "is empty"),
    "no-arrays": (_savez(), "holds arrays []"),
    "scalar": (_savez(x=np.float32(1.0)), "has shape ()"),
    "rank-2": (_savez(x=np.zeros((4, L), np.float32)), "expects (N, 1, 150)"),
    "channels": (_savez(x=np.zeros((4, 2, L), np.float32)), "has shape (4, 2, 150)"),
    "length": (_savez(x=np.zeros((4, 1, L - 1), np.float32)), "has shape (4, 1, 149)"),
    "names": (_savez(a=_good_x(), b=_good_x()), "expected one array for input 'x'"),
    "labels-length": (_savez(x=_good_x(4), y=np.array([0, 1])), "expected 4 integer labels"),
    "labels-fraction": (_savez(x=_good_x(2), y=np.array([0.5, 1.0])), "not whole numbers"),
    "labels-strings": (_savez(x=_good_x(2), y=np.array(["1", "2"])), "dtype <U1"),
    "labels-bool": (_savez(x=_good_x(2), y=np.array([True, False])), "dtype bool"),
    "labels-2d": (_savez(x=_good_x(2), y=np.zeros((2, 1), int)), "shape (2, 1)"),
    "labels-negative": (_savez(x=_good_x(2), y=np.array([0, -1])), "negative"),
    "labels-nan": (_savez(x=_good_x(2), y=np.array([0.0, np.nan])), "not whole numbers"),
    "labels-out-of-range": (_savez(x=_good_x(2), y=np.array([0, 2])), "predicts 2 classes"),
    "huge-declared-shape": (_zip_of("x.npy", _npy_header_only(HUGE)), "of memory to load"),
}
# Already run end to end through `compress` in tests/test_io.py.
_COVERED = {("compress", "missing"), ("compress", "nan")}


@pytest.mark.parametrize(
    ("command", "case"),
    [(c, k) for c in ("compress", "inspect") for k in CALIBRATION_CASES if (c, k) not in _COVERED],
)
def test_bad_calibration_file(rejects, work: Path, command: str, case: str) -> None:
    build, problem = CALIBRATION_CASES[case]
    calib = work / "bad.npz"
    if build is not None:
        build(calib)
    extra = ["-o", work / "out.onnx"] if command == "compress" else []
    rejects([command, work / "m.onnx", "--calib", calib, *extra], "bad.npz", problem)


@pytest.mark.parametrize(
    ("dtype", "scale"),
    [("float64", 1.0), ("float16", 1.0), (">f4", 1.0), ("int16", 1000.0), ("uint8", 50.0)],
)
def test_other_numeric_dtypes_are_cast_to_float32(tmp_path: Path, dtype: str, scale: float) -> None:
    values = np.round(_good_x() * scale).astype(dtype) if scale != 1.0 else _good_x()
    values = values.astype(dtype)
    path = tmp_path / "c.npz"
    np.savez(path, x=values, y=np.array([0, 1] * 4, dtype=np.float64))
    calib = io.load_calibration(path, io.load_model(SHIPPED_MODEL))
    assert calib.inputs["x"].dtype == np.float32 and calib.inputs["x"].flags.c_contiguous
    np.testing.assert_array_equal(calib.inputs["x"], values.astype(np.float32))
    assert calib.labels.dtype == np.int64


def test_class_names_beside_one_array_under_any_key(tmp_path: Path) -> None:
    # `train --calib-out` writes x, y and classes; renamed inputs must still load.
    path = tmp_path / "c.npz"
    np.savez(path, series=_good_x(), y=np.zeros(8, int), classes=np.array(["1", "2"]))
    calib = io.load_calibration(path, io.load_model(SHIPPED_MODEL))
    np.testing.assert_array_equal(calib.inputs["x"], _good_x())


def test_declared_size_is_refused_before_any_read(tmp_path: Path) -> None:
    # A genuine small array, but less memory than it needs: refused from the header.
    path = tmp_path / "c.npz"
    np.savez(path, x=_good_x())
    need = _good_x().size * (4 + 8)
    assert io.read_npz(path)["x"].shape == (8, 1, L)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(memory, "available_memory", lambda: need - 1)
        with pytest.raises(CalibrationError, match="needs about .* of memory"):
            io.read_npz(path)
        mp.setattr(memory, "available_memory", lambda: need)
        assert io.read_npz(path)["x"].shape == (8, 1, L)


def test_available_memory_is_a_plausible_byte_count() -> None:
    available = memory.available_memory()
    assert available is not None and 2**20 < available < 2**50


# --- output paths -----------------------------------------------------------------------


def _compress(work: Path, *extra: object) -> list[object]:
    return ["compress", work / "m.onnx", "--calib", work / "c.npz", *extra]


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        ("{work}", "is a directory"),
        ("{work}/nowhere/out.onnx", "does not exist"),
        ("{work}/c.npz", "is the input file"),
        ("{work}/link.onnx", "is the input file"),  # a symlink to the model
        ("{work}/hard.onnx", "is the input file"),  # a hard link to the model
        ("{work}/./m.onnx", "is the input file"),
    ],
)
def test_compress_output_path(rejects, work: Path, output: str, problem: str) -> None:
    (work / "link.onnx").symlink_to(work / "m.onnx")
    os.link(work / "m.onnx", work / "hard.onnx")
    rejects(_compress(work, "-o", output.format(work=work)), "--output", problem)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_compress_output_in_an_unwritable_folder(rejects, work: Path) -> None:
    locked = work / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        rejects(_compress(work, "-o", locked / "out.onnx"), "locked", "not writable")
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize(
    ("plot", "problem"),
    [("{work}", "is a directory"), ("{work}/m.onnx", "is the input file"),
     ("{work}/no/p.png", "does not exist")],
)  # fmt: skip
def test_bench_plot_path(rejects, work: Path, plot: str, problem: str) -> None:
    rejects(["bench", work / "m.onnx", "--plot", plot.format(work=work)], "--plot", problem)


def test_sweep_report_output_that_is_a_file(rejects, work: Path) -> None:
    rejects(["sweep-report", work, "-o", work / "m.onnx"], "m.onnx", "is not a folder")


# --- option values ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (["--holdout", "-0.1"], "--holdout -0.1"),
        (["--holdout", "1"], "--holdout 1.0: expected a fraction in [0, 1)"),
        (["--holdout", "nan"], "--holdout nan"),
        (["--batch-size", "-3"], "--batch-size -3"),
        (["--threads", "0"], "--threads 0"),
        (["--threshold", "-1"], "--threshold -1.0"),
        (["--threshold", "nan"], "--threshold nan"),
        (["--atol", "inf"], "--atol inf"),
        (["--rtol", "-1e-3"], "--rtol -0.001"),
        (["--min-agreement", "1.5"], "--min-agreement 1.5"),
        (["--max-accuracy-drop", "-0.1"], "--max-accuracy-drop -0.1"),
        (["--min-count", "-1"], "--min-count -1"),
        (["--criterion", "magic"], "--criterion 'magic': expected one of dead, dsp, auto"),
        (["--compensation", "magic"], "--compensation 'magic'"),
    ],
)
def test_compress_options(rejects, work: Path, extra: list[str], problem: str) -> None:
    rejects(_compress(work, "-o", work / "out.onnx", *extra), problem)


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["inspect", "{m}", "--batch-size", "0"], "--batch-size 0"),
        (["bench", "{m}", "--warmup", "-1"], "warmup=-1"),
        (["bench", "{m}", "--rounds", "0"], "rounds=0"),
        (["bench", "{m}", "--length", "0"], "--length 0"),
        (["bench", "{m}", "--opt-level", "fast"], "unknown optimisation level 'fast'"),
        (["eval", "{m}", "--dataset", "GunPoint", "--threads", "0"], "threads must be at least 1"),
        (["eval", "{m}", "--dataset", "GunPoint", "--batch-size", "-2"], "batch size"),
    ],
)
def test_deploy_command_options(rejects, work: Path, args: list[str], problem: str) -> None:
    rejects([a.format(m=work / "m.onnx") for a in args], problem)


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (["--epochs", "0"], "--epochs 0"),
        (["--retries", "-1"], "--retries -1"),
        (["--num-cpus", "0"], "--num-cpus 0"),
        (["--cpus-per-task", "0"], "--cpus-per-task 0"),
        (["--gpus-per-task", "2"], "--gpus-per-task must be in [0, 1], got 2.0"),
        (["--gpus-per-task", "-0.5"], "--gpus-per-task must be in [0, 1]"),
        (["--exact-sparsity", "-1"], "--exact-sparsity -1"),
        (["--archs", "resnet"], "unknown or no archs ['resnet']"),
        (["--variants", "magic"], "unknown or no variants ['magic']"),
        (["--protocol", "magic"], "unknown protocol 'magic'"),
        (["--seeds", "1,two"], "--seeds '1,two': expected integers"),
    ],
)
def test_sweep_options(rejects, work: Path, extra: list[str], problem: str) -> None:
    rejects(["sweep", "--datasets", "UnitTest", "--out", work / "sweep", *extra], problem)


# --- datasets ---------------------------------------------------------------------------


def _series(n: int, length: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, length))


def _tsv(rows: list[str]) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        for split in ("TRAIN", "TEST"):
            (folder / f"D_{split}.tsv").write_text("".join(rows))
        return folder / "D_TRAIN.tsv"

    return build


def _npz(**arrays: np.ndarray) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        np.savez(folder / "d.npz", **arrays)
        return folder / "d.npz"

    return build


def _zip_dataset(folder: Path) -> Path:
    _zip_of("X.csv", b"1,2,3")(folder / "d.npz")
    return folder / "d.npz"


def _huge_dataset(folder: Path) -> Path:
    _zip_of("X.npy", _npy_header_only((10**11, 1, 150)))(folder / "d.npz")
    return folder / "d.npz"


def _binary_tsv(folder: Path) -> Path:
    train = _tsv([])(folder)
    train.write_bytes(b"\xff\xfe\x00\x81" * 8)
    return train


def _line(label: int, values: np.ndarray) -> str:
    return "\t".join([str(label), *(f"{v:.4f}" for v in values)]) + "\n"


_TWO_CLASSES = np.array([0, 1] * 5)
# Unusable for any command (train, eval, sweep): the data cannot be read or normalised.
UNREADABLE = {
    "empty-file": (_tsv([]), "holds no series"),
    "not-utf8": (_binary_tsv, "cannot be read as UTF-8"),
    "all-nan-series": (_tsv([_line(0, _series(1)[0]), "1" + "\tNaN" * 24 + "\n"]), "all NaN"),
    "zip-not-npz": (_zip_dataset, "'X.csv' is not an .npy array"),
    "huge-declared-shape": (_huge_dataset, "of memory to load"),
    "channels-differ": (_npz(X=_series(10)[:, None], y=_TWO_CLASSES,
                             X_test=np.zeros((2, 2, 24)), y_test=np.array([0, 1])), "2 channels"),
    "labels-nan": (_npz(X=_series(10), y=np.where(_TWO_CLASSES > 0, np.nan, 0.0)),
                   "NaN/inf labels"),
}  # fmt: skip
# Readable, but nothing to learn from: refused by train and sweep before any training.
UNTRAINABLE = {
    "one-class": (_npz(X=_series(10), y=np.zeros(10, int)), "expected at least 2 classes"),
    "zero-variance": (_npz(X=np.ones((10, 24)) * np.arange(10)[:, None], y=_TWO_CLASSES),
                      "every series is constant"),
    "length-1": (_npz(X=_series(10, length=1), y=_TWO_CLASSES), "expected at least 2 time steps"),
}  # fmt: skip


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tripwire: the test fails if an optimiser step is ever taken."""
    pytest.importorskip("torch")
    from dsp_deploy.train import pipeline

    monkeypatch.setattr(pipeline, "fit", lambda *a, **k: pytest.fail("training started"))


@pytest.mark.parametrize("case", [*UNREADABLE, *UNTRAINABLE])
def test_train_refuses_bad_dataset_before_training(rejects, work, no_training, case) -> None:
    build, problem = {**UNREADABLE, **UNTRAINABLE}[case]
    data = build(work)
    args = ["train", "--arch", "lite", "--epochs", "1", "--dataset", data, "-o", work / "o.onnx"]
    rejects(args, data.name, problem)


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_eval_refuses_bad_dataset(rejects, work: Path, case: str) -> None:
    build, problem = UNREADABLE[case]
    data = build(work)
    rejects(["eval", work / "m.onnx", "--dataset", data], data.name, problem)


@pytest.mark.parametrize("case", ["one-class", "zero-variance", "huge-declared-shape"])
def test_sweep_refuses_bad_dataset_before_writing(rejects, work: Path, case: str) -> None:
    build, problem = {**UNREADABLE, **UNTRAINABLE}[case]
    data = build(work)
    sweep = ["sweep", "--datasets", data, "--out", work / "sweep", "--variants", "dense", "-q"]
    rejects(sweep, data.name, problem)
    assert not (work / "sweep").exists()


@pytest.mark.parametrize(
    ("option", "target", "problem"),
    [
        ("-o", "{work}/nowhere/o.onnx", "does not exist"),
        ("-o", "{data}", "is the input file"),
        ("--calib-out", "{data}", "is the input file"),
        ("--calib-out", "{work}/o.onnx", "is the input file"),
        ("--calib-out", "{work}", "is a directory"),
    ],
)
def test_train_output_paths(rejects, work, no_training, option, target, problem) -> None:
    data = _npz(X=_series(10), y=_TWO_CLASSES)(work)
    args = {"-o": work / "o.onnx", "--calib-out": work / "c_out.npz"}
    args[option] = target.format(work=work, data=data)
    flat = [x for pair in args.items() for x in pair]
    rejects(["train", "--arch", "lite", "--dataset", data, *flat], problem)


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (["--batch-size", "0"], "--batch-size 0"),
        (["--threads", "0"], "--threads 0"),
        (["--sparsity", "-1e-5"], "--sparsity -1e-05"),
        (["--sparsity", "nan"], "--sparsity nan"),
        (["--retrain-epochs", "0"], "retrain 0"),
    ],
)
def test_train_options(rejects, work, no_training, extra: list[str], problem: str) -> None:
    data = _npz(X=_series(10), y=_TWO_CLASSES)(work)
    rejects(["train", "--arch", "lite", "--dataset", data, "-o", work / "o.onnx", *extra], problem)


def test_text_dataset_too_big_for_memory(tmp_path: Path, monkeypatch) -> None:
    path = _tsv([_line(i % 2, row) for i, row in enumerate(_series(10))])(tmp_path)
    monkeypatch.setattr(memory, "available_memory", lambda: path.stat().st_size)
    with pytest.raises(DatasetError, match="D_TRAIN.tsv .* needs about"):
        from dsp_deploy.data import load_train_test

        load_train_test(path)


def test_constant_and_gappy_series_are_accepted_by_eval(run_cli, work: Path) -> None:
    # Documented acceptance: a constant series becomes zeros, interior NaN is interpolated.
    X = np.sin(np.linspace(0, 9, L))[None].repeat(4, axis=0)
    X[0] = 3.0
    X[1, 40:45] = np.nan
    np.savez(work / "ok.npz", X=X, y=np.array([1, 2, 1, 2]))
    result = run_cli("eval", work / "m.onnx", "--dataset", work / "ok.npz", "--json")
    assert result.code == 0, result.stderr
    assert '"n": 4' in result.stdout


# --- no network at run time -------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to reach another host in this process raises."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(AssertionError, match="network access"):
        socket.create_connection(("example.com", 80))


def test_deploy_commands_run_offline(run_cli, work: Path, offline) -> None:
    model, calib = work / "m.onnx", work / "c.npz"
    runs = [
        ("compress", model, "--calib", calib, "-o", work / "p.onnx", "--json"),
        ("inspect", model, "--calib", calib, "--json"),
        ("eval", model, "--dataset", "GunPoint", "--json"),
        ("bench", model, "--runs", "2", "--warmup", "0", "--rounds", "1", "--json"),
    ]
    for args in runs:
        result = run_cli(*args)
        assert result.code == 0, (args[0], result.stderr)


def test_train_runs_offline(run_cli, tmp_path: Path, offline) -> None:
    pytest.importorskip("torch")
    data = _npz(X=_series(10), y=_TWO_CLASSES)(tmp_path)
    out = tmp_path / "o.onnx"
    args = ("train", "--arch", "lite", "--dataset", data, "--epochs", "1", "-o", out, "-q")
    result = run_cli(*args, "--json")
    assert result.code == 0, result.stderr
    assert io.load_model(out).graph.node


def test_dataset_missing_offline_names_what_to_install(rejects, work: Path, offline) -> None:
    rejects(["eval", work / "m.onnx", "--dataset", "Yoga"], "'Yoga'", "no offline package")


def test_ucr_name_without_the_extra_names_the_extra(rejects, work, offline, monkeypatch) -> None:
    from dsp_deploy import dataset_files

    real = dataset_files._package_dir
    monkeypatch.setattr(
        dataset_files,
        "_package_dir",
        lambda name: None if name.startswith("test_datasets") else real(name),
    )
    rejects(["eval", work / "m.onnx", "--dataset", "Adiac"], "'Adiac'", "dsp-deploy[ucr]")

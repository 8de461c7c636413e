"""runtime.Classifier: input forms, normalisation, metadata, bad input, bad models.

Most tests use a model that returns its input flattened, ``y = Flatten(x)``: what comes
out of ``predict_proba`` is exactly what the runtime fed the model, so the preparation
(normalisation, shapes, dtypes) is checked value by value against an independent oracle,
``dsp_deploy.data.znormalise``, which prepared the training data.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dsp_deploy import data, metadata
from dsp_deploy.errors import InputError, ModelError
from dsp_deploy.runtime import Classifier, SeriesError, SeriesTypeError, znormalise

L = 150
OURS = {
    metadata.CLASSES: json.dumps([f"c{i}" for i in range(L)]),
    metadata.INPUT_LENGTH: str(L),
    metadata.INPUT_CHANNELS: "1",
    metadata.NORMALISATION: metadata.ZNORM,
    metadata.OUTPUT: "probabilities",
}


def flatten_model(
    path: Path,
    dims: tuple[str | int, str | int, str | int] = ("N", 1, L),
    meta: Mapping[str, str] | None = None,
    *,
    input_type: str = "float",
) -> Path:
    """``y = Flatten(x)``: the output is the input the runtime prepared, one row a case."""
    n, c, length = dims
    width = c * length if isinstance(c, int) and isinstance(length, int) else "K"
    model = onnx.parser.parse_model(
        f"""
        <ir_version: 8, opset_import: ["" : 17]>
        net ({input_type}[{n}, {c}, {length}] x) => ({input_type}[{n}, {width}] y)
        {{
            y = Flatten <axis = 1> (x)
        }}
        """
    )
    metadata.write_metadata(model, dict(meta or {}))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    return Classifier(flatten_model(tmp_path_factory.mktemp("rt") / "ours.onnx", meta=OURS))


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    """A model without our metadata, dynamic channels and length."""
    path = tmp_path_factory.mktemp("rt") / "plain.onnx"
    return Classifier(flatten_model(path, ("N", "C", "T")), threads=1)


def raw_series(n: int, length: int = L, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(5.0, 3.0, (n, 1, length)) * rng.uniform(0.1, 10, (n, 1, 1))).astype(
        np.float32
    )


def bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32).view(np.int32)


# --- normalisation ---------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=40),
        elements=st.floats(allow_nan=False, allow_infinity=False, width=32)
        | st.sampled_from([0.0, 1.0, -2.5, 1e-30, 3e38]),
    )
)
def test_znormalise_is_bit_for_bit_the_training_data_normalisation(x: np.ndarray) -> None:
    assert np.array_equal(bits(znormalise(x)), bits(data.znormalise(x)))


@pytest.mark.parametrize("value", [0.0, 1.0, -3.3, 1e-7, 12345.678])
@pytest.mark.parametrize("n", [1, 3])
def test_constant_series_become_zeros_never_nan(value: float, n: int) -> None:
    x = np.full((n, 1, 24), value, dtype=np.float32)
    assert np.array_equal(znormalise(x), np.zeros_like(x))


def test_predict_proba_feeds_the_model_the_training_normalisation(ours: Classifier) -> None:
    x = raw_series(7)
    x[3] = 2.5  # a constant series among others
    fed = ours.predict_proba(x)
    assert fed.dtype == np.float32 and fed.shape == (7, L)
    assert np.array_equal(bits(fed), bits(data.znormalise(x).reshape(7, L)))


def test_one_series_uses_the_same_normalisation_as_a_batch(ours: Classifier) -> None:
    x = raw_series(5, seed=3)
    alone = np.concatenate([ours.predict_proba(s[0]) for s in x])
    assert np.array_equal(bits(alone), bits(ours.predict_proba(x)))


# --- input forms -----------------------------------------------------------------------


class ArrayLike:
    """Anything with ``__array__`` (a pandas Series, a torch tensor, ...)."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self.values if dtype is None else self.values.astype(dtype)


@pytest.mark.parametrize(
    "form",
    [
        pytest.param(lambda x: x, id="3d-float32"),
        pytest.param(lambda x: x[:, 0, :], id="2d-batch"),
        pytest.param(lambda x: x.astype(np.float64), id="float64"),
        pytest.param(lambda x: x[:, 0, :].tolist(), id="nested-list"),
        pytest.param(lambda x: tuple(tuple(r) for r in x[:, 0, :].tolist()), id="tuples"),
        pytest.param(lambda x: np.asfortranarray(x[:, 0, :]), id="fortran-order"),
        pytest.param(lambda x: np.repeat(x, 2, axis=2)[:, :, ::2], id="strided-view"),
        pytest.param(lambda x: ArrayLike(x), id="array-like"),
    ],
)
def test_batches_in_every_form_give_the_same_result(ours: Classifier, form) -> None:
    x = raw_series(4, seed=1)
    assert np.array_equal(ours.predict_proba(form(x)), ours.predict_proba(x))


def test_one_series_as_list_or_1d_array(ours: Classifier) -> None:
    x = raw_series(1, seed=2)
    expected = ours.predict_proba(x)
    for one in (x[0, 0], x[0, 0].tolist(), x[0]):
        assert np.array_equal(ours.predict_proba(one), expected)


def test_integer_series_are_accepted(ours: Classifier) -> None:
    x = np.arange(2 * L).reshape(2, L) % 17
    assert np.array_equal(ours.predict_proba(x), ours.predict_proba(x.astype(np.float32)))


def test_input_is_not_modified(ours: Classifier) -> None:
    x = raw_series(2).astype(np.float64)
    before = x.copy()
    ours.predict(x)
    assert np.array_equal(x, before)


# --- metadata --------------------------------------------------------------------------


def test_predict_returns_class_names_from_metadata(ours: Classifier) -> None:
    x = np.zeros((3, L), dtype=np.float32)
    for row, peak in enumerate((5, 0, 149)):
        x[row, peak] = 1.0
    assert ours.classes == tuple(f"c{i}" for i in range(L))
    assert ours.predict(x).tolist() == ["c5", "c0", "c149"]
    assert (ours.input_length, ours.input_channels) == (L, 1)


def test_logits_output_gets_a_softmax(tmp_path: Path) -> None:
    meta = {**OURS, metadata.CLASSES: '["a", "b", "c"]', metadata.INPUT_LENGTH: "3"}
    meta[metadata.OUTPUT] = "logits"
    clf = Classifier(flatten_model(tmp_path / "m.onnx", ("N", 1, 3), meta))
    x = np.array([[0.0, 1.0, 5.0], [9.0, 1.0, 2.0]])
    z = data.znormalise(x).astype(np.float64)
    expected = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    proba = clf.predict_proba(x)
    assert proba.dtype == np.float32
    np.testing.assert_allclose(proba, expected, rtol=1e-6)
    assert clf.predict(x).tolist() == ["c", "a"]


def test_model_without_metadata_gets_raw_float32_and_returns_indices(plain: Classifier) -> None:
    # No dsp.* keys and no final Softmax: raw input, the output read as logits (one softmax).
    x = raw_series(3, length=33)
    assert plain.classes is None and plain.input_length is None
    assert (plain.signature.normalisation, plain.signature.output_kind) == ("none", "logits")
    raw = x.reshape(3, 33).astype(np.float64)
    expected = np.exp(raw - raw.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(plain.predict_proba(x), expected, rtol=1e-5, atol=1e-30)
    best = plain.predict(x)
    assert best.dtype == np.int64 and best.tolist() == x[:, 0].argmax(axis=1).tolist()
    assert plain.predict_proba(np.arange(3)).argmax() == 2


def test_fixed_batch_dim_runs_in_chunks(tmp_path: Path) -> None:
    clf = Classifier(flatten_model(tmp_path / "b2.onnx", (2, 1, L), OURS))
    x = raw_series(5)
    assert clf.signature.batch == 2
    assert np.array_equal(clf.predict_proba(x), data.znormalise(x).reshape(5, L))


def test_multichannel_model_reads_2d_input_as_one_series(tmp_path: Path) -> None:
    meta = {**OURS, metadata.INPUT_CHANNELS: "2", metadata.INPUT_LENGTH: "10"}
    meta.pop(metadata.CLASSES)
    clf = Classifier(flatten_model(tmp_path / "c2.onnx", ("N", 2, 10), meta))
    x = np.random.default_rng(0).normal(size=(2, 10))
    assert np.array_equal(clf.predict_proba(x), data.znormalise(x).reshape(1, 20))
    with pytest.raises(SeriesError, match=r"\(2, L\) or \(n, 2, L\); got shape \(10,\)"):
        clf.predict(x[0])


# --- bad input -------------------------------------------------------------------------


def with_nan(n: int, row: int) -> np.ndarray:
    x = raw_series(n)
    x[row, 0, 17] = np.nan
    return x


@pytest.mark.parametrize(
    ("series", "error", "message"),
    [
        (np.zeros(L - 1), SeriesError, r"length 149; the model expects 150"),
        (np.zeros((2, 1, L + 1)), SeriesError, r"length 151; the model expects 150"),
        (np.zeros((2, 3, L)), SeriesError, r"3 channels; the model expects 1"),
        (with_nan(4, 2), SeriesError, r"series 2 holds NaN or infinite values \(1 of 4"),
        (with_nan(1, 0)[0, 0], SeriesError, r"series 0 holds NaN or infinite"),
        (np.r_[np.zeros(L - 1), np.inf], SeriesError, r"NaN or infinite"),
        (np.r_[np.ones(L - 2), np.inf, -np.inf].astype(np.float32), SeriesError, r"infinite"),
        (np.r_[np.ones(L - 1), 1e200], SeriesError, r"series 0 holds values beyond ±1e\+150"),
        ([], SeriesError, r"expected at least one series with values; got shape \(1, 1, 0\)"),
        (np.empty((0, L)), SeriesError, r"at least one series"),
        ([[1.0] * L, [2.0] * (L - 1)], SeriesError, r"ragged"),
        (np.zeros((1, 1, 1, L)), SeriesError, r"got shape \(1, 1, 1, 150\)"),
        (np.float32(1.0), SeriesError, r"got shape \(\)"),
        ("1,2,3", SeriesTypeError, r"got str"),
        (b"\x00\x01", SeriesTypeError, r"got bytes"),
        ({"x": [1.0] * L}, SeriesTypeError, r"got dict"),
        (None, SeriesTypeError, r"got NoneType"),
        (3.5, SeriesTypeError, r"got float"),
        (["1.0"] * L, SeriesTypeError, r"found text"),
        ([None] * L, SeriesTypeError, r"found objects"),
        (np.zeros(L, dtype=bool), SeriesTypeError, r"found booleans"),
        (np.zeros(L, dtype=complex), SeriesTypeError, r"found complex numbers"),
    ],
    ids=lambda v: None if isinstance(v, np.ndarray | list) else str(v)[:20],
)
def test_bad_input_raises_a_clear_value_error(ours: Classifier, series, error, message) -> None:
    with pytest.raises(error, match=message) as caught:
        ours.predict(series)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, InputError)
    if error is SeriesTypeError:
        assert isinstance(caught.value, TypeError)


def test_nan_and_overflow_are_caught_without_normalisation_too(plain: Classifier) -> None:
    with pytest.raises(SeriesError, match="series 1 holds NaN"):
        plain.predict(with_nan(3, 1))
    with pytest.raises(SeriesError, match="series 0 holds values beyond"):
        plain.predict([1e39, 0.0])  # inf in float32


# --- bad models ------------------------------------------------------------------------


def test_missing_folder_and_garbage_files_are_model_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"nope\.onnx: expected an ONNX file, found nothing"):
        Classifier(tmp_path / "nope.onnx")
    with pytest.raises(ModelError, match="found a folder"):
        Classifier(tmp_path)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelError, match=r"junk\.onnx is not a readable ONNX model"):
        Classifier(junk)


@pytest.mark.parametrize(
    ("dims", "meta", "input_type", "message"),
    [
        (("N", 1, L), {**OURS, metadata.INPUT_LENGTH: "140"}, "float", "says 140; .* dim is 150"),
        (("N", 1, L), {**OURS, metadata.INPUT_LENGTH: "long"}, "float", "found 'long'"),
        (("N", 1, L), {**OURS, metadata.CLASSES: "[1,"}, "float", "JSON list"),
        (("N", 1, L), {**OURS, metadata.CLASSES: '["a"]'}, "float", "1 classes; .* 150 col"),
        (("N", 1, L), {**OURS, metadata.NORMALISATION: "minmax"}, "float", "'minmax'"),
        (("N", 1, L), {**OURS, metadata.OUTPUT: "labels"}, "float", "'labels'"),
        (("N", 1, L), {}, "double", r"one float input \(N, C, L\); found x: tensor\(double\)"),
    ],
)
def test_unsupported_models_are_model_errors(
    tmp_path: Path, dims, meta, input_type: str, message: str
) -> None:
    path = flatten_model(tmp_path / "m.onnx", dims, meta, input_type=input_type)
    with pytest.raises(ModelError, match=message):
        Classifier(path)


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_threads_must_be_a_positive_int(tmp_path: Path, threads) -> None:
    with pytest.raises(InputError, match="threads must be a whole number"):
        Classifier(flatten_model(tmp_path / "m.onnx"), threads=threads)


def test_runtime_imports_neither_onnx_nor_training_packages() -> None:
    code = (
        "import sys, dsp_deploy.runtime; "
        "print(sorted({'onnx', 'torch', 'aeon', 'ray', 'typer', 'rich'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

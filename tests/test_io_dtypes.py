"""Input dtypes: calibration cast per model input, random inputs drawn per dtype, and
float16's default tolerance — on float16, float64, int64-lengths, bool-mask and string
side-input models, through the library and the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import MappingProxyType

import numpy as np
import onnx
import onnx.reference
import pytest
from onnx import numpy_helper

from dsp_deploy import io
from dsp_deploy.compress.calibrate import Probe
from dsp_deploy.compress.groups import find_groups
from dsp_deploy.compress.pipeline import compress, probe_tensors
from dsp_deploy.compress.tolerance import (
    FLOAT16_TOLERANCE,
    FLOAT32_TOLERANCE,
    default_tolerance,
    resolve_tolerance,
)
from dsp_deploy.compress.verify import compare
from dsp_deploy.dtypes import random_feeds
from dsp_deploy.errors import CalibrationError
from dsp_deploy.inference import run_model

sys.path.insert(0, str(Path(__file__).parent))
import onnx_graphs as G  # noqa: E402
from onnx_graphs import as_float  # noqa: E402

# --- models -----------------------------------------------------------------------------


def identity(elem: str) -> onnx.ModelProto:
    """``y = Identity(x)`` with x, y of ONNX type ``elem`` and shape (N, 3)."""
    return onnx.parser.parse_model(
        f"""<ir_version: 8, opset_import: ["" : 17]>
        net ({elem}[N, 3] x) => ({elem}[N, 3] y) {{ y = Identity (x) }}"""
    )


def side_input(signature: str, prologue: str, *, opset: int = 17, **extra) -> onnx.ModelProto:
    """``G.chain``'s convs (c1 channel 1 and c2 channel 2 dead) after a ``prologue`` that
    turns x and the side input(s) into ``xm``."""
    w = G.Weights(0)
    w.conv("c1", 4, 1, 3, (1,))
    w.conv("c2", 3, 4, 3, (2,))
    w.dense("fc", 3, 2)
    text = f"""<ir_version: 9, opset_import: ["" : {opset}]>
    net (float[N, 1, {G.L}] x, {signature}) => (float[N, 2] probabilities) {{
    {prologue}
    a = Conv <pads = [1, 1]> (xm, c1_w, c1_b)
    r = Relu (a)
    b = Conv <pads = [1, 1]> (r, c2_w, c2_b)
    h = Relu (b)
    {G.HEAD}
    }}"""
    model = onnx.parser.parse_model(text)
    tensors = {**w.values, **extra}
    model.graph.initializer.extend(
        numpy_helper.from_array(_tensor(v), k) for k, v in tensors.items()
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def _tensor(value: np.ndarray) -> np.ndarray:
    value = np.asarray(value)
    return value.astype(object) if value.dtype.kind == "U" else value.astype(G._dtype(value))


def lengths_model() -> onnx.ModelProto:
    """x masked to its first ``lengths[i]`` steps (int64 (N,)), then the chain."""
    return side_input(
        "int64[N] lengths",
        """n = Unsqueeze (lengths, axes)
        m = Less (positions, n)
        mf = Cast <to = 1> (m)
        xm = Mul (x, mf)""",
        positions=np.arange(G.L),
        axes=np.array([1, 2]),
    )


def mask_model() -> onnx.ModelProto:
    """x where a bool mask (N, 1, L) holds, else 0, then the chain."""
    return side_input("bool[N, 1, 32] mask", "xm = Where (mask, x, zero)", zero=np.float32(0))


def tag_model() -> onnx.ModelProto:
    """x + 1 on samples tagged "up" (a string input; Equal takes strings from opset 19)."""
    return side_input(
        "string[N] tag",
        """e = Equal (tag, up)
        ef = Cast <to = 1> (e)
        u = Unsqueeze (ef, axes)
        xm = Add (x, u)""",
        opset=19,
        up=np.array(["up"]),
        axes=np.array([1, 2]),
    )


def float64_io_model() -> onnx.ModelProto:
    """The chain in float32 between Casts from and to float64 (onnxruntime has no float64
    Conv kernel): a float64 model at its interface."""
    model = G.chain()
    graph = model.graph
    graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    for node in graph.node:
        node.input[:] = ["x32" if i == "x" else i for i in node.input]
        node.output[:] = ["p32" if o == "probabilities" else o for o in node.output]
    graph.node.insert(0, onnx.helper.make_node("Cast", ["x"], ["x32"], to=onnx.TensorProto.FLOAT))
    graph.node.append(onnx.helper.make_node("Cast", ["p32"], ["probabilities"], to=11))
    onnx.checker.check_model(model, full_check=True)
    return model


def _reference(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    return onnx.reference.ReferenceEvaluator(model).run(None, feeds)[0]


# --- loading ----------------------------------------------------------------------------

RNG = np.random.default_rng(0)
NORMAL = RNG.standard_normal((6, 3))


@pytest.mark.parametrize(
    ("elem", "array", "dtype"),
    [
        ("float16", NORMAL.astype(np.float32), np.float16),
        ("float16", np.array([[2048, -2048, 7]] * 2, np.int16), np.float16),
        ("float", np.array([[2**24, -(2**24), 1]] * 2, np.int64), np.float32),
        ("double", NORMAL.astype(np.float32), np.float64),
        ("double", np.array([[2**53, 1, 0]] * 2, np.int64), np.float64),
        ("int64", np.array([[3.0, -7.0, 2.0**40]] * 2), np.int64),
        ("int32", np.array([[2**31 - 1, -(2**31), 0]] * 2, np.int64), np.int32),
        ("int8", np.array([[-128.0, 127.0, 0.0]] * 2, np.float32), np.int8),
        ("uint8", np.array([[0, 255, 9]] * 2, np.int64), np.uint8),
        ("bool", np.array([[True, False, True]] * 2), np.bool_),
        ("bool", np.array([[1, 0, 1]] * 2, np.int64), np.bool_),
        ("string", np.array([["a", "bc", ""]] * 2), np.dtype("<U2")),
    ],
)
def test_calibration_is_cast_to_the_input_dtype(tmp_path: Path, elem, array, dtype) -> None:
    np.savez(tmp_path / "c.npz", x=array)
    got = io.load_calibration(tmp_path / "c.npz", identity(elem)).inputs["x"]
    assert got.dtype == dtype and got.flags.c_contiguous
    np.testing.assert_array_equal(got, array.astype(dtype))
    if array.dtype.kind in "iub" and elem != "string":  # integers and 0/1: exact both ways
        np.testing.assert_array_equal(got.astype(array.dtype), array)
    (y,) = run_model(identity(elem), {"x": got})  # onnxruntime takes it as it is
    np.testing.assert_array_equal(y, got)


@pytest.mark.parametrize(
    ("elem", "array", "problem"),
    [
        ("float16", [1e6, 0, 0], r"holds 1000000, beyond float16's range \(\|v\| <= 65504\)"),
        ("float16", np.array([3000, 0, 0]), r"integer 3000, which float16 .* \(limit 2\*\*11\)"),
        ("float", np.array([2**24 + 1, 0, 0]), r"integer 16777217, .* \(limit 2\*\*24\)"),
        ("float16", [np.nan, 0, 0], r"2 NaN/inf values \(first nan\)"),
        ("double", [0, -np.inf, 0], r"2 NaN/inf values \(first -inf\)"),
        ("uint8", np.array([-1, 0, 0]), r"holds -1, outside uint8's range 0\.\.255"),
        ("int8", [200.0, 0, 0], r"holds 200, outside int8's range -128\.\.127"),
        ("int64", [0.5, 0, 0], r"holds 0\.5, not a whole number"),
        ("int64", [np.nan, 0, 0], r"holds nan, not a whole number"),
        ("int64", [2.0**63, 0, 0], r"holds 9223372036854775808, outside int64's range"),
        ("bool", np.array([0, 2, 1]), r"holds 2, outside bool's range 0\.\.1"),
        ("float", np.array([True, False, True]), r"has dtype bool; .* takes real numbers"),
        ("int64", np.array(["1", "2", "3"]), r"has dtype <U1; model input 'x' is int64"),
        ("string", [1.0, 2.0, 3.0], r"has dtype float64; model input 'x' is string"),
        ("bfloat16", [1.0, 2.0, 3.0], r"model input 'x' is bfloat16; calibration can feed"),
    ],
)
def test_calibration_refuses_values_the_input_cannot_hold(
    tmp_path: Path, elem: str, array, problem: str
) -> None:
    np.savez(tmp_path / "c.npz", x=np.array([array, array]))
    with pytest.raises(CalibrationError, match=problem) as e:
        io.load_calibration(tmp_path / "c.npz", identity(elem))
    message = str(e.value)
    assert "\n" not in message and "calibration array 'x' in " in message
    elem_name = {"float": "float32", "double": "float64"}.get(elem, elem)
    assert f"model input 'x' is {elem_name}" in message


@pytest.mark.parametrize("command", ["compress", "inspect"])
def test_cli_refuses_out_of_range_calibration_with_exit_2(tmp_path: Path, run_cli, command) -> None:
    model, calib = tmp_path / "m.onnx", tmp_path / "c.npz"
    onnx.save(as_float(G.chain(), np.float16), model)
    x = G.inputs(8)
    x[3, 0, 5] = 1e6  # float16 overflows to inf past 65504
    np.savez(calib, x=x)
    out = tmp_path / "out.onnx"
    extra = ["-o", out] if command == "compress" else []
    result = run_cli(command, model, "--calib", calib, *extra)
    assert result.code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "holds 1000000, beyond float16's range" in result.stderr
    assert "'x'" in result.stderr and "c.npz" in result.stderr and not out.exists()


# --- random inputs ----------------------------------------------------------------------


def _calibration(**inputs: np.ndarray) -> io.Calibration:
    return io.Calibration(MappingProxyType(inputs), None)


def test_random_feeds_draw_each_dtype_from_its_calibration() -> None:
    n = 40
    calibration = _calibration(
        x=np.zeros((n, 1, 8), np.float32),
        h=np.zeros((n, 2, 8), np.float16),
        d=np.zeros((n, 3), np.float64),
        lengths=np.arange(n, dtype=np.int64) % 5 + 5,  # 5..9
        code=np.full((n, 50), 3, np.uint8),
        mask=np.zeros((n, 50), bool),
        tag=np.array(["up", "down"] * (n // 2)),
    )
    drawn = random_feeds(calibration, 16, np.random.default_rng(1))
    feeds = drawn.feeds
    assert list(feeds) == list(calibration.inputs)
    for name, array in calibration.inputs.items():
        assert feeds[name].dtype == array.dtype and feeds[name].shape == (16, *array.shape[1:])
    # float32 draws are the ones the report always made: same seed, same first input
    want = np.random.default_rng(1).standard_normal((16, 1, 8)).astype(np.float32)
    np.testing.assert_array_equal(feeds["x"], want)
    assert feeds["h"].std() > 0.5 and feeds["d"].std() > 0.5
    assert set(np.unique(feeds["lengths"])) == {5, 6, 7, 8, 9}  # min..max, both ends
    assert set(np.unique(feeds["code"])) == {3}
    assert set(np.unique(feeds["mask"])) == {False, True}
    np.testing.assert_array_equal(feeds["tag"], calibration.inputs["tag"][:16])
    assert drawn.skipped == ("input 'tag' (<U4) not drawn: calibration samples fed",)


def test_random_feeds_take_fewer_samples_than_the_calibration() -> None:
    drawn = random_feeds(_calibration(x=np.ones((3, 2), np.int32)), 16, np.random.default_rng(0))
    assert drawn.feeds["x"].shape == (3, 2) and (drawn.feeds["x"] == 1).all()
    assert drawn.skipped == ()


# --- default tolerance ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "tolerance"),
    [
        (G.chain(), (1e-5, 1e-4)),
        (as_float(G.chain(), np.float64), (1e-5, 1e-4)),
        (as_float(G.chain(), np.float16), (1e-3, 1e-2)),
        (identity("int64"), (1e-5, 1e-4)),
    ],
)
def test_default_tolerance_follows_the_output_dtype(model, tolerance) -> None:
    assert default_tolerance(model) == tolerance
    atol, rtol = tolerance
    assert resolve_tolerance(model, None, None) == (atol, rtol)
    assert resolve_tolerance(model, 0.5, None) == (0.5, rtol)
    assert resolve_tolerance(model, None, 0.0) == (atol, 0.0)


def test_float16_tolerance_passes_rounding_and_refuses_a_removed_live_channel() -> None:
    # Rounding: one float16 model run by a plain session and by one with probe outputs
    # (onnxruntime rounds its intermediates to float16 at other places).
    x = G.inputs(200).astype(np.float16)
    for build in (lambda: G.chain((), ()), lambda: G.inception_like((), ())):
        model = as_float(build(), np.float16)
        plain = run_model(model, {"x": x})[0]
        probed = Probe(model, probe_tensors(find_groups(model))).run({"x": x})[0]
        atol, rtol = default_tolerance(model)
        bound = atol + rtol * np.abs(plain.astype(np.float64))
        worst = float(np.max(np.abs(plain.astype(np.float64) - probed) / bound))
        assert worst <= 0.1, worst  # measured 0.07 and 0.05: ten times the room
        # A float32 tolerance on the same outputs: refused on rounding alone.
        assert not compare((plain,), (probed,), atol=1e-5, rtol=1e-4).within_tolerance
    # A live channel removed (weights and bias of c1's channel 1 zeroed): refused.
    model = as_float(G.chain((), ()), np.float16)
    live = onnx.ModelProto()
    live.CopyFrom(model)
    for tensor in live.graph.initializer:
        if tensor.name in ("c1_w", "c1_b"):
            array = numpy_helper.to_array(tensor).copy()
            array[1] = 0
            tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    report = compare(
        (run_model(model, {"x": x})[0],),
        (run_model(live, {"x": x})[0],),
        atol=FLOAT16_TOLERANCE[0],
        rtol=FLOAT16_TOLERANCE[1],
    )
    assert not report.within_tolerance and report.max_abs_diff > 0.02  # measured 0.040


# --- models compressing -----------------------------------------------------------------


def _compress_cli(run_cli, tmp_path: Path, model: onnx.ModelProto, **arrays) -> dict:
    path, calib, out = tmp_path / "m.onnx", tmp_path / "c.npz", tmp_path / "out.onnx"
    onnx.save(model, path)
    np.savez(calib, **arrays)
    result = run_cli("compress", path, "--calib", calib, "-o", out, "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verified"] and report["output"] == str(out)
    return report


def _assert_chain_pruned(report: dict) -> None:
    assert [layer["channels"] for layer in report["layers"]] == [[4, 3], [3, 2]]
    assert report["random_inputs"]["samples"] == 16


@pytest.mark.parametrize("stored", [np.float16, np.float32])
def test_float16_model_with_dead_channels_compresses(tmp_path: Path, run_cli, stored) -> None:
    model = as_float(G.chain(), np.float16)
    report = _compress_cli(run_cli, tmp_path, model, x=G.inputs(40).astype(stored))
    _assert_chain_pruned(report)
    pruned = io.load_model(tmp_path / "out.onnx")
    assert pruned.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert {t.data_type for t in pruned.graph.initializer} == {onnx.TensorProto.FLOAT16}
    fresh = {"x": G.inputs(64, seed=7).astype(np.float16)}
    want, got = run_model(model, fresh)[0], run_model(pruned, fresh)[0]
    assert got.dtype == np.float16
    assert compare((want,), (got,), atol=1e-3, rtol=1e-2).within_tolerance
    np.testing.assert_allclose(
        _reference(pruned, fresh), _reference(model, fresh), atol=1e-3, rtol=1e-2
    )


def test_float16_model_with_nothing_dead_is_written_unchanged(tmp_path: Path, run_cli) -> None:
    model = as_float(G.chain((), ()), np.float16)
    report = _compress_cli(run_cli, tmp_path, model, x=G.inputs(40).astype(np.float16))
    assert report["changed"] is False and report["failures"] == []


def test_int64_lengths_input_compresses_with_random_lengths(tmp_path: Path, run_cli) -> None:
    model = lengths_model()
    lengths = np.random.default_rng(2).integers(8, G.L + 1, 40)
    x = G.inputs(40)
    calibration = _calibration(x=x, lengths=lengths)
    result = compress(model, calibration)
    assert result.verified and len(result.plan.remove) == 2
    assert result.random is not None and result.random.samples == 16
    assert result.random.skipped == ()
    drawn = random_feeds(calibration, 16, np.random.default_rng(1)).feeds["lengths"]
    assert drawn.dtype == np.int64 and drawn.min() >= lengths.min()
    assert drawn.max() <= lengths.max() and len(set(drawn.tolist())) > 4
    fresh = {"x": G.inputs(32, seed=5), "lengths": np.arange(32, dtype=np.int64) + 1}
    np.testing.assert_allclose(
        run_model(result.model, fresh)[0], run_model(model, fresh)[0], atol=1e-6
    )
    np.testing.assert_allclose(_reference(result.model, fresh), _reference(model, fresh), atol=1e-6)
    report = _compress_cli(run_cli, tmp_path, model, x=x, lengths=lengths)
    _assert_chain_pruned(report)
    assert report["random_inputs"]["skipped"] == []


def test_bool_mask_input_compresses_from_0_1_integers(tmp_path: Path, run_cli) -> None:
    mask = np.random.default_rng(3).integers(0, 2, (40, 1, G.L))
    report = _compress_cli(run_cli, tmp_path, mask_model(), x=G.inputs(40), mask=mask)
    _assert_chain_pruned(report)
    fresh = {"x": G.inputs(8, seed=4), "mask": mask[:8].astype(bool)}
    pruned = io.load_model(tmp_path / "out.onnx")
    np.testing.assert_allclose(
        run_model(pruned, fresh)[0], run_model(mask_model(), fresh)[0], atol=1e-6
    )


def test_string_input_is_fed_its_calibration_samples_and_said_so(tmp_path: Path, run_cli) -> None:
    tags = np.array(["up", "down"] * 20)
    report = _compress_cli(run_cli, tmp_path, tag_model(), x=G.inputs(40), tag=tags)
    _assert_chain_pruned(report)
    note = "input 'tag' (<U4) not drawn: calibration samples fed"
    assert report["random_inputs"]["skipped"] == [note]
    path, calib = tmp_path / "m.onnx", tmp_path / "c.npz"
    text = run_cli("compress", path, "--calib", calib, "-o", tmp_path / "o2.onnx")
    assert text.code == 0 and note in text.stdout


def test_float64_model_compresses(tmp_path: Path, run_cli) -> None:
    model = float64_io_model()
    assert default_tolerance(model) == FLOAT32_TOLERANCE
    report = _compress_cli(run_cli, tmp_path, model, x=G.inputs(40).astype(np.float64))
    _assert_chain_pruned(report)
    fresh = {"x": G.inputs(16, seed=6).astype(np.float64)}
    pruned = io.load_model(tmp_path / "out.onnx")
    got = run_model(pruned, fresh)[0]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, run_model(model, fresh)[0], atol=1e-6)


def test_float64_conv_is_refused_in_one_line(tmp_path: Path, run_cli) -> None:
    # onnxruntime's CPU provider has no float64 Conv: a one-line refusal, not a traceback.
    path, calib = tmp_path / "m.onnx", tmp_path / "c.npz"
    onnx.save(as_float(G.chain(), np.float64), path)
    np.savez(calib, x=G.inputs(8).astype(np.float64))
    for command in ("compress", "inspect"):
        result = run_cli(command, path, "--calib", calib)
        assert result.code == 2 and result.stderr.strip().count("\n") == 0
        assert "cannot load the model" in result.stderr and "Conv" in result.stderr


@pytest.mark.parametrize("build", [lengths_model, mask_model, tag_model])
def test_inspect_with_side_inputs_finds_the_dead_channels(tmp_path, run_cli, build) -> None:
    model = build()
    side = model.graph.input[1].name
    values = {
        "lengths": np.arange(40) % G.L + 1,
        "mask": np.ones((40, 1, G.L), bool),
        "tag": np.array(["up", "down"] * 20),
    }
    path, calib = tmp_path / "m.onnx", tmp_path / "c.npz"
    onnx.save(model, path)
    np.savez(calib, x=G.inputs(40), **{side: values[side]})
    result = run_cli("inspect", path, "--calib", calib, "--json")
    assert result.code == 0, result.stderr
    assert [g["dead"] for g in json.loads(result.stdout)["groups"]] == [1, 1]

"""quantize: equalisation keeps the float function, the fallback stops at the first
passing configuration, bad input is refused, and every command takes the INT8 result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_graphs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsp_deploy import io
from dsp_deploy.errors import ModelError, OptionError
from dsp_deploy.inference import run_model
from dsp_deploy.quantize import QuantizeOptions, quantize
from dsp_deploy.quantize.equalise import equalise, pair_scales
from dsp_deploy.quantize.fallback import first_passing, harm_order

FAST = QuantizeOptions(speed_check=False, min_agreement=0.0, max_accuracy_drop=1.0)

DEPTHWISE_POINTWISE = """
    a = Conv <pads = [1, 1], group = 4> (x4, dw_w)
    b = Conv (a, pw_w, pw_b)
    h = Relu (b)
"""


def _outputs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return run_model(model, {"x": x})[0]


def test_equalised_conv_relu_conv_computes_the_same_function() -> None:
    model = onnx_graphs.chain(dead1=(), dead2=())
    x = onnx_graphs.inputs(16)
    ranges = {"r": np.array([10.0, 0.01, 3.0, 1e-3])}  # a skewed activation
    eq = equalise(model, ranges)
    assert eq.modified and len(eq.report.pairs) == 1
    np.testing.assert_allclose(_outputs(eq.model, x), _outputs(model, x), rtol=1e-5, atol=1e-6)
    w1 = {t.name: onnx.numpy_helper.to_array(t) for t in eq.model.graph.initializer}
    before = onnx.numpy_helper.to_array(model.graph.initializer[0])
    assert not np.allclose(next(v for k, v in w1.items() if k.startswith("c1_w")), before)


def test_depthwise_pointwise_pair_is_equalised_and_exact() -> None:
    w = onnx_graphs.Weights(3)
    w.conv("dw", 4, 1, 3, bias=False)
    w.values["dw_w"] *= np.array([20.0, 0.05, 1.0, 3.0])[:, None, None]
    w.conv("pw", 3, 4, 1)
    w.dense("fc", 3, 2)
    w.tensor("rep", np.array([1, 4, 1], dtype=np.int64))
    body = "x4 = Tile (x, rep)\n" + DEPTHWISE_POINTWISE + onnx_graphs.HEAD
    model = onnx_graphs.build(body, w.values)
    eq = equalise(model)
    assert [p[1] for p in eq.report.pairs] == [
        n.name for n in model.graph.node if n.output[0] == "b"
    ]
    x = onnx_graphs.inputs(8)
    np.testing.assert_allclose(_outputs(eq.model, x), _outputs(model, x), rtol=1e-5, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0, 1e3), min_size=1, max_size=8), st.floats(1e-3, 10))
def test_pair_scales_balance_the_two_ranges(r1: list[float], r2: float) -> None:
    s = pair_scales(np.array(r1), np.full(len(r1), r2))
    assert np.all(s > 0)
    ok = (np.array(r1) > 0) & (np.abs(np.log(s)) < np.log(1e4) - 1e-9)
    np.testing.assert_allclose((np.array(r1) / s)[ok], (r2 * s)[ok], rtol=1e-9)


def test_fallback_stops_at_the_first_passing_configuration() -> None:
    tried: list[tuple[str, ...]] = []

    def trial(kept: tuple[str, ...]):
        tried.append(kept)
        return f"model{len(kept)}", () if len(kept) >= 2 else ("too far",)

    attempt = first_passing(("c", "a", "b", "d"), trial)
    assert attempt.passed and attempt.kept_float == ("c", "a") and attempt.candidate == "model2"
    assert tried == [(), ("c",), ("c", "a")] and attempt.tried == 3
    failed = first_passing(("c", "a"), lambda kept: (kept, ("never",)), max_float=1)
    assert not failed.passed and failed.kept_float == ("c",) and failed.tried == 2


def test_harm_order_puts_the_most_harmful_first() -> None:
    cost = {(): 1.0, ("a",): 0.9, ("b",): 0.2, ("c",): 0.95}
    assert harm_order(("a", "b", "c"), lambda kept: cost[kept]) == ("b", "a", "c")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("quantize")
    paths = {"model": folder / "lite.onnx", "calib": folder / "calib.npz"}
    onnx.save(onnx_graphs.lite_like(dead_concat=(), dead_dw1=()), paths["model"])
    x = onnx_graphs.inputs(40)
    y = run_model(onnx.load(paths["model"]), {"x": x})[0].argmax(1)
    np.savez(paths["calib"], x=x, y=y)
    w = onnx_graphs.chain_weights(4, (), (), seed=1)
    w.values["fc_w"][1] = w.values["fc_w"][0] + 1e-4 * np.array([1.0, -0.2, 0.0])  # ~50:50
    w.values["fc_b"][1] = w.values["fc_b"][0]
    paths["fragile"] = folder / "fragile.onnx"
    onnx.save(onnx_graphs.build(onnx_graphs.CHAIN + onnx_graphs.HEAD, w.values), paths["fragile"])
    return paths


@pytest.fixture(scope="module")
def result(files: dict[str, Path]):
    model = io.load_model(files["model"])
    return quantize(model, io.load_calibration(files["calib"], model), FAST)


def test_quantize_writes_qdq_with_its_record(result) -> None:
    ops = {n.op_type for n in result.model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    # Folded into the Convs; only the slice over the hand-crafted (non-Conv) part stays.
    assert sum(n.op_type == "BatchNormalization" for n in result.model.graph.node) == 1
    record = json.loads({p.key: p.value for p in result.model.metadata_props}["dsp.quantize"])
    assert record["scheme"] == "QDQ U8S8" and record["target"] == "x86"
    assert record["kept_float"] == list(result.kept_float) and len(record["source_sha256"]) == 64
    assert result.decision.agreement > 0.5


def test_already_quantized_and_convless_models_are_refused(result, files) -> None:
    calibration = io.load_calibration(files["calib"], io.load_model(files["model"]))
    with pytest.raises(ModelError, match="already quantized"):
        quantize(result.model, calibration, FAST)
    head = onnx_graphs.build("h = Relu (x)\n" + onnx_graphs.HEAD.replace("fc_w", "fc_w"),
                             {"fc_w": np.ones((2, 1)), "fc_b": np.zeros(2)})  # fmt: skip
    with pytest.raises(ModelError, match="Conv"):
        quantize(head, calibration, FAST)
    with pytest.raises(OptionError, match="--target"):
        QuantizeOptions(target="riscv")


def _cli(run_cli, files, out: Path, *extra: str):
    return run_cli("quantize", files["model"], "--calib", files["calib"], "-o", out,
                   "--no-speed-check", *extra)  # fmt: skip


def test_cli_contract(run_cli, files, tmp_path: Path) -> None:
    before = {k: p.read_bytes() for k, p in files.items()}
    out = tmp_path / "m.int8.onnx"
    fragile = {**files, "model": files["fragile"]}
    failed = _cli(run_cli, fragile, out, "--max-float", "0", "--holdout", "0.5")
    assert failed.code == 1, failed.stderr  # class scores 1e-4 apart: INT8 flips them
    assert not out.exists() and "not written" in failed.stderr
    ok = _cli(run_cli, files, out, "--min-agreement", "0", "--max-accuracy-drop", "1", "--json")
    assert ok.code == 0, ok.stderr
    answer = json.loads(ok.stdout)
    assert answer["output"] == str(out) and out.exists() and answer["scheme"] == "QDQ U8S8"
    bad = run_cli("quantize", out, "--calib", files["calib"], "-o", tmp_path / "again.onnx")
    assert bad.code == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "again.onnx").exists()
    np.savez(tmp_path / "wrong.npz", x=np.zeros((4, 1, 7), np.float32))
    wrong = run_cli("quantize", files["model"], "--calib", tmp_path / "wrong.npz", "-o",
                    tmp_path / "w.onnx")  # fmt: skip
    assert wrong.code == 2 and not (tmp_path / "w.onnx").exists()
    target = _cli(run_cli, files, tmp_path / "t.onnx", "--target", "riscv")
    assert target.code == 2 and "--target" in target.stderr
    assert {k: p.read_bytes() for k, p in files.items()} == before


@pytest.fixture(scope="module")
def int8_file(result, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("int8") / "int8.onnx"
    io.save_model(result.model, path)
    return path


def test_runtime_takes_the_int8_model(int8_file: Path) -> None:
    from dsp_deploy.runtime import Classifier

    probabilities = Classifier(int8_file).predict_proba(onnx_graphs.inputs(4))
    assert probabilities.shape == (4, 2)
    np.testing.assert_allclose(probabilities.sum(1), 1, rtol=1e-5)


def test_bench_takes_the_int8_model(run_cli, int8_file: Path) -> None:
    bench = run_cli("bench", int8_file, "--runs", "3", "--json")
    assert bench.code == 0, bench.stderr
    assert json.loads(bench.stdout)["size_bytes"] == int8_file.stat().st_size


def test_eval_takes_the_int8_model(run_cli, result, int8_file: Path, tmp_path: Path) -> None:
    x, y = onnx_graphs.inputs(6), np.array([0, 1, 0, 1, 1, 0])
    expected = float(np.mean(run_model(result.model, {"x": x})[0].argmax(1) == y))
    np.savez(tmp_path / "data.npz", x=x, y=y)
    answer = run_cli("eval", int8_file, "--dataset", tmp_path / "data.npz", "--json")
    assert answer.code == 0, answer.stderr
    assert json.loads(answer.stdout)["accuracy"] == pytest.approx(expected)


def test_ensemble_takes_the_int8_model(run_cli, int8_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "ens.onnx"
    answer = run_cli("ensemble", int8_file, int8_file, "-o", out, "--json")
    assert answer.code == 0, answer.stderr
    ens = onnx.load(out)
    assert sum(n.op_type == "DequantizeLinear" for n in ens.graph.node) > 0

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
from dsp_deploy.quantize.fallback import (
    configurations,
    first_passing,
    probabilities,
    probability_mse,
    sensitivity_order,
)

# Gates that pass (point estimates, any drop), split mode (no k-fold runs): fast.
FAST = QuantizeOptions(
    speed_check=False, min_agreement=0.0, max_accuracy_drop=1.0, confidence=0.5, a16=False
)

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

    configs = configurations(("x",), ("c", "a", "b", "d"))
    attempt = first_passing(configs, trial)
    assert attempt.passed and attempt.kept_float == ("c", "a") and attempt.candidate == "model2"
    assert tried == [(), ("x",), ("c",), ("c", "a")] and attempt.tried == 4
    failed = first_passing(configurations((), ("c", "a"), 1), lambda kept: (kept, ("never",)))
    assert not failed.passed and failed.kept_float == ("c",) and failed.tried == 2


def test_configurations_try_the_input_convs_once_and_within_the_limit() -> None:
    assert configurations(("a",), ("a", "b"), 2) == ((), ("a",), ("a", "b"))
    assert configurations(("a", "b", "c"), ("c", "b", "a"), 2) == ((), ("c",), ("c", "b"))
    assert configurations(("b",), ("a", "b"), 0) == ((),)


def test_sensitivity_order_puts_the_most_sensitive_first() -> None:
    score = {"a": 0.1, "b": 0.7, "c": 0.1}
    assert sensitivity_order(("a", "b", "c"), score.__getitem__) == ("b", "a", "c")


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-30, 30), min_size=6, max_size=6))
def test_probability_mse_compares_softmax_of_logits(values: list[float]) -> None:
    logits = np.array(values).reshape(2, 3)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(probabilities(logits), p, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(probabilities(p), p)  # already probabilities: kept
    other = p[::-1]
    assert probability_mse([p], [other]) == pytest.approx(np.mean(np.sum((p - other) ** 2, 1)))
    assert probability_mse([logits], [logits]) == 0.0


def test_wide_nodes_get_16_bit_activations_and_stay_closer_to_float() -> None:
    from dsp_deploy.quantize import ranges
    from dsp_deploy.quantize.build import quantize_qdq
    from dsp_deploy.quantize.options import FLAVOURS

    model = onnx_graphs.chain(dead1=(), dead2=())
    for i, node in enumerate(model.graph.node):
        node.name = f"n{i}"  # as the prepared models have (wide names nodes)
    x = onnx_graphs.inputs(16)
    acts = ranges.activations(model, {"x": x}, ranges.float_tensors(model))
    chosen = {k: ranges.choose_range(v) for k, v in acts.items()}
    convs = [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    narrow = quantize_qdq(model, chosen, FLAVOURS["x86"])
    wide = quantize_qdq(model, chosen, FLAVOURS["x86"], wide=convs)
    types = {t.data_type for t in wide.graph.initializer if t.name.endswith("zero_point")}
    assert onnx.TensorProto.UINT16 in types
    assert onnx.TensorProto.UINT16 not in {
        t.data_type for t in narrow.graph.initializer if t.name.endswith("zero_point")
    }
    init = {t.name: onnx.numpy_helper.to_array(t) for t in wide.graph.initializer}
    wide_q = [n for n in wide.graph.node if n.op_type == "QuantizeLinear"
              and init[n.input[2]].dtype == np.uint16]  # fmt: skip
    assert {n.input[0] for n in wide_q} >= {"x"}  # the first conv's input at 16 bits
    for q in wide_q:  # the chosen range on the 16-bit grid
        r = chosen[q.input[0]]
        assert float(init[q.input[1]]) == pytest.approx((r.hi - r.lo) / 65535, rel=1e-5)
    np.testing.assert_allclose(_outputs(wide, x), _outputs(model, x), atol=0.1)


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
    # the Convs reading the (signed) series have 7-bit weights unless kept in float
    reading_x = {n.name for n in result.model.graph.node if n.op_type == "Conv"
                 and any(i.startswith("x") for i in n.input)} - set(result.kept_float)  # fmt: skip
    assert reading_x and set(record["weights_7bit"]) >= reading_x
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
    few = _cli(run_cli, files, out)  # 40 series: compress's refusal, before the run
    assert few.code == 2 and "too few for the gates" in few.stderr and "133" in few.stderr
    assert len(few.stderr.strip().splitlines()) == 1 and not out.exists()
    failed = _cli(run_cli, fragile, out, "--max-float", "0", "--eval", files["calib"],
                  "--confidence", "0.5", "--json")  # fmt: skip
    assert failed.code == 1, failed.stderr  # class scores 1e-4 apart: INT8 flips them
    assert not out.exists() and "not written" in failed.stderr
    judged = json.loads(failed.stdout.splitlines()[0])
    assert judged["gates"]["judged"] == "eval" and judged["eval"]["samples"] == 40
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


def test_input_nodes_are_the_convs_reading_the_series() -> None:
    from dsp_deploy.quantize.pipeline import input_nodes

    model = onnx_graphs.lite_like(dead_concat=(), dead_dw1=())
    for i, node in enumerate(model.graph.node):
        node.name = f"n{i}"
    convs = tuple(n.name for n in model.graph.node if n.op_type == "Conv")
    expected = tuple(n.name for n in model.graph.node if n.op_type == "Conv" and "x" in n.input)
    assert expected and input_nodes(model, convs) == expected
    assert input_nodes(model, convs[len(expected) :]) == ()


@pytest.mark.slow
def test_few_series_are_judged_over_k_folds_pooled(files) -> None:
    model = io.load_model(files["model"])
    calibration = io.load_calibration(files["calib"], model)
    options = QuantizeOptions(speed_check=False, a16=False, max_float=1)
    result = quantize(model, calibration, options)
    assert result.gate.judged == "kfold" and result.gate.folds == 5
    assert result.holdout.samples == 40 and result.evaluation is None
    assert any("5 folds" in note for note in result.notes)
    # 40 series cannot certify a 2-point drop: the bound refuses, however well it did.
    assert any(f.startswith("held-out accuracy drop up to") for f in result.failures)
    record = json.loads({p.key: p.value for p in result.model.metadata_props}["dsp.quantize"])
    assert record["gates"]["judged"] == "kfold" and record["calibration_samples"] == [40, 40]

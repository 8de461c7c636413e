"""Models onnxruntime writes itself: quantized (QOperator, QDQ, QDQ with contrib ops) and
optimised offline (com.microsoft FusedConv). Every command loads them; cost counts their
int8 weights; compress refuses the quantized ones in one line (compress, then quantize).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_graphs
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from dsp_deploy import io, modelcheck
from dsp_deploy.cost import model_cost
from dsp_deploy.errors import ModelError

_QDQ = ("QuantizeLinear", "DequantizeLinear")
VARIANTS = ("qoperator", "qdq", "qdq-contrib", "extended")


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a few seeded samples."""

    def __init__(self) -> None:
        self.samples = iter({"x": x[None]} for x in onnx_graphs.inputs(8))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.samples, None)


def _write_variant(name: str, src: Path, out: Path) -> None:
    from onnxruntime.quantization import QuantFormat, quantize_static

    if name == "extended":  # onnxruntime's offline optimiser: Conv+Relu → FusedConv
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(out)
        ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
        return
    fmt = QuantFormat.QOperator if name == "qoperator" else QuantFormat.QDQ
    extra = {"UseQDQContribOps": name == "qdq-contrib"}
    quantize_static(str(src), str(out), _Reader(), quant_format=fmt, extra_options=extra)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """The float LITE-like model and its variants, written by onnxruntime."""
    folder = tmp_path_factory.mktemp("quantized")
    paths = {"float": folder / "float.onnx"}
    onnx.save(onnx_graphs.lite_like(), paths["float"])
    for name in VARIANTS:
        paths[name] = folder / f"{name}.onnx"
        _write_variant(name, paths["float"], paths[name])
    np.savez(folder / "calib.npz", x=onnx_graphs.inputs(24))
    yield paths


def _domains(path: Path) -> set[tuple[str, str]]:
    return {(n.domain, n.op_type) for n in onnx.load(path).graph.node}


def test_the_variants_hold_what_onnxruntime_writes(models) -> None:
    assert ("", "QLinearConv") in _domains(models["qoperator"])
    assert ("com.microsoft", "QLinearConcat") in _domains(models["qoperator"])
    assert ("", "DequantizeLinear") in _domains(models["qdq"])
    assert ("com.microsoft", "DequantizeLinear") in _domains(models["qdq-contrib"])
    assert ("com.microsoft", "FusedConv") in _domains(models["extended"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_validation_accepts_ops_onnxruntime_registers(models, variant: str) -> None:
    model = io.load_model(models[variant])  # what eval, inspect, compress and bench call
    float_cost = model_cost(io.load_model(models["float"]))
    assert model_cost(model).macs == float_cost.macs  # quantizing changes no contraction


def test_runtime_ops_come_from_onnxruntime() -> None:
    ops = modelcheck.runtime_ops()
    assert {("com.microsoft", "QLinearConcat"), ("com.microsoft", "FusedConv"), ("", "Conv")} <= ops
    assert ("com.microsoft", "Relu") not in ops


def test_an_op_onnxruntime_lacks_in_a_known_domain_is_refused(tmp_path: Path) -> None:
    model = onnx_graphs.chain()
    model.graph.node[1].domain = "com.microsoft"  # Relu: no com.microsoft kernel
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelError, match="CPU provider has no kernel for it in that domain"):
        io.load_model(path)


def _weight_elements(path: Path) -> int:
    model = onnx.load(path)
    return sum(
        int(np.prod(t.dims))
        for t in model.graph.initializer
        if t.data_type != onnx.TensorProto.INT64
    )


def _numpy_bytes(path: Path) -> int:
    model = onnx.load(path)
    return sum(
        numpy_helper.to_array(t).nbytes
        for t in model.graph.initializer
        if t.data_type != onnx.TensorProto.INT64
    )


def _quant_params(path: Path) -> int:
    """Elements of the scales and zero points (inputs 1, 2 of every (De)QuantizeLinear)."""
    model = onnx.load(path)
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    names = {i for n in model.graph.node if n.op_type in _QDQ for i in n.input[1:]}
    return sum(sizes.get(name, 0) for name in names)


def test_qdq_params_are_the_float_params_plus_scales_and_zero_points(models) -> None:
    float_cost = model_cost(io.load_model(models["float"]))
    cost = model_cost(io.load_model(models["qdq"]))
    assert cost.params == float_cost.params + _quant_params(models["qdq"])
    assert cost.params == _weight_elements(models["qdq"])  # no int64 initializer here
    assert cost.bytes == _numpy_bytes(models["qdq"]) < float_cost.bytes  # int8 weights


@pytest.mark.parametrize("variant", ["qoperator", "qdq", "extended"])
def test_inspect_and_bench_report_the_same_cost(run_cli, models, variant: str) -> None:
    path = models[variant]
    inspected = run_cli("inspect", path, "--json")
    assert inspected.code == 0, inspected.stderr
    doc = json.loads(inspected.stdout)
    cost = model_cost(io.load_model(path))
    assert (doc["params"], doc["macs"], doc["macs_unknown"]) == (cost.params, cost.macs, [])
    benched = run_cli("bench", path, "--runs", "2", "--warmup", "0", "--rounds", "1", "--json")
    assert benched.code == 0, benched.stderr
    report = json.loads(benched.stdout)
    assert (report["params"], report["macs"]) == (cost.params, cost.macs)


@pytest.mark.parametrize("variant", ["qoperator", "qdq", "qdq-contrib"])
def test_compress_refuses_a_quantized_model_in_one_line(run_cli, models, variant: str) -> None:
    path, out = models[variant], models[variant].with_suffix(".pruned.onnx")
    before = path.read_bytes()
    result = run_cli("compress", path, "--calib", path.parent / "calib.npz", "-o", out)
    assert result.code == 2
    assert result.stderr.count("\n") == 1
    assert "cannot prune quantized convs: compress, then quantize" in result.stderr
    assert not out.exists() and path.read_bytes() == before


def test_quantized_reason_names_the_first_quantized_conv(models) -> None:
    assert modelcheck.quantized_reason(onnx.load(models["float"])) is None
    assert modelcheck.quantized_reason(onnx.load(models["extended"])) is None
    reason = modelcheck.quantized_reason(onnx.load(models["qoperator"]))
    assert reason is not None and reason.endswith("is a QLinearConv")
    reason = modelcheck.quantized_reason(onnx.load(models["qdq"]))
    assert reason is not None and reason.endswith("is a Conv of DequantizeLinear weights (QDQ)")


def test_convinteger_is_quantized() -> None:
    model = helper.make_model(
        helper.make_graph(
            [helper.make_node("ConvInteger", ["x", "w"], ["y"], name="ci")],
            "g",
            [helper.make_tensor_value_info("x", onnx.TensorProto.UINT8, [1, 1, 8])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.INT32, None)],
            [helper.make_tensor("w", onnx.TensorProto.UINT8, [2, 1, 3], [1] * 6)],
        )
    )
    assert modelcheck.quantized_reason(model) == "node 'ci' is a ConvInteger"

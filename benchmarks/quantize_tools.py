"""The starting point of ``quantize``: onnxruntime's and NNCF's own post-training INT8.

    python benchmarks/quantize_tools.py ort                 # onnxruntime.quantization
    /work/venvs/nncf/bin/python benchmarks/quantize_tools.py nncf   # NNCF's ONNX PTQ

Models: the shipped GunPoint LITE and Inception (and their lossless-pruned files);
calibration: ``calibration/<model>.npz`` (the 50 z-normalised training series); test:
the 150 GunPoint test series, z-normalised (``dsp_deploy.data``), written once to
``/tmp/gunpoint_test.npz`` so that the NNCF venv (no dsp_deploy dependencies) reads it.
One JSON line per (model, variant): test accuracy of the float model and of the INT8 one.
This file imports only onnx, onnxruntime, numpy (and nncf for ``nncf``).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
TEST = Path("/tmp/gunpoint_test.npz")
MODELS = (
    "lite_gunpoint",
    "inception_gunpoint",
    "lite_gunpoint.pruned",
    "inception_gunpoint.pruned",
)


def test_set() -> tuple[np.ndarray, np.ndarray]:
    if not TEST.exists():
        from dsp_deploy.data import load_dataset

        d = load_dataset("GunPoint", "test")
        np.savez(TEST, x=d.X, y=d.y)
    z = np.load(TEST)
    return z["x"], z["y"]


def calibration(name: str) -> np.ndarray:
    return np.load(ROOT / "calibration" / f"{name.split('.')[0]}.npz")["x"]


def accuracy(model: str | bytes, x: np.ndarray, y: np.ndarray) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    sess = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return float(np.mean(out.argmax(1) == y))


def ort_variants():
    from onnxruntime.quantization import CalibrationMethod as M
    from onnxruntime.quantization import QuantFormat as F
    from onnxruntime.quantization import QuantType as T

    u8, s8 = T.QUInt8, T.QInt8
    yield "qdq-u8s8-minmax", {"quant_format": F.QDQ, "activation_type": u8}
    yield (
        "qdq-u8s8-entropy",
        {"quant_format": F.QDQ, "activation_type": u8, "calibrate_method": M.Entropy},
    )
    yield (
        "qdq-u8s8-percentile",
        {"quant_format": F.QDQ, "activation_type": u8, "calibrate_method": M.Percentile},
    )
    yield (
        "qdq-u8s8-reduce-range",
        {"quant_format": F.QDQ, "activation_type": u8, "reduce_range": True},
    )
    yield "qdq-s8s8-minmax", {"quant_format": F.QDQ, "activation_type": s8}
    yield "qop-u8s8-minmax", {"quant_format": F.QOperator, "activation_type": u8}
    yield "qdq-a16w8", {"quant_format": F.QDQ, "activation_type": T.QUInt16}


def run_ort() -> None:
    from onnxruntime.quantization import CalibrationDataReader, quant_pre_process, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self, x: np.ndarray, name: str):
            self.items = iter([{name: x[i : i + 1]} for i in range(len(x))])

        def get_next(self):
            return next(self.items, None)

    x, y = test_set()
    for name in MODELS:
        path = ROOT / "models" / f"{name}.onnx"
        calib = calibration(name)
        with tempfile.TemporaryDirectory() as tmp:
            pre = Path(tmp) / "pre.onnx"
            quant_pre_process(str(path), str(pre))
            input_name = onnx.load(str(pre)).graph.input[0].name
            for label, kwargs in ort_variants():
                out = Path(tmp) / f"{label}.onnx"
                t0 = time.perf_counter()
                quantize_static(
                    str(pre), str(out), Reader(calib, input_name), per_channel=True,
                    weight_type=ort.quantization.QuantType.QInt8, **kwargs,
                )  # fmt: skip
                print(json.dumps({
                    "tool": "onnxruntime", "model": name, "variant": label,
                    "float": accuracy(str(path), x, y), "int8": accuracy(str(out), x, y),
                    "seconds": round(time.perf_counter() - t0, 1),
                }), flush=True)  # fmt: skip


def safe_accuracy(model: bytes, x: np.ndarray, y: np.ndarray) -> float | str:
    try:
        return accuracy(model, x, y)
    except Exception as e:  # onnxruntime refuses some NNCF graphs: report the reason
        return f"onnxruntime fails: {str(e).splitlines()[0][-160:]}"


def run_nncf() -> None:
    import nncf

    x, y = test_set()
    for name in MODELS:
        path = ROOT / "models" / f"{name}.onnx"
        model = onnx.load(str(path))
        input_name = model.graph.input[0].name
        calib = calibration(name)
        items = [{input_name: calib[i : i + 1]} for i in range(len(calib))]
        dataset = nncf.Dataset(items)
        base = accuracy(str(path), x, y)
        t0 = time.perf_counter()
        q = nncf.quantize(model, dataset, subset_size=len(items))
        row = {"tool": "nncf", "model": name, "float": base}
        got = safe_accuracy(q.SerializeToString(), x, y)
        print(json.dumps({**row, "variant": "quantize", "int8": got,
                          "seconds": round(time.perf_counter() - t0, 1)}), flush=True)  # fmt: skip
        labels = np.load(ROOT / "calibration" / f"{name.split('.')[0]}.npz")["y"]

        def validate(m: onnx.ModelProto, data, calib=calib, labels=labels) -> float:
            got = safe_accuracy(m.SerializeToString(), calib, labels)
            return got if isinstance(got, float) else 0.0

        t0 = time.perf_counter()
        qa = nncf.quantize_with_accuracy_control(
            model, dataset, dataset, validate, max_drop=0.005, subset_size=len(items)
        )
        print(json.dumps({**row, "variant": "accuracy-control(max_drop 0.005, on calib)",
                          "int8": safe_accuracy(qa.SerializeToString(), x, y),
                          "seconds": round(time.perf_counter() - t0, 1)}), flush=True)  # fmt: skip


if __name__ == "__main__":
    {"ort": run_ort, "nncf": run_nncf}[sys.argv[1]]()

"""The measures of ``benchmarks/other_libraries.py`` (in ``testkit/``), without tsai or torch.

The benchmark counts planted channels as all-zero Conv weight rows and zero
BatchNormalization scales, before and after ``compress``; these tests pin that count on
small graphs (removed when removable, left where pinned) and the report's verdicts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_graphs
import other_libraries_report as report  # testkit/, shared with the benchmark
from onnx import numpy_helper
from planted_channels import zero_channels

from dsp_deploy.compress import compress
from dsp_deploy.io import Calibration


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


def _pruned(model: onnx.ModelProto) -> onnx.ModelProto:
    calibration = Calibration(inputs={"x": onnx_graphs.inputs(32)}, labels=None)
    return compress(model, calibration, holdout=0.0).model


def test_zero_rows_counted_then_removed_by_compress(tmp_path: Path) -> None:
    model = onnx_graphs.chain(dead1=(1,), dead2=(0, 2))
    assert zero_channels(_save(model, tmp_path / "m.onnx")) == 3
    assert zero_channels(_save(_pruned(model), tmp_path / "p.onnx")) == 0


def test_zero_rows_of_a_pinned_group_stay(tmp_path: Path) -> None:
    model = onnx_graphs.pinned()  # LpNormalization over channels pins the dead channel 1
    pruned = _pruned(model)
    assert zero_channels(_save(pruned, tmp_path / "p.onnx")) == 1


def test_zero_batchnorm_scales_and_identity_fed_weights_count(tmp_path: Path) -> None:
    model = onnx_graphs.depthwise(dead=())
    scale = next(t for t in model.graph.initializer if t.name == "bn_s")
    values = numpy_helper.to_array(scale).copy()
    values[[0, 3]] = 0.0
    scale.CopyFrom(numpy_helper.from_array(values, "bn_s"))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    weight = next(t for t in model.graph.initializer if t.name == conv.input[1])
    weight.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(weight)), "w0"))
    identity = onnx.helper.make_node("Identity", ["w0"], [conv.input[1]])
    model.graph.node.insert(0, identity)  # the TorchScript exporter's shared initializer
    assert zero_channels(_save(model, tmp_path / "m.onnx")) == 4 + 2


def _row(**fields) -> dict:
    within = {"96": {"max_abs_diff": 1e-7, "within_tolerance": True}}
    return {"exit": 0, "planted": 8, "planted_kept": 0, "fresh_max_abs_diff": within, **fields}


def test_outcomes() -> None:
    off = {"96": {"max_abs_diff": 0.2, "within_tolerance": False}}
    assert report.outcome(_row()) == "exact"
    assert report.outcome(_row(planted_kept=3)) == "3 planted kept"
    assert report.outcome(_row(fresh_max_abs_diff=off)) == "exact, off on fresh inputs"
    assert report.outcome(_row(exit=2, planted_kept=None)) == "refused (exit 2)"
    assert report.outcome({"error": "RuntimeError: export"}) == "error"
    zero_init = _row(planted_in_onnx=24, planted_kept=16)
    assert report.outcome(zero_init) == "16 of 24 zero rows/scales kept (16 unplanted)"


def test_pin_reason_split() -> None:
    pin = {"reason": "/gap/flatten/Shape (Shape): Shape is not in the channel-flow table"}
    assert report.reason(pin) == (
        "Shape: Shape is not in the channel-flow table",
        "/gap/flatten/Shape",
    )


def test_notes_survive_regeneration(tmp_path: Path) -> None:
    meta = {
        "command": "python benchmarks/other_libraries.py",
        "date": "today",
        "seconds": 1.0,
        "versions": dict.fromkeys(
            ("dsp_deploy_commit", "tsai", "fastai", "torch", "onnx", "onnx-ir", "onnxruntime",
             "numpy", "python", "exporter", "torchvision"), "x"),
    }  # fmt: skip
    rows = [{"arch": "FCN", "c_in": 1, "length_axis": "static", **_row()}]
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"meta": meta, "rows": rows}))
    md = report.write(path)
    md.write_text(md.read_text() + "\nhand-written finding\n")
    assert "hand-written finding" in report.write(path).read_text()
    assert "| FCN | 1 | static | exact |" in md.read_text()

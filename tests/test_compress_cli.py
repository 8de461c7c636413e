"""``dsp-deploy compress`` / ``inspect`` through the CLI: outputs, exit codes, JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from dsp_deploy import io, metadata
from dsp_deploy.inference import run_model

sys.path.insert(0, str(Path(__file__).parent))
import onnx_graphs as G  # noqa: E402


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    model, calib = tmp_path / "net.onnx", tmp_path / "calib.npz"
    onnx.save(G.lite_like(), model)
    x = G.inputs(100)
    np.savez(calib, x=x, y=run_model(G.lite_like(), {"x": x})[0].argmax(axis=1))
    return model, calib


def test_compress_json_writes_default_output(files, run_cli) -> None:
    model, calib = files
    result = run_cli("compress", model, "--calib", calib, "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    out = model.with_name("net.pruned.onnx")
    assert report["output"] == str(out) and report["verified"] is True
    assert report["params"][1] < report["params"][0] and report["macs"][1] < report["macs"][0]
    assert report["channels"]["Conv_0"] == [4, 3]
    # lossless: decided on, and checked on, all 100 samples; the k-fold report beside it
    assert report["holdout"] is None and report["decision"]["samples"] == 100
    assert report["decision"]["accuracy"] == [1.0, 1.0]
    assert report["folds"]["folds"] == 5 and sum(report["folds"]["samples"]) == 100
    assert {"input", "max_abs_diff", "seconds", "layers"} <= report.keys()
    pruned = io.load_model(out)
    onnx.checker.check_model(pruned, full_check=True)
    assert metadata.COMPRESS in metadata.read_metadata(pruned)


def test_failed_gate_exits_1_and_writes_nothing_unless_forced(files, run_cli, tmp_path) -> None:
    model, calib = files
    out = tmp_path / "small.onnx"
    args = (
        "compress",
        model,
        "--calib",
        calib,
        "-o",
        out,
        "--criterion",
        "dsp",
        "--compensation",
        "none",
        "--min-count",
        "1000000",
        "--max-accuracy-drop",
        "0.1",  # 100 series certify 10 points (0.02 would need 133: exit 2, not 1)
        "--min-agreement",
        "0.9",
    )
    result = run_cli(*args)
    assert result.code == 1 and "not written" in result.stderr
    assert not out.exists()
    # a refusal is short: no per-layer table unless asked for
    assert len((result.stdout + result.stderr).strip().splitlines()) <= 3
    assert "Conv_0" in run_cli(*args, "-v").stdout
    forced = run_cli(*args, "--force")
    assert forced.code == 0 and out.exists()


def test_nothing_to_prune_writes_the_model_unchanged(tmp_path, run_cli) -> None:
    model, calib = tmp_path / "g.onnx", tmp_path / "c.npz"
    onnx.save(G.grouped(), model)
    np.savez(calib, x=G.inputs(20))
    result = run_cli("compress", model, "--calib", calib)
    assert result.code == 0 and "nothing to prune" in result.stdout
    written = io.load_model(tmp_path / "g.pruned.onnx")
    assert [n.SerializeToString() for n in written.graph.node] == [
        n.SerializeToString() for n in G.grouped().graph.node
    ]


def test_bad_options_exit_2(files, run_cli) -> None:
    model, calib = files
    for extra in (("--holdout", "1.5"), ("--criterion", "magic"), ("--batch-size", "0")):
        assert run_cli("compress", model, "--calib", calib, *extra).code == 2


def test_inspect_json_lists_groups_pins_and_dead(files, run_cli, tmp_path) -> None:
    model, calib = files
    report = json.loads(run_cli("inspect", model, "--calib", calib, "--json").stdout)
    assert sum(g["dead"] for g in report["groups"]) == 3
    assert report["params"] > 0 and len(report["layers"]) == 6
    for key in ("params", "macs"):  # the layers and the rest add up to the model's total
        assert sum(r[key] for r in report["layers"]) + report["other"][key] == report[key]
        assert report["other"][key] >= 0
    pinned = tmp_path / "p.onnx"
    onnx.save(G.pinned(), pinned)
    groups = json.loads(run_cli("inspect", pinned, "--json").stdout)["groups"]
    assert groups[0]["blocked_by"].endswith("is not in the channel-flow table")


def test_inspect_reports_statistics_at_every_consumer(tmp_path, run_cli) -> None:
    # residual: the 4 tied units are read by the second Conv and by the Gemm head
    model, calib = tmp_path / "r.onnx", tmp_path / "r.npz"
    onnx.save(G.residual(dead=(2,)), model)
    np.savez(calib, x=G.inputs(32))
    report = json.loads(run_cli("inspect", model, "--calib", calib, "--json").stdout)
    rows = {(u["consumer"], u["position"]): u for u in report["units"]}
    assert sorted(rows) == [(c, p) for c in ("Conv_2", "Gemm_7") for p in range(4)]
    assert rows[("Conv_2", 2)]["max_abs"] == 0 and rows[("Gemm_7", 2)]["max_abs"] == 0
    assert (
        rows[("Conv_2", 2)]["dead"] and rows[("Conv_2", 2)]["unit"] == rows[("Gemm_7", 2)]["unit"]
    )
    assert [g["dead"] for g in report["groups"]] == [1]

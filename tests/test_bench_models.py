"""benchmarks/bench_models.py: pairing dense with pruned models, and the files it writes."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
from pathlib import Path

import pytest
from test_bench import conv_net

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_models.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("bench_models", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_groups_pair_dense_with_pruned(script, tmp_path) -> None:
    names = ["lite.onnx", "lite.pruned.onnx", "inception.onnx", "orphan.pruned.onnx"]
    paths = [tmp_path / n for n in names]
    assert script.groups(paths) == [
        (tmp_path / "inception.onnx",),
        (tmp_path / "lite.onnx", tmp_path / "lite.pruned.onnx"),
        (tmp_path / "orphan.pruned.onnx",),
    ]


def test_writes_json_csv_markdown_with_the_machine(script, tmp_path) -> None:
    dense = conv_net(tmp_path / "net.onnx", 16)
    pruned = conv_net(tmp_path / "net.pruned.onnx", 8)
    out = tmp_path / "results"
    assert (
        script.main(
            [
                str(dense),
                str(pruned),
                "--out",
                str(out),
                "--runs",
                "6",
                "--rounds",
                "1",
                "--no-emulated",
            ]
        )
        == 0
    )
    doc = json.loads((out / "bench_models.json").read_text())
    assert doc["host"]["uname"] and len(doc["reports"]) == 1
    assert doc["reports"][0]["platform"]["machine"] == "x86_64"
    with open(out / "bench_models.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["model"], r["batch"], r["threads"]) for r in table] == [
        (m, b, t) for m in ("net.onnx", "net.pruned.onnx") for b in ("1", "64") for t in ("1", "2")
    ]
    assert all(r["machine"] == "x86_64" and r["emulated"] == "False" for r in table)
    assert float(table[-1]["macs_ratio"]) == pytest.approx(
        int(table[-1]["macs"]) / int(table[0]["macs"]), abs=1e-4
    )
    md = (out / "bench_models.md").read_text().splitlines()
    assert md[0].startswith("| model | target |") and len(md) == 2 + len(table)
    # the paired median [quartiles], e.g. "0.52 [0.5, 0.55]"
    median, q1, q3 = map(
        float, re.fullmatch(r"(\S+) \[(\S+), (\S+)\]", md[-1].split(" | ")[7]).groups()
    )
    assert q1 <= median <= q3 and float(table[-1]["p50_ratio"]) > 0

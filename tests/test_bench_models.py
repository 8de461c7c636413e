"""benchmarks/bench_models.py: pairing dense with pruned models, and the files it writes.

The benchmark runs as a subprocess, as a user runs it: tests do not import benchmarks.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_bench import conv_net

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_models.py"


def run_script(*args: str | Path) -> str:
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    }
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_groups_pair_dense_with_pruned(tmp_path) -> None:
    names = ["lite.onnx", "lite.pruned.onnx", "inception.onnx", "orphan.pruned.onnx"]
    listed = json.loads(run_script(*(tmp_path / n for n in names), "--list-groups"))
    assert listed == [
        [str(tmp_path / "inception.onnx")],
        [str(tmp_path / "lite.onnx"), str(tmp_path / "lite.pruned.onnx")],
        [str(tmp_path / "orphan.pruned.onnx")],
    ]


def test_writes_json_csv_markdown_with_the_machine(tmp_path) -> None:
    dense = conv_net(tmp_path / "net.onnx", 16)
    pruned = conv_net(tmp_path / "net.pruned.onnx", 8)
    out = tmp_path / "results"
    run_script(dense, pruned, "--out", out, "--runs", 6, "--rounds", 1, "--no-emulated")
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

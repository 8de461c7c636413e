"""The sweep on Ray, end to end: 1-epoch LITE on two tiny aeon-bundled datasets.

A driver killed mid-sweep and rerun (with more variants) ends with every row exactly
once; the report is written. The slow test runs the sweep through ``--address`` on a
two-node local cluster.
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from dsp_experiments.results import ResultsStore, row_key
from dsp_experiments.tasks import VARIANTS

pytest.importorskip("ray")
pytest.importorskip("torch")

DATASETS = "UnitTest,ItalyPowerDemand"
BASE = ("--datasets", DATASETS, "--archs", "lite", "--seeds", "1,2", "--epochs", "1")


@pytest.fixture(scope="module")
def local_ray():
    """One small local Ray for this module: the command reuses an initialised session."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dsp_deploy.cli", *args]


def _wait_for_rows(path: Path, proc: subprocess.Popen, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and len(ResultsStore(path.parent).rows()) >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"no {n} rows in {path} after {timeout} s (exit {proc.poll()})")


def test_killed_sweep_resumes_with_every_row_once(tmp_path, local_ray, run_cli) -> None:
    out = tmp_path / "sweep"
    first = (*BASE, "--out", str(out), "--num-cpus", "2", "--no-report", "-q")
    with (tmp_path / "driver.log").open("w") as log:
        proc = subprocess.Popen(
            _cli("sweep", *first, "--variants", "dense,dsp-onnx,dsp-onnx-rule"),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_for_rows(out / "results.csv", proc, 1, timeout=900)
        finally:
            proc.kill()  # SIGKILL: no clean-up in the driver
            proc.wait()
    before = ResultsStore(out).rows()
    assert 1 <= len(before) < 12, "the driver was killed too late to test resumption"

    result = run_cli("sweep", *BASE, "--out", str(out), "--variants", "all", "--json")
    assert result.code == 0, result.stderr

    rows = ResultsStore(out).rows()
    with (out / "results.csv").open() as f:
        raw = list(csv.DictReader(f))
    assert len(raw) == len(rows) == 2 * 2 * len(VARIANTS)  # datasets × seeds × variants, once each
    assert len({row_key(r) for r in raw}) == len(raw)
    assert all(r in rows for r in before)  # rows from the killed run kept as they were
    for r in rows:
        assert 0 <= float(r["accuracy"]) <= 1 and int(r["epochs"]) == 1
        assert 0 < int(r["params"]) <= int(r["params_dense"])
        assert float(r["latency_ms"]) > 0 and r["protocol"] == "cpu-small"
        assert float(r["latency_ratio"]) > 0
    by_variant = {v: [r for r in rows if r["variant"] == v] for v in {r["variant"] for r in rows}}
    # the rule reused dsp-onnx's sparse model (this run's, or the killed run's from disk)
    assert all(float(r["train_seconds"]) == 0 for r in by_variant["dsp-onnx-rule"])
    assert all(r["verified"] in ("true", "false") for r in by_variant["dsp-onnx-rule"])
    assert all(r["verified"] == "true" for r in by_variant["dsp-onnx"])
    # the model before compression is scored where one is compressed, and only there
    sparse = ("dsp-onnx", "dsp-onnx-rule", "dsp-exact", "dsp-onnx-auto", "dense-onnx-auto")
    assert all(
        (0 <= float(r["accuracy_unpruned"]) <= 1)
        if r["variant"] in sparse
        else r["accuracy_unpruned"] == ""
        for r in rows
    )
    assert all(r["kept_channels"].count(";") == 2 for r in by_variant["dsp-retrain"])
    # dsp-onnx kept its trained weights for dsp-retrain (this run's or the killed run's)
    store = ResultsStore(out)
    assert all(store.model_path(row_key(r), "state").is_file() for r in by_variant["dsp-onnx"])
    assert all(1 <= int(r["width"]) <= 32 for r in by_variant["narrow"])

    report = out / "report"
    for name in ("report.md", "table.csv", "summary.csv", "per_dataset.csv", "published.csv"):
        assert (report / name).is_file(), name
    assert (report / "accuracy_lite.png").stat().st_size > 0
    with (report / "table.csv").open() as f:
        table = list(csv.DictReader(f))
    assert sum(r["seed"] == "ensemble" for r in table) == 2 * len(VARIANTS)
    text = (report / "report.md").read_text()
    assert "| lite | dsp-retrain | narrow | single | 2 |" in text
    assert "| lite | dsp-retrain | single | 2 |" in text  # against the paper's claim
    assert (report / "latency_lite.png").stat().st_size > 0  # the rows' paired ratios

    again = run_cli("sweep", *BASE, "--out", str(out), "--variants", "all", "--no-report")
    assert again.code == 0 and f"0 tasks run now, {2 * 2 * len(VARIANTS)} already done" in again.stdout
    assert len(ResultsStore(out).rows()) == 2 * 2 * len(VARIANTS)

    rep = run_cli("sweep-report", str(out), "-o", str(tmp_path / "rep"))
    assert rep.code == 0 and (tmp_path / "rep" / "report.md").is_file()


def test_narrow_without_its_upstream_is_refused(tmp_path, run_cli) -> None:
    result = run_cli("sweep", *BASE, "--out", str(tmp_path / "s"), "--variants", "narrow")
    assert result.code == 2 and "narrow needs dsp-retrain" in result.stderr


def test_report_of_an_empty_folder_is_an_input_error(tmp_path, run_cli) -> None:
    result = run_cli("sweep-report", str(tmp_path))
    assert result.code == 2 and "holds no results" in result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sweep_through_address_on_a_two_node_cluster(tmp_path) -> None:
    ray_bin = str(Path(sys.executable).with_name("ray"))
    port = _free_port()
    # Ray's Unix sockets live in its temp dir: pytest's tmp_path is too long a path for them.
    temp = tempfile.mkdtemp(prefix="dspray-", dir="/tmp")
    # Ray 2.60 enables token auth; nodes started apart would need the token shared.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    common = ("--num-cpus=1", "--block", "--disable-usage-stats")
    nodes = [
        subprocess.Popen(
            [ray_bin, "start", "--head", f"--port={port}", "--include-dashboard=false",
             f"--temp-dir={temp}", *common],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    ]  # fmt: skip
    try:
        time.sleep(10)
        nodes.append(
            subprocess.Popen(
                [ray_bin, "start", f"--address=127.0.0.1:{port}", *common],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
        time.sleep(10)
        out = tmp_path / "sweep"
        args = (*BASE, "--variants", "dense,dsp-onnx", "--out", str(out), "--json")
        done = subprocess.run(
            _cli("sweep", *args, "--address", f"127.0.0.1:{port}"),
            env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert len(ResultsStore(out).rows()) == 2 * 2 * 2
    finally:
        for node in reversed(nodes):  # SIGTERM to `ray start --block` stops its node
            node.terminate()
        for node in reversed(nodes):
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
        shutil.rmtree(temp, ignore_errors=True)


def _inception_task(variant: str, sparsity: float):
    from dsp_experiments.tasks import Task

    return Task("UnitTest", "inception", variant, 1, "test", 1, 64, sparsity, 1, 5)


def test_inception_sparse_task_and_its_rule_downstream() -> None:
    # Inception's dsp-onnx then dsp-onnx-rule on the sparse model, on the worker function.
    from dsp_deploy.data import load_train_test
    from dsp_experiments.tasks import run_task

    train, test = load_train_test("UnitTest")
    sparse = run_task(_inception_task("dsp-onnx", 1e-5), train, test)
    assert sparse.row["verified"] is True and "sparse" in sparse.models
    assert sparse.probabilities.shape == (len(test.y), 2)
    assert sparse.row["params_dense"] == 421_730  # the published net as ONNX, 2 classes
    rule = run_task(_inception_task("dsp-onnx-rule", 1e-5), train, test, sparse)
    assert rule.row["train_seconds"] == 0.0
    assert rule.row["params"] < sparse.row["params"]


def test_retrain_from_dsp_onnx_weights_gives_the_row_of_training_them() -> None:
    # dsp-retrain starts from its dsp-onnx upstream's trained state instead of training the
    # same model again; the row must be the one that training it here gives.
    from dataclasses import replace

    import numpy as np

    from dsp_deploy.archs import get_arch
    from dsp_deploy.data import load_train_test
    from dsp_deploy.errors import InputError
    from dsp_experiments.tasks import Task, run_task

    def task(variant: str, seed: int) -> Task:
        return Task("UnitTest", "lite", variant, seed, "test", 3, 64, get_arch("lite").sparsity)

    train, test = load_train_test("UnitTest")
    upstream = run_task(task("dsp-onnx", 1), train, test)
    assert "state" in upstream.models and "sparse" in upstream.models
    scratch = run_task(task("dsp-retrain", 1), train, test)
    reused = run_task(task("dsp-retrain", 1), train, test, upstream)

    timed = {"train_seconds", "task_seconds", "latency_ms", "latency_ratio"}
    assert {k: v for k, v in reused.row.items() if k not in timed} == {
        k: v for k, v in scratch.row.items() if k not in timed
    }
    np.testing.assert_array_equal(reused.probabilities, scratch.probabilities)  # bit for bit

    # Another seed's weights shrink the net otherwise: the state is what decides the row.
    other = run_task(task("dsp-onnx", 2), train, test)
    wrong = run_task(task("dsp-retrain", 1), train, test, other)
    assert wrong.row["kept_channels"] != scratch.row["kept_channels"]
    assert not np.allclose(wrong.probabilities, scratch.probabilities, atol=1e-6)
    # A state trained for other epochs is refused, not used.
    stale = replace(upstream, row={**upstream.row, "epochs": "5"})
    with pytest.raises(InputError, match="trained with"):
        run_task(task("dsp-retrain", 1), train, test, stale)


def test_paired_latency_ratio_is_of_the_model_against_the_reference() -> None:
    from dsp_experiments.measure import dense_model, paired_latency

    lite, inception = dense_model("lite", 2, 150), dense_model("inception", 2, 150)
    # Inception does ~40x LITE's MACs: an inverted or unpaired ratio lands far outside.
    assert paired_latency(lite, inception, 150, 100)["latency_ratio"] < 0.5
    assert paired_latency(inception, lite, 150, 100)["latency_ratio"] > 2
    same = paired_latency(lite, lite, 150, 100)
    assert 0.8 < same["latency_ratio"] < 1.25 and same["latency_ms"] > 0

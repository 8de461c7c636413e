"""`dsp-deploy bench`: JSON schema, ratios, harness overhead, bad input, emulated Pi 4."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dsp_deploy import metadata
from dsp_deploy.bench.results import (
    BenchReport,
    ModelBench,
    PairedTimes,
    Platform,
    compare,
    summarise,
)
from dsp_deploy.cost import model_cost

FAST = ("--runs", "20", "--warmup", "2", "--rounds", "2")
RESULT_KEYS = {
    "batch", "threads", "runs", "p50_ms", "p90_ms", "p99_ms", "min_ms", "mean_ms",
    "round_p50_ms", "throughput_per_s", "peak_rss_mb", "overhead_ms",
}  # fmt: skip
PLATFORM_KEYS = {
    "target", "emulated", "machine", "cpu", "cpu_count", "system", "python", "numpy",
    "onnxruntime", "provider", "graph_optimization_level",
}  # fmt: skip


def conv_net(path: Path, channels: int, *, length_metadata: bool = True) -> Path:
    """Conv1d(1→c, k9) → ReLU → Conv1d(c→c, k5) → ReLU → GAP → MatMul(c→3) → Softmax."""
    rng = np.random.default_rng(channels)
    weights = {"W1": (channels, 1, 9), "W2": (channels, channels, 5), "Wf": (channels, 3)}
    inits = [
        numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
        for n, s in weights.items()
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["h1"], pads=[4, 4]),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("Conv", ["r1", "W2"], ["h2"], pads=[2, 2]),
        helper.make_node("Relu", ["h2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "Wf"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, "L"])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if length_metadata:
        metadata.write_metadata(model, {metadata.INPUT_LENGTH: 96})
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("nets")
    return conv_net(d / "dense.onnx", 32), conv_net(d / "small.onnx", 12)


def hand_macs(c: int, length: int = 96) -> int:
    return c * length * 9 + c * length * c * 5 + c * 3


def test_single_model_json_schema(run_cli, nets) -> None:
    dense, _ = nets
    result = run_cli("bench", dense, "--batch", "1", "--batch", "4", *FAST, "--json")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["model"] == str(dense.absolute())
    assert doc["macs"] == hand_macs(32)
    assert doc["params"] == 32 * 9 + 32 * 32 * 5 + 32 * 3
    assert doc["size_bytes"] == dense.stat().st_size
    assert doc["input_shape"] == [1, 1, 96]
    assert set(doc["platform"]) == PLATFORM_KEYS
    assert doc["platform"]["emulated"] is False and doc["platform"]["target"] == "native"
    assert [(r["batch"], r["threads"]) for r in doc["results"]] == [(1, 1), (4, 1)]
    for r in doc["results"]:
        assert set(r) == RESULT_KEYS
        assert r["runs"] == 20 and len(r["round_p50_ms"]) == 2
        assert 0 < r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["throughput_per_s"] == pytest.approx(r["batch"] / r["p50_ms"] * 1e3)
        assert r["peak_rss_mb"] > doc["baseline_rss_mb"] > 0


def test_two_models_compare_latency_with_macs(run_cli, nets) -> None:
    dense, small = nets
    result = run_cli("bench", dense, small, "--threads", "1", "--threads", "2", *FAST, "--json")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [m["model"] for m in doc["models"]] == [str(dense.absolute()), str(small.absolute())]
    by_config = {(r["batch"], r["threads"]): r for r in doc["models"][0]["results"]}
    assert [(c["batch"], c["threads"]) for c in doc["comparison"]] == [(1, 1), (1, 2)]
    assert doc["paired_rounds"] == 20
    for c, r in zip(doc["comparison"], doc["models"][1]["results"], strict=True):
        assert c["macs_ratio"] == hand_macs(12) / hand_macs(32)
        assert c["p50_ratio"] == pytest.approx(r["p50_ms"] / by_config[(1, c["threads"])]["p50_ms"])
        q1, q3 = c["latency_ratio_iqr"]
        assert 0 < q1 <= c["latency_ratio"] <= q3
        assert c["gap"] == pytest.approx(c["latency_ratio"] / c["macs_ratio"])
        assert c["paired_calls"] >= 1  # 20 runs over 20 rounds, or more to fill 20 ms
    assert [c["clock"] for c in doc["comparison"]] == ["thread-cpu", "wall"]


def test_paired_ratio_follows_the_work(run_cli, nets) -> None:
    # At batch 32 the 12-channel net does 0.15x the MACs of the 32-channel one; with its
    # fixed costs (Relu, pooling, head, calls) it measures ~0.3x here. An inverted ratio
    # (~3) or one of a model against itself (~1) lands far outside.
    dense, small = nets
    result = run_cli("bench", dense, small, "-b", "32", *FAST, "--json")
    assert result.code == 0, result.stderr
    (c,) = json.loads(result.stdout)["comparison"]
    assert 0.8 * c["macs_ratio"] < c["latency_ratio"] < 0.5, c


def test_progress_counts_every_worker_process(nets) -> None:
    from dsp_deploy.bench.runner import BenchSettings, benchmark

    seen: list[tuple[int, int, str]] = []
    settings = BenchSettings(batches=(1, 2), runs=2, warmup=0, rounds=2, paired_rounds=1)
    benchmark(nets, settings, lambda done, total, what: seen.append((done, total, what)))
    # baseline + rounds x configs x models + one paired process per config
    total = 1 + 2 * 2 * 2 + 2
    assert [(d, t) for d, t, _ in seen] == [(d, total) for d in range(total + 1)]
    assert seen[1][2] == "baseline" and seen[-1][2] == "dense.onnx + small.onnx"
    assert {w for _, _, w in seen[2:-2]} == {"dense.onnx", "small.onnx"}


def test_human_output_has_the_comparison_table(run_cli, nets) -> None:
    result = run_cli("bench", *nets, "--runs", "4", "--warmup", "1", "--rounds", "1")
    assert result.code == 0, result.stderr
    assert "ratios to dense.onnx" in result.stdout and "small.onnx" in result.stdout


def test_harness_overhead_is_under_two_percent_of_the_smallest_latency(run_cli, nets) -> None:
    _, small = nets  # the fastest configuration we have: the smallest net at batch 1
    doc = json.loads(run_cli("bench", small, *FAST, "--json").stdout)
    smallest = min(r["p50_ms"] for r in doc["results"])
    overhead = max(r["overhead_ms"] for r in doc["results"])
    assert 0 < overhead < 0.02 * smallest
    assert doc["max_overhead_fraction"] < 0.02


def test_summary_statistics_by_hand() -> None:
    rounds = [[1_000_000, 2_000_000, 3_000_000], [4_000_000, 5_000_000]]  # ns
    r = summarise(batch=8, threads=1, rounds_ns=rounds, peak_rss_bytes=3 << 20, overhead_ns=500)
    assert (r.runs, r.p50_ms, r.min_ms, r.mean_ms) == (5, 3.0, 1.0, 3.0)
    assert r.p90_ms == pytest.approx(4.6) and r.p99_ms == pytest.approx(4.96)
    assert r.round_p50_ms == (2.0, 4.5)
    assert r.throughput_per_s == pytest.approx(8 / 3e-3)
    assert (r.peak_rss_mb, r.overhead_ms) == (3.0, 5e-4)


def test_ratios_by_hand() -> None:
    platform = Platform(
        "native", False, "x86_64", "cpu", 2, "Linux", "3.11", "2", "1.3", "CPU", "all"
    )

    def bench(name: str, macs: int, p50: float, rss_mb: float) -> ModelBench:
        ns = [int(p50 * 1e6)]
        result = summarise(1, 1, [ns], int(rss_mb * 2**20), 0)
        return ModelBench(name, macs // 10, macs, macs * 4, (1, 1, 8), platform, (result,))

    paired = {(1, 1): PairedTimes("thread-cpu", 3, ((100, 100, 100, 100), (50, 60, 40, 45)))}
    models = [bench("a", 1000, 2.0, 60.0), bench("b", 250, 1.0, 55.0)]
    (c,) = compare(models, baseline_rss_mb=50.0, paired=paired)
    # per-round ratios .5 .6 .4 .45: median .475, quartiles (linear) .4375 and .525
    assert (c.model, c.reference, c.macs_ratio, c.p50_ratio) == ("b", "a", 0.25, 0.5)
    assert c.latency_ratio == pytest.approx(0.475) and c.gap == pytest.approx(1.9)
    assert c.latency_ratio_iqr == pytest.approx((0.4375, 0.525))
    assert (c.clock, c.paired_calls) == ("thread-cpu", 3)
    assert (c.params_ratio, c.size_ratio) == (0.25, 0.25)
    assert c.rss_ratio == pytest.approx(55 / 60) and c.rss_above_baseline_ratio == pytest.approx(
        0.5
    )


def test_cost_matches_the_hand_count_of_the_bench_net(nets) -> None:
    assert model_cost(onnx.load(str(nets[0]))).macs == hand_macs(32)


def one_error_line(result, *needles: str) -> None:
    assert result.code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_bad_input_is_one_line_and_exit_2(run_cli, nets, tmp_path) -> None:
    dense, _ = nets
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08not an onnx model")
    one_error_line(run_cli("bench", garbage, *FAST), "garbage.onnx")
    one_error_line(run_cli("bench", tmp_path / "missing.onnx"), "missing.onnx", "does not exist")
    one_error_line(run_cli("bench", dense, "--target", "pi5"), "unknown target 'pi5'")
    one_error_line(run_cli("bench", dense, "--batch", "0"), "batch must be positive")
    one_error_line(run_cli("bench", dense, "--threads", "-1"), "threads must be positive")
    one_error_line(run_cli("bench", dense, "--runs", "0"), "runs > 0")
    one_error_line(run_cli("bench", dense, "--paired-rounds", "0"), "paired rounds > 0")
    no_length = conv_net(tmp_path / "no_length.onnx", 4, length_metadata=False)
    one_error_line(run_cli("bench", no_length), "dynamic dimension 'L' at axis 2")
    assert run_cli("bench", no_length, "--length", "32", *FAST).code == 0


def test_missing_qemu_tools_are_one_line(run_cli, nets, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DSP_DEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get, no dpkg-deb
    one_error_line(run_cli("bench", nets[0], "--target", "pi4-emulated"), "not found on PATH")


def test_plot_writes_a_png_or_names_the_extra(run_cli, nets, tmp_path) -> None:
    png = tmp_path / "latency.png"
    result = run_cli("bench", *nets, "--runs", "4", "--rounds", "1", "--plot", png)
    if importlib.util.find_spec("matplotlib") is None:
        one_error_line(result, "pip install 'dsp-deploy[sweep]'")
        assert not png.exists()
    else:
        assert result.code == 0, result.stderr
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_emulated_cortex_a72_run(run_cli, nets) -> None:
    # First use sets qemu + an arm64 python up in the cache (30-50 s, 204 MB); later ~30 s.
    args = ("--runs", "3", "--warmup", "1", "--rounds", "1", "--paired-rounds", "3", "--json")
    result = run_cli("bench", *nets, "--target", "pi4-emulated", *args)
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    platform = doc["platform"]
    assert (platform["machine"], platform["emulated"]) == ("aarch64", True)
    assert platform["target"] == "pi4-emulated" and "Raspberry Pi 4" in platform["cpu"]
    assert all(m["results"][0]["p50_ms"] > 0 for m in doc["models"])
    assert doc["models"][0]["results"][0]["runs"] == 3
    (c,) = doc["comparison"]  # the paired rounds ran in the emulated python too
    assert c["clock"] == "thread-cpu" and c["latency_ratio"] > 0


# --- the tables for people ----------------------------------------------------------------

LONG_NAMES = ("inceptiontime_gunpoint.onnx", "inceptiontime_gunpoint.pruned.onnx", "x.int8.onnx")


def fake_report(batches: tuple[int, ...], threads: tuple[int, ...]) -> BenchReport:
    """Three models under /some/where: the later ones 2 and 3 times as slow, with 1/2 and
    1/3 of the first's params, MACs and size."""
    platform = Platform(
        "native", False, "x86_64", "x86_64", 2, "Linux", "3.11", "2", "1.32", "CPU", "all"
    )
    models = [
        ModelBench(
            f"/some/where/{name}", 412_345 // k, 81_234_567 // k, 1_650_000 // k, (1, 1, 150),
            platform,
            tuple(
                summarise(b, t, [[int(1e6 * b * k * (1 + i / 10)) for i in range(10)]] * 3,
                          (60 + k) << 20, 500)
                for b in batches for t in threads
            ),
        )
        for k, name in enumerate(LONG_NAMES, start=1)
    ]  # fmt: skip
    noise = [1 + (i % 5 - 2) / 100 for i in range(20)]  # per-round ratios k · 0.98 ... k · 1.02
    rounds = tuple(tuple(1000.0 * k * (n if k > 1 else 1) for n in noise) for k in (1, 2, 3))
    paired = {(b, t): PairedTimes("thread-cpu", 20, rounds) for b in batches for t in threads}
    return BenchReport(platform, 52.3, 100, 10, 3, 20, tuple(models), compare(models, 52.3, paired))


@pytest.mark.parametrize("threads", [(1,), (1, 4)], ids=["one-thread", "two-threads"])
def test_tables_fit_80_columns(monkeypatch, capsys, threads: tuple[int, ...]) -> None:
    from rich.measure import Measurement

    from dsp_deploy.bench import report
    from dsp_deploy.render import console

    monkeypatch.setenv("COLUMNS", "80")
    bench = fake_report((1, 64), threads)
    out = console()
    report.render(bench, out)
    text = capsys.readouterr().out
    assert max(map(len, text.splitlines())) <= 80
    for table in report.models_table(bench, 80), report.results_table(bench, 80), (
        report.comparison_table(bench, 80)
    ):  # fmt: skip
        assert Measurement.get(out, out.options, table).maximum <= 80  # rich cropped nothing
    assert "2.000 [1.98, 2.02]" in text and "3.000 [2.97, 3.03]" in text  # paired, quartiles
    assert "206,172 (0.50)" in text and "27,078,189 (0.33)" in text  # static ratios, once
    assert "inceptiontim" in text and "pruned.onnx" in text  # shortened in the middle
    assert ("1 thread" in text) == (threads == (1,)) and (" thr " in text) == (threads != (1,))


def test_wide_tables_keep_whole_names_and_every_value(capsys) -> None:
    from rich.console import Console

    from dsp_deploy.bench import report

    bench = fake_report((1, 64), (1,))
    report.render(bench, Console(width=200))
    text = capsys.readouterr().out
    assert all(name in text for name in LONG_NAMES)
    rows = [line for line in text.splitlines() if "inceptiontime_gunpoint.pruned.onnx │" in line]
    assert len(rows) == 2 + 2 + 1  # results at 2 batches, comparison at 2, models

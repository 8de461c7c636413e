"""Benchmark the shipped example models: dense vs compressed, x86 and emulated Cortex-A72.

    python benchmarks/bench_models.py                    # every models/*.onnx
    python benchmarks/bench_models.py a.onnx a.pruned.onnx --no-emulated
    python benchmarks/bench_models.py a.onnx a.pruned.onnx --merge   # add to stored results
    python benchmarks/bench_models.py --list-groups      # which models are paired; no timing

Each dense ``X.onnx`` is measured in one ``bench`` run together with ``X.pruned.onnx``
(when it exists): x86 at batch 1 and 64, 1 and 2 threads, and an emulated Raspberry Pi 4
(qemu Cortex-A72) at batch 1, 1 thread (an emulated InceptionTime call at batch 64 takes
minutes; ``emulated_pairs.py`` has LITE there). The latency ratio is ``bench``'s: the
median [quartiles] of paired rounds, both models back to back in one process. Writes
``bench_models.json`` (every report, with the machine each ran on), ``bench_models.csv``
(one row per model × target × batch × threads), ``bench_models.md`` (the table the
README shows) and one PNG per group and target (when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import importlib.util
import json
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

from dsp_deploy.bench.results import BenchReport, to_json
from dsp_deploy.bench.runner import BenchSettings, benchmark

ROOT = Path(__file__).resolve().parent.parent
CSV_COLUMNS = (
    "group", "target", "emulated", "machine", "cpu", "onnxruntime", "model", "batch", "threads",
    "params", "macs", "size_bytes", "p50_ms", "p90_ms", "p99_ms", "throughput_per_s",
    "peak_rss_mb", "latency_ratio", "latency_ratio_q1", "latency_ratio_q3", "p50_ratio",
    "macs_ratio", "latency_over_macs",
)  # fmt: skip


def groups(paths: Sequence[Path]) -> list[tuple[Path, ...]]:
    """Each dense model with its ``.pruned.onnx`` (dense first); a lone model on its own."""
    paths = sorted(dict.fromkeys(p.resolve() for p in paths))
    pruned = {p for p in paths if p.name.endswith(".pruned.onnx")}
    out = []
    for p in paths:
        if p in pruned:
            dense = p.with_name(p.name.removesuffix(".pruned.onnx") + ".onnx")
            if dense not in paths:
                out.append((p,))
            continue
        twin = p.with_name(p.name.removesuffix(".onnx") + ".pruned.onnx")
        out.append((p, twin) if twin in pruned else (p,))
    return out


def settings_for(target: str, args: argparse.Namespace) -> BenchSettings:
    if target == "native":
        return BenchSettings(
            batches=(1, 64), threads=(1, 2), runs=args.runs, warmup=10, rounds=args.rounds
        )
    return BenchSettings(
        batches=(1,), threads=(1,), runs=args.emulated_runs, warmup=1, rounds=1,
        paired_rounds=args.emulated_runs, target="pi4-emulated",
    )  # fmt: skip


def rows(group: str, report: BenchReport) -> list[dict[str, object]]:
    p = report.platform
    ratios = {(c.model, c.batch, c.threads): c for c in report.comparison}
    out = []
    for m in report.models:
        for r in m.results:
            c = ratios.get((m.model, r.batch, r.threads))
            out.append({
                "group": group, "target": p.target, "emulated": p.emulated, "machine": p.machine,
                "cpu": p.cpu, "onnxruntime": p.onnxruntime, "model": Path(m.model).name,
                "batch": r.batch, "threads": r.threads, "params": m.params, "macs": m.macs,
                "size_bytes": m.size_bytes, "p50_ms": round(r.p50_ms, 5),
                "p90_ms": round(r.p90_ms, 5), "p99_ms": round(r.p99_ms, 5),
                "throughput_per_s": round(r.throughput_per_s, 2),
                "peak_rss_mb": round(r.peak_rss_mb, 2),
                "latency_ratio": "" if c is None else round(c.latency_ratio, 4),
                "latency_ratio_q1": "" if c is None else round(c.latency_ratio_iqr[0], 4),
                "latency_ratio_q3": "" if c is None else round(c.latency_ratio_iqr[1], 4),
                "p50_ratio": "" if c is None else round(c.p50_ratio, 4),
                "macs_ratio": "" if c is None else round(c.macs_ratio, 4),
                "latency_over_macs": "" if c is None else round(c.gap, 3),
            })  # fmt: skip
    return out


def markdown(table: Sequence[dict[str, object]]) -> str:
    head = ("model", "target", "batch", "threads", "params", "MACs", "p50 ms",
            "latency ratio [quartiles]", "MACs ratio", "latency/MACs")  # fmt: skip
    keys = ("model", "target", "batch", "threads", "params", "macs", "p50_ms", "latency_ratio",
            "macs_ratio", "latency_over_macs")  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table:
        emulated = str(row["emulated"]) == "True"  # a bool, or its text read back (--merge)
        cells = {k: str(row[k]) for k in keys}
        cells["target"] = f"{row['machine']} (emulated)" if emulated else str(row["machine"])
        if row["latency_ratio"] != "":
            cells["latency_ratio"] += f" [{row['latency_ratio_q1']}, {row['latency_ratio_q3']}]"
        lines.append("| " + " | ".join(cells.values()) + " |")
    return "\n".join(lines) + "\n"


def stored(out: Path, replaced: set[tuple[str, str]]) -> tuple[list[dict], list[dict[str, object]]]:
    """The stored reports and table rows of the (group, target) pairs not measured again
    (``--merge``)."""
    try:
        stored_json = json.loads((out / "bench_models.json").read_text())
        with open(out / "bench_models.csv", newline="") as f:
            stored_rows = list(csv.DictReader(f))
    except FileNotFoundError:
        return [], []
    if stored_rows and list(stored_rows[0]) != list(CSV_COLUMNS):
        sys.exit(f"{out / 'bench_models.csv'} has other columns (an older version): rerun "
                 "without --merge")  # fmt: skip
    # results written before reports carried their own host share the file's one
    reports = [
        {"host": stored_json.get("host"), **r}
        for r in stored_json["reports"]
        if (r["group"], r["platform"]["target"]) not in replaced
    ]
    return reports, [r for r in stored_rows if (r["group"], r["target"]) not in replaced]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path, help="default: models/*.onnx")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--runs", type=int, default=200, help="timed calls per x86 config")
    parser.add_argument("--rounds", type=int, default=3, help="x86 processes per config")
    parser.add_argument(
        "--emulated-runs", type=int, default=5, help="per emulated config, and paired rounds"
    )
    parser.add_argument("--no-emulated", action="store_true", help="skip the Cortex-A72 runs")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the stored results of the groups not measured in this run",
    )
    parser.add_argument(
        "--list-groups", action="store_true", help="print the groups as JSON; measure nothing"
    )
    args = parser.parse_args(argv)
    paths = args.models or sorted((ROOT / "models").glob("*.onnx"))
    if not paths:
        parser.error("no models given and none in models/")
    if args.list_groups:
        print(json.dumps([[str(p) for p in group] for group in groups(paths)]))
        return 0
    targets = ("native",) if args.no_emulated else ("native", "pi4-emulated")
    args.out.mkdir(parents=True, exist_ok=True)
    plots = importlib.util.find_spec("matplotlib") is not None
    reports, table = [], []
    for group in groups(paths):
        name = group[0].name.removesuffix(".onnx")
        for target in targets:
            print(f"{name}: {target} ...", file=sys.stderr, flush=True)
            report = benchmark(group, settings_for(target, args))
            reports.append({"group": name, **to_json(report)})
            table += rows(name, report)
            if plots:
                from dsp_deploy.bench.plot import plot_report

                plot_report(report, args.out / f"{name}.{target}.png")
    host = {"node": platform.node(), "uname": " ".join(platform.uname()),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}  # fmt: skip
    for report in reports:
        report["host"] = host
    if args.merge:
        measured = {(r["group"], r["platform"]["target"]) for r in reports}
        old_reports, old_table = stored(args.out, measured)
        reports = sorted(old_reports + reports, key=lambda r: (r["group"], r["platform"]["target"]))
        table = sorted(old_table + table, key=lambda r: (str(r["group"]), str(r["target"])))
    (args.out / "bench_models.json").write_text(
        json.dumps({"host": host, "reports": reports}, indent=2) + "\n"
    )
    with open(args.out / "bench_models.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(table)
    (args.out / "bench_models.md").write_text(markdown(table))
    if not plots:
        print("matplotlib not installed: no PNG plots (pip install 'dsp-deploy[sweep]')",
              file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How much do `bench`'s two latency ratios move when the same comparison is run again?

    python benchmarks/bench_paired.py                  # LITE and Inception pairs, ~6 min
    python benchmarks/bench_paired.py --repeats 3 --out /tmp/x

``bench A B`` reports two pruned / dense ratios per (batch, threads): ``p50_ratio``, the
ratio of the medians of separate processes (``--rounds`` each, wall clock), and
``latency_ratio``, the median of paired rounds that run both models back to back in one
process (thread CPU time at one thread). Here the very same ``bench`` of
``models/X.onnx`` against ``models/X.pruned.onnx`` runs ``--repeats`` times in a row, on
whatever else the machine is doing; a ratio that estimates one quantity should agree with
itself across repeats. Per pair and batch the table gives each ratio's median, min and max
over the repeats, beside the MACs ratio.

Writes ``bench_paired.json`` (every repeat's ratios) and ``bench_paired.md`` into
``benchmarks/results`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from dsp_deploy.bench.runner import BenchSettings, benchmark

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency_gap import machine  # noqa: E402  (not a package)

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("lite_gunpoint", "inception_gunpoint")


def measure(name: str, repeats: int, settings: BenchSettings) -> list[dict[str, object]]:
    """One record per (repeat, batch): both ratios of ``bench`` on the shipped pair."""
    pair = [ROOT / "models" / f"{name}.onnx", ROOT / "models" / f"{name}.pruned.onnx"]
    records = []
    for repeat in range(repeats):
        print(f"{name}: repeat {repeat + 1}/{repeats}", file=sys.stderr, flush=True)
        for c in benchmark(pair, settings).comparison:
            records.append({
                "model": name, "repeat": repeat, "batch": c.batch, "threads": c.threads,
                "macs_ratio": c.macs_ratio, "p50_ratio": c.p50_ratio,
                "latency_ratio": c.latency_ratio, "latency_ratio_iqr": list(c.latency_ratio_iqr),
            })  # fmt: skip
    return records


def markdown(records: list[dict[str, object]], settings: BenchSettings, repeats: int) -> str:
    lines = [
        f"`bench` of each shipped model against its `.pruned.onnx`, repeated {repeats} times "
        f"in a row: {settings.runs} timed calls per model in {settings.rounds} separate "
        f"processes (p50 ratio) and in {settings.paired_rounds} paired rounds in one process "
        "(latency ratio); 1 thread. Each cell: median over the repeats [min, max].",
        "",
        "| model | batch | MACs ratio | p50 ratio (separate processes) | latency ratio (paired) |",
        "|---|---|---|---|---|",
    ]
    keys = sorted({(str(r["model"]), int(r["batch"])) for r in records})
    for model, batch in keys:
        rows = [r for r in records if (r["model"], r["batch"]) == (model, batch)]

        def cell(key: str, rows: list[dict[str, object]] = rows) -> str:
            v = np.array([float(r[key]) for r in rows])
            return f"{np.median(v):.3f} [{v.min():.3f}, {v.max():.3f}]"

        lines.append(
            f"| {model} | {batch} | {float(rows[0]['macs_ratio']):.3f} | {cell('p50_ratio')} | "
            f"{cell('latency_ratio')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    settings = BenchSettings(batches=(1, 64), threads=(1,), runs=args.runs)
    records = [r for name in args.models for r in measure(name, args.repeats, settings)]
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"machine": machine(), "settings": vars(settings), "records": records}
    (args.out / "bench_paired.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / "bench_paired.md").write_text(markdown(records, settings, args.repeats))
    print((args.out / "bench_paired.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

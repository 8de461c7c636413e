"""Fuzz the commands with mutated ONNX models: nothing may crash, hang, trace or leak.

    .venv/bin/python benchmarks/fuzz_onnx.py --cases 1000 --seed 0 [--workers 2]

Runs ``--cases`` fuzz cases (``--seed``; ``--only`` replays given indices) in
``--workers`` processes that imported everything first, each command in a forked child
with ``--timeout``, and each mutant also *unvalidated* on onnxruntime. The cases, the
runs and the contract a run must keep live in ``testkit/`` (``fuzz_cases.py``,
``fuzz_runs.py``), shared with ``tests/test_fuzz_onnx.py``, which runs a seeded sample
in-process. Results: ``benchmarks/results/fuzz_onnx.json``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import onnx

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE.parent / "testkit"))

from fuzz_cases import Source, sources  # noqa: E402  (testkit/ is not a package)
from fuzz_runs import run_case  # noqa: E402

# --- driver --------------------------------------------------------------------------------

_SOURCES: tuple[Source, ...] = ()


def _init() -> None:
    global _SOURCES
    _SOURCES = sources()
    # Import in the worker once, so forked children start warm.
    import onnxruntime  # noqa: F401

    import dsp_deploy.bench.runner  # noqa: F401
    import dsp_deploy.cli  # noqa: F401
    import dsp_deploy.compress.pipeline  # noqa: F401
    import dsp_deploy.evaluate  # noqa: F401
    from dsp_deploy.cli import main

    # typer imports more on its first parse: pay that here, not in every child.
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        main(["inspect", os.devnull])


def _work(args: tuple[int, int, float]) -> dict:
    seed, index, timeout = args
    return run_case(_SOURCES, seed, index, timeout=timeout)


def summarise(records: list[dict], seed: int, seconds: float) -> dict:
    codes = collections.Counter()
    for r in records:
        for run in r["runs"]:
            codes[f"{run['command']}:{run['code']}"] += 1
    raw = collections.Counter(r["raw_onnxruntime"] for r in records)
    crashed_raw = [r for r in records if str(r["raw_onnxruntime"]).startswith(("crash", "hang"))]
    return {
        "seed": seed,
        "cases": len(records),
        "commands_run": sum(len(r["runs"]) for r in records),
        "seconds": round(seconds, 1),
        "cases_with_problems": sum(bool(r["problems"]) for r in records),
        "problems": [
            {
                "index": r["index"],
                "source": r["source"],
                "mutations": r["mutations"],
                "problems": r["problems"],
            }
            for r in records
            if r["problems"]
        ],  # fmt: skip
        "load_model": dict(collections.Counter(r["valid"] for r in records)),
        "exit_codes": dict(sorted(codes.items())),
        "mutations": dict(
            collections.Counter(m.split(":")[0] for r in records for m in r["mutations"])
        ),
        "raw_onnxruntime": dict(raw),
        "raw_onnxruntime_crash_or_hang": [
            {
                "index": r["index"],
                "mutations": r["mutations"],
                "outcome": r["raw_onnxruntime"],
                "load_model": r["valid"],
            }
            for r in crashed_raw
        ],  # fmt: skip
        "validated_but_onnxruntime_crashed": sum(r["valid"] == "valid" for r in crashed_raw),
        "platform": {
            "machine": platform.machine(),
            "python": platform.python_version(),
            "onnx": onnx.__version__,
            "cpus": os.cpu_count(),
        },  # fmt: skip
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "fuzz_onnx.json")
    parser.add_argument("--only", help="replay these case indices (comma-separated)")
    args = parser.parse_args(argv)
    import multiprocessing

    start = time.perf_counter()
    indices = [int(i) for i in args.only.split(",")] if args.only else range(args.cases)
    jobs = [(args.seed, i, args.timeout) for i in indices]
    with multiprocessing.get_context("fork").Pool(args.workers, initializer=_init) as pool:
        records = []
        for n, record in enumerate(pool.imap_unordered(_work, jobs, chunksize=4), 1):
            records.append(record)
            if record["problems"] or n % 50 == 0:
                print(f"{n}/{len(jobs)}", record["index"], record["problems"], flush=True)
    records.sort(key=lambda r: r["index"])
    summary = summarise(records, args.seed, time.perf_counter() - start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "problems"}, indent=2))
    return 1 if summary["cases_with_problems"] else 0


if __name__ == "__main__":
    sys.exit(main())

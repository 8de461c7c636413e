"""Per-call overhead of ``runtime.Classifier`` over a bare onnxruntime session.

    python benchmarks/runtime_overhead.py                        # models/lite_gunpoint.onnx
    python benchmarks/runtime_overhead.py model.onnx --rounds 400 --threads 1

Three ways to get class scores for the same raw series, timed interleaved in blocks of
``--calls`` calls, ``--rounds`` times, in a shuffled order per round so that drifts in the
machine's state (other processes, frequency) hit all three alike:

* ``bare``: ``session.run`` on input that was z-normalised beforehand (the floor), on the
  Classifier's own onnxruntime session;
* ``bare+znorm``: what an app without the runtime would write: numpy z-normalisation
  ``(x - mean) / std`` then ``session.run``;
* ``classifier``: ``Classifier.predict_proba(raw)`` — validation, the exact
  z-normalisation of the training data, run, and output checks;
* ``bare+1reduce``: a control — one ``np.add.reduce`` over the raw series (≈2 µs on its
  own), then ``session.run`` on the ready input. It measures what *any* numpy call between
  two runs costs the next run (cache and branch-predictor state that onnxruntime's kernels
  lose), which the tight ``bare`` loop never pays.

The overhead is the median over rounds of ``classifier / bare - 1`` (a ratio per round,
so a slow round does not bias it), on two clocks: the calling thread's CPU time (with one
intra-op thread onnxruntime computes on the calling thread, so this is all the work, and
time spent descheduled on a shared machine does not count) and wall time. ``own_work_us``
times the runtime's work without the session (validation + normalisation) on its own.
Target: ≤ 5% at batch 1 for the LITE model. Writes
``benchmarks/results/runtime_overhead.json`` with the machine it ran on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from dsp_deploy.runtime import Classifier, znormalise

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.05


def machine() -> dict[str, object]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "machine": platform.machine(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "system": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": ort.__version__,
    }


def block(fn: Callable[[], object], calls: int) -> tuple[float, float]:
    """Mean µs per call over ``calls`` calls: (this thread's CPU time, wall time)."""
    cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
    for _ in range(calls):
        fn()
    return (time.thread_time_ns() - cpu) / calls / 1e3, (
        time.perf_counter_ns() - wall
    ) / calls / 1e3


def summary(times: dict[str, list[float]], rounds_ratio: list[float]) -> dict[str, object]:
    deciles = statistics.quantiles(rounds_ratio, n=10)
    return {
        "median_us": {key: round(statistics.median(v), 2) for key, v in times.items()},
        "overhead_us": round(
            statistics.median(times["classifier"]) - statistics.median(times["bare"]), 2
        ),
        "overhead_fraction": round(statistics.median(rounds_ratio) - 1, 4),
        "overhead_fraction_p10_p90": [round(deciles[0] - 1, 4), round(deciles[-1] - 1, 4)],
    }


def measure(model: Path, batch: int, threads: int, rounds: int, calls: int) -> dict[str, object]:
    clf = Classifier(model, threads=threads)
    # The Classifier's own session (same options, same weights in memory): two sessions of
    # one model differ by a few % from where their buffers land, which would blur the ratio.
    session = clf._session
    name, outputs = session.get_inputs()[0].name, [session.get_outputs()[0].name]
    length, channels = clf.input_length or 150, clf.input_channels or 1
    raw = np.random.default_rng(0).normal(2.0, 3.0, (batch, channels, length)).astype(np.float32)
    ready = znormalise(raw)

    def numpy_znorm() -> np.ndarray:
        mean, std = raw.mean(axis=-1, keepdims=True), raw.std(axis=-1, keepdims=True)
        return ((raw - mean) / std).astype(np.float32)

    variants: dict[str, Callable[[], object]] = {
        "bare": lambda: session.run(outputs, {name: ready}),
        "bare+znorm": lambda: session.run(outputs, {name: numpy_znorm()}),
        "classifier": lambda: clf.predict_proba(raw),
        "bare+1reduce": lambda: (np.add.reduce(raw, axis=-1), session.run(outputs, {name: ready})),
    }
    assert np.allclose(clf.predict_proba(raw), session.run(outputs, {name: ready})[0], atol=1e-6)
    calls = max(2, calls // batch)
    for fn in variants.values():  # warm up: allocator, thread pool, caches
        block(fn, calls)
    cpu: dict[str, list[float]] = {key: [] for key in variants}
    wall: dict[str, list[float]] = {key: [] for key in variants}
    order = list(variants)
    shuffle = random.Random(0).shuffle
    for _ in range(rounds):
        shuffle(order)
        for key in order:
            c, w = block(variants[key], calls)
            cpu[key].append(c)
            wall[key].append(w)
    # The runtime's own work alone (no session.run), on the same clocks.
    own = [block(lambda: clf._prepare(raw), calls) for _ in range(rounds)]
    results: dict[str, object] = {"batch": batch, "threads": threads}
    for clock, times in (("thread_cpu", cpu), ("wall", wall)):
        ratio = [c / b for c, b in zip(times["classifier"], times["bare"], strict=True)]
        fair = [c / b for c, b in zip(times["classifier"], times["bare+znorm"], strict=True)]
        control = [c / b for c, b in zip(times["bare+1reduce"], times["bare"], strict=True)]
        own_us = statistics.median(o[0 if clock == "thread_cpu" else 1] for o in own)
        results[clock] = summary(times, ratio) | {
            "overhead_fraction_vs_bare_znorm": round(statistics.median(fair) - 1, 4),
            "one_numpy_call_fraction": round(statistics.median(control) - 1, 4),
            "own_work_us": round(own_us, 2),
            "own_work_fraction_of_bare": round(own_us / statistics.median(times["bare"]), 4),
        }
    if batch == 1:
        results["target_fraction"] = TARGET
        results["target_met_thread_cpu"] = results["thread_cpu"]["overhead_fraction"] <= TARGET
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", type=Path, default=ROOT / "models/lite_gunpoint.onnx")
    parser.add_argument("--batch", type=int, action="append", help="default: 1 and 64")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--calls", type=int, default=20, help="calls per timed block at batch 1")
    parser.add_argument(
        "-o", "--output", type=Path, default=ROOT / "benchmarks/results/runtime_overhead.json"
    )
    args = parser.parse_args()
    if not args.model.is_file():
        parser.error(f"model {args.model} does not exist; pass an ONNX model")
    doc = {
        "benchmark": "runtime_overhead",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": os.path.relpath(args.model.resolve(), ROOT),
        "model_sha256": hashlib.sha256(args.model.read_bytes()).hexdigest(),
        "rounds": args.rounds,
        "calls_per_block": f"max(2, {args.calls} // batch)",
        "platform": machine(),
        "results": [
            measure(args.model, batch, args.threads, args.rounds, args.calls)
            for batch in args.batch or (1, 64)
        ],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc["results"], indent=2))


if __name__ == "__main__":
    main()

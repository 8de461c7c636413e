"""Measure one benchmark configuration in this (fresh) process and print one JSON line.

Run as ``python worker.py '<json spec>'`` (or ``python -m dsp_deploy.bench.worker``).
This file imports only the standard library, numpy and onnxruntime, so the same file runs
under an emulated aarch64 python (``dsp_deploy.emulator``) with nothing else installed.

Spec (JSON object)::

    {"mode": "run", "model": PATH, "inputs": [[name, dtype, [dims...]], ...],
     "threads": T, "runs": R, "warmup": W, "seed": S, "opt_level": "all"}
    {"mode": "baseline"}     # RSS of a process that imported numpy + onnxruntime only
    {"mode": "paired", "models": [{"model": PATH, "inputs": [...]}, ...], "threads": T,
     "calls": C, "block_ms": B, "rounds": N, "warmup": W, "seed": S, "opt_level": "all"}

Latency: inputs are drawn once; after ``warmup`` untimed calls, each of the ``runs`` calls
is timed with ``perf_counter_ns`` around ``session.run`` alone. The harness's own cost
(two timer reads and one Python call with the same arguments) is measured the same way
around a no-op and reported as ``overhead_ns`` (median). Memory: ``peak_rss_bytes`` is
the process high-water mark (VmHWM, else ``ru_maxrss``) after the runs, so it includes
the interpreter, numpy and onnxruntime; the ``baseline`` mode measures exactly that part.

Paired: every model's session in this one process; after ``warmup`` untimed calls each,
``rounds`` rounds, each timing a block of calls of every model in a shuffled order: at
least ``calls`` calls, and enough that the first model's block lasts ``block_ms`` (timer
and scheduler noise fade against it). One thread: the block is timed on this thread's CPU
clock, which onnxruntime's work runs on and which time the host gives other processes
does not advance. More threads: the work spreads over onnxruntime's pool (whose spinning
also burns CPU), so on the wall clock. Adjacent blocks see the same machine, so per-round
ratios cancel slow drifts of a shared host that separate processes each sample
differently.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import resource
import sys
import time

import numpy as np
import onnxruntime as ort

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def peak_rss_bytes() -> int:
    """High-water mark of this process's resident set."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def cpu_model() -> str:
    """The CPU's marketing name (x86) or board model (Raspberry Pi), else the machine."""
    try:
        with open("/proc/cpuinfo") as f:
            fields = dict(
                (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in f) if v
            )
    except OSError:
        fields = {}
    return fields.get("model name") or fields.get("Model") or platform.processor() or "unknown"


def describe_platform() -> dict:
    return {
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "system": platform.system(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": ort.__version__,
        "provider": "CPUExecutionProvider",
    }


def make_session(spec: dict) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(spec["threads"])
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = _OPT_LEVELS[spec.get("opt_level", "all")]
    options.log_severity_level = 3
    return ort.InferenceSession(spec["model"], options, providers=["CPUExecutionProvider"])


def draw_inputs(inputs: list, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, dtype, dims in inputs:
        kind = np.dtype(dtype)
        if kind.kind == "f":
            feeds[name] = rng.standard_normal(dims).astype(kind)
        else:
            feeds[name] = rng.integers(0, 2, size=dims).astype(kind)
    return feeds


def time_calls(call, feeds: dict, runs: int) -> list[int]:
    clock = time.perf_counter_ns
    times = []
    for _ in range(runs):
        t0 = clock()
        call(None, feeds)
        times.append(clock() - t0)
    return times


def _noop(_outputs, _feeds) -> None:
    return None


def measure(spec: dict) -> dict:
    feeds = draw_inputs(spec["inputs"], int(spec.get("seed", 0)))
    session = make_session(spec)
    for _ in range(int(spec["warmup"])):
        session.run(None, feeds)
    times = time_calls(session.run, feeds, int(spec["runs"]))
    overhead = sorted(time_calls(_noop, feeds, max(1000, int(spec["runs"]))))
    return {
        "times_ns": times,
        "overhead_ns": overhead[len(overhead) // 2],
        "peak_rss_bytes": peak_rss_bytes(),
        "opt_level": spec.get("opt_level", "all"),
        "platform": describe_platform(),
    }


def paired_rounds(
    calls: list, per_block: int, rounds: int, clock=time.thread_time_ns, seed: int = 0
) -> list[list[float]]:
    """ns per call of each of ``calls`` (no-argument functions) in each of ``rounds`` rounds:
    a block of ``per_block`` calls of each, in a freshly shuffled order every round."""
    ns_per_call: list[list[float]] = [[] for _ in calls]
    order = list(range(len(calls)))
    shuffle = random.Random(seed).shuffle
    for _ in range(rounds):
        shuffle(order)
        for i in order:
            t0 = clock()
            for _ in range(per_block):
                calls[i]()
            ns_per_call[i].append((clock() - t0) / per_block)
    return ns_per_call


def block_size(call, calls: int, block_ms: float, clock=time.thread_time_ns) -> int:
    """At least ``calls``, and enough calls of ``call`` to last ``block_ms`` on ``clock``."""
    t0 = clock()
    call()
    once_ns = max(clock() - t0, 1)
    return max(calls, math.ceil(block_ms * 1e6 / once_ns))


def measure_paired(spec: dict) -> dict:
    threads = int(spec["threads"])
    clock = time.thread_time_ns if threads == 1 else time.perf_counter_ns
    seed = int(spec.get("seed", 0))
    calls = []
    for m in spec["models"]:
        session = make_session({**spec, "model": m["model"]})
        feeds = draw_inputs(m["inputs"], seed)
        calls.append(lambda s=session, f=feeds: s.run(None, f))
    for call in calls:
        for _ in range(int(spec["warmup"])):
            call()
    per_block = block_size(calls[0], int(spec["calls"]), float(spec["block_ms"]), clock)
    return {
        "ns_per_call": paired_rounds(calls, per_block, int(spec["rounds"]), clock, seed),
        "calls": per_block,
        "clock": "thread-cpu" if threads == 1 else "wall",
        "platform": describe_platform(),
    }


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    try:
        if spec["mode"] == "baseline":
            result = {"peak_rss_bytes": peak_rss_bytes(), "platform": describe_platform()}
        elif spec["mode"] == "paired":
            result = measure_paired(spec)
        else:
            result = measure(spec)
    except Exception as e:  # report any failure as JSON: the parent turns it into an error
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

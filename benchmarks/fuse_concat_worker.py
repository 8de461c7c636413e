"""Time model variants against each other in one process; the timing loop of ``fuse_concat``.

    python benchmarks/fuse_concat_worker.py JOBS.json     # what ``fuse_concat --emulated`` runs

Imports only the standard library, numpy and onnxruntime, so this same file runs under the
emulated Cortex-A72 python of ``dsp_deploy.emulator`` (which has nothing else installed).
``JOBS.json`` is a list of ``{"name", "batch", "rounds", "seconds", "variants": {key: path},
"parity": {key: path}}``; the first variant is the reference, and ``parity`` holds the same
variants with their logits as extra outputs, run once beside the timed ones.

Per job: one onnxruntime session per variant (CPU provider, one intra- and one inter-op
thread; its optimised graph is saved as ``<path>.opt.onnx``), a few untimed calls each
(qemu translates code on first use), then ``rounds`` shuffled rounds of ``calls`` calls per
variant, timed on the calling thread's CPU clock (time the host gives other work does not
count), in the loop ``bench`` runs (``dsp_deploy/bench/worker.py``); ``calls`` makes one
variant's share of a round about ``seconds`` of CPU. Prints the machine as one JSON line,
then one JSON line per job: µs per call of every variant in every
round, and max |Δ| of every variant's outputs and logits against the reference's.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

# dsp_deploy/bench/worker.py by path: it too imports only numpy + onnxruntime
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "dsp_deploy" / "bench"))
import worker  # noqa: E402

LENGTH = 150  # GunPoint series length


def cpu_us(fn: Callable[[], object], calls: int) -> float:
    """µs of this thread's CPU time per call of ``fn``."""
    start = time.thread_time_ns()
    for _ in range(calls):
        fn()
    return (time.thread_time_ns() - start) / calls / 1e3


def paired_rounds(
    fns: dict[str, Callable[[], object]], calls: int, rounds: int
) -> dict[str, list[float]]:
    """µs per call of each function in each of ``rounds`` shuffled rounds (``bench``'s loop)."""
    for fn in fns.values():
        cpu_us(fn, max(1, calls // 2))
    ns = worker.paired_rounds(list(fns.values()), calls, rounds)
    return {k: [t / 1e3 for t in v] for k, v in zip(fns, ns, strict=True)}


def session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.optimized_model_filepath = f"{path}.opt.onnx"  # which kernels this CPU got
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def machine() -> dict[str, object]:
    """What ran the timings; under the emulator, the fake Pi 4's /proc/cpuinfo."""
    text = Path("/proc/cpuinfo").read_text()
    fields = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in text.splitlines())
    )
    return {
        "machine": platform.machine(),
        "cpu": fields.get("Model") or fields.get("model name") or platform.processor(),
        "cpu_count": os.cpu_count(),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "threads": 1,
    }


def max_abs_diff(paths: dict[str, str], x: np.ndarray) -> dict[str, float]:
    """Max |Δ| of every model's outputs against the first model's, on ``x``."""
    outputs = {}
    for key, path in paths.items():
        s = session(path)
        outputs[key] = s.run(None, {s.get_inputs()[0].name: x})
    reference = outputs[next(iter(outputs))]
    return {
        k: max(float(np.abs(y - z).max()) for y, z in zip(ys, reference, strict=True))
        for k, ys in outputs.items()
    }


def run_job(job: dict) -> dict[str, object]:
    x = np.random.default_rng(3).standard_normal((job["batch"], 1, LENGTH)).astype(np.float32)
    fns = {}
    for key, path in job["variants"].items():
        s = session(path)
        feed = {s.get_inputs()[0].name: x}
        fns[key] = lambda s=s, feed=feed: s.run(None, feed)
        fns[key]()  # qemu translates the kernels' code on their first call
    probe = cpu_us(fns[next(iter(fns))], 1)
    calls = max(1, round(job["seconds"] * 1e6 / probe))
    start = time.perf_counter()
    times = paired_rounds(fns, calls, job["rounds"])
    return {
        "name": job["name"],
        "batch": job["batch"],
        "rounds": job["rounds"],
        "calls_per_round": calls,
        "wall_s": round(time.perf_counter() - start, 1),
        "us_per_round": {k: [round(t, 1) for t in v] for k, v in times.items()},
        "max_abs_diff": max_abs_diff(job["parity"], x),
    }


def main() -> None:
    jobs = json.loads(Path(sys.argv[1]).read_text())
    print(json.dumps(machine()), flush=True)
    for job in jobs:
        print(f"{job['name']} batch {job['batch']} ...", file=sys.stderr, flush=True)
        print(json.dumps(run_job(job)), flush=True)


if __name__ == "__main__":
    main()

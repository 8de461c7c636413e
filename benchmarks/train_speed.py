"""Milliseconds per training step, dense vs DSP and fast vs plain kernels, LITE and Inception.

One step = forward (with taps) + CE [+ DSP penalty] + backward + Adam, batch 64, L = 150,
2 classes, random data. Steps are timed after warm-up and the median is reported. Four
variants per architecture — {plain, fast} kernels × {dense, DSP} — alternate in rounds so
that machine load hits all alike; "plain" is the nn.Conv1d/oneDNN path that the ONNX
export traces (``use_fast_kernels(net, False)``), "fast" the default training path
(:mod:`dsp_deploy.nets.fast`). The ratios between variants of one run are the load-robust
numbers; the absolute ones move with the machine's load, recorded before and after.
The DSP loss must cost < 10% extra (issue 3). References measured on this machine with a
plain PyTorch port: LITE ≈ 113 ms/step, Inception ≈ 576 ms/step (2 threads).

Each thread configuration — ``THREADS[:OMP_WAIT_POLICY]``, e.g. ``2``, ``2:PASSIVE``,
``1`` — runs in a fresh process, because OpenMP reads its environment when torch loads:
on this shared 2-core machine, 2 threads that spin-wait at every barrier (libgomp's
default) lose their core to other processes between parallel regions.

    .venv/bin/python benchmarks/train_speed.py [--config 2 --config 2:PASSIVE --config 1]
        [--steps 10] [--rounds 3] [--arch lite --arch inception] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dsp_deploy.archs import get_arch
from dsp_deploy.nets.layers import use_fast_kernels
from dsp_deploy.train.sparsity import dsp_penalty

BATCH, LENGTH, CLASSES = 64, 150, 2
VARIANTS: tuple[tuple[str, bool, bool], ...] = (  # (name, fast kernels, DSP loss)
    ("plain_dense", False, False),
    ("plain_dsp", False, True),
    ("fast_dense", True, False),
    ("fast_dsp", True, True),
)


def step_times(
    arch: str, *, fast: bool, sparsity: float, steps: int, warmup: int = 2
) -> list[float]:
    spec = get_arch(arch)
    torch.manual_seed(0)
    net = use_fast_kernels(spec.build(CLASSES).train(), fast)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = torch.randn(BATCH, 1, LENGTH), torch.randint(0, CLASSES, (BATCH,))
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        logits, taps = net.forward_with_taps(x)
        loss = F.cross_entropy(logits, y) + dsp_penalty(taps, spec.layer_weights, sparsity)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    return times


def penalty_times(arch: str, steps: int) -> list[float]:
    """The DSP term alone (forward + backward on tap-sized maps): a load-robust bound."""
    spec = get_arch(arch)
    torch.manual_seed(0)
    with torch.no_grad():
        _, taps = spec.build(CLASSES).forward_with_taps(torch.randn(BATCH, 1, LENGTH))
    leaves = [t.clone().requires_grad_() for t in taps]
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        dsp_penalty(leaves, spec.layer_weights, spec.sparsity).backward()
        times.append((time.perf_counter() - start) * 1000)
    return times


def measure(arch: str, steps: int, rounds: int) -> dict[str, object]:
    lam = get_arch(arch).sparsity
    samples: dict[str, list[float]] = {name: [] for name, _, _ in VARIANTS}
    for _ in range(rounds):
        for name, fast, dsp in VARIANTS:
            samples[name] += step_times(arch, fast=fast, sparsity=lam if dsp else 0.0, steps=steps)
    ms = {name: statistics.median(v) for name, v in samples.items()}
    penalty = statistics.median(penalty_times(arch, 3 * steps))
    return {
        **{f"{name}_ms": round(v, 2) for name, v in ms.items()},
        "fast_dsp_overhead": round(ms["fast_dsp"] / ms["fast_dense"] - 1, 4),
        "plain_dsp_overhead": round(ms["plain_dsp"] / ms["plain_dense"] - 1, 4),
        "speedup_dense": round(ms["plain_dense"] / ms["fast_dense"], 3),
        "speedup_dsp": round(ms["plain_dsp"] / ms["fast_dsp"], 3),
        "penalty_alone_ms": round(penalty, 2),
        "penalty_alone_share": round(penalty / ms["fast_dense"], 4),
        "sparsity": lam,
        "steps_per_variant": len(samples["fast_dense"]),
    }


def worker(archs: list[str], threads: int, steps: int, rounds: int) -> dict[str, object]:
    """One configuration, in this process: torch's threads set, OpenMP's env already read."""
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    results = {arch: measure(arch, steps, rounds) for arch in archs}
    return {
        "threads": threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "load_avg_before": [round(v, 2) for v in load_before],
        "load_avg_after": [round(v, 2) for v in os.getloadavg()],
        "results": results,
    }


def run_config(config: str, args: argparse.Namespace) -> dict[str, object]:
    threads, _, policy = config.partition(":")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    command = [sys.executable, __file__, "--worker", "--threads", threads]
    command += ["--steps", str(args.steps), "--rounds", str(args.rounds)]
    for arch in args.arch:
        command += ["--arch", arch]
    done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def summary(run: dict, arch: str) -> str:
    r = run["results"][arch]
    return (
        f"{arch} @ {run['threads']} thr, OMP {run['omp_wait_policy']}: "
        f"fast {r['fast_dense_ms']:.1f} / DSP {r['fast_dsp_ms']:.1f} ms "
        f"({r['fast_dsp_overhead']:+.1%}); "
        f"plain {r['plain_dense_ms']:.1f} / DSP {r['plain_dsp_ms']:.1f} ms; "
        f"speed-up ×{r['speedup_dense']:.2f} dense, ×{r['speedup_dsp']:.2f} DSP; "
        f"load {run['load_avg_before'][0]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", help="THREADS[:OMP_WAIT_POLICY]")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--arch", action="append", choices=("lite", "inception"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "train_speed.json"
    )
    args = parser.parse_args()
    args.arch = args.arch or ["lite", "inception"]
    if args.worker:
        print(json.dumps(worker(args.arch, args.threads, args.steps, args.rounds)))
        return
    runs = []
    for config in args.config or ["2", "2:PASSIVE", "1"]:
        runs.append(run_config(config, args))
        for arch in args.arch:
            print(summary(runs[-1], arch), flush=True)
    record = {
        "batch": BATCH,
        "length": LENGTH,
        "runs": runs,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
        },
        "references_ms": {"lite": 113, "inception": 576},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()

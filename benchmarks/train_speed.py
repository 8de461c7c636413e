"""Milliseconds per training step, dense vs DSP, for LITE and InceptionTime.

One step = forward (with taps) + CE [+ DSP penalty] + backward + Adam, batch 64, L = 150,
2 threads, 2 classes, random data. Steps are timed after warm-up and the median is
reported; dense and DSP alternate in rounds so that machine load hits both alike. The
DSP loss must cost < 10% extra (issue 3). References measured on this machine with a
plain PyTorch port: LITE ≈ 113 ms/step, Inception ≈ 576 ms/step.

    .venv/bin/python benchmarks/train_speed.py [--steps 20] [--rounds 3] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dsp_deploy.nets.registry import get_arch
from dsp_deploy.train.sparsity import dsp_penalty

BATCH, LENGTH, THREADS, CLASSES = 64, 150, 2, 2


def step_times(arch: str, sparsity: float, steps: int, warmup: int = 3) -> list[float]:
    spec = get_arch(arch)
    torch.manual_seed(0)
    net = spec.build(CLASSES).train()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "train_speed.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    results = {}
    for arch in ("lite", "inception"):
        lam = get_arch(arch).sparsity
        samples: dict[str, list[float]] = {"dense": [], "dsp": []}
        for _ in range(args.rounds):
            samples["dense"] += step_times(arch, 0.0, args.steps)
            samples["dsp"] += step_times(arch, lam, args.steps)
        dense, dsp = (statistics.median(samples[k]) for k in ("dense", "dsp"))
        penalty = statistics.median(penalty_times(arch, 3 * args.steps))
        results[arch] = {
            "dense_ms": round(dense, 2),
            "dsp_ms": round(dsp, 2),
            "overhead": round(dsp / dense - 1, 4),
            "penalty_alone_ms": round(penalty, 2),
            "penalty_alone_share": round(penalty / dense, 4),
            "sparsity": lam,
            "steps": len(samples["dense"]),
        }
        print(
            f"{arch}: dense {dense:.1f} ms/step, DSP {dsp:.1f} ms/step ({dsp / dense - 1:+.1%}); "
            f"penalty alone {penalty:.1f} ms ({penalty / dense:.1%} of a dense step)"
        )
    record = {
        "batch": BATCH,
        "length": LENGTH,
        "threads": THREADS,
        "results": results,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
            "torch": torch.__version__,
        },
        "references_ms": {"lite": 113, "inception": 576},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()

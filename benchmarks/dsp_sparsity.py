"""How much does the DSP loss sparsify, and what does it cost in accuracy?

For each (dataset, arch, λ) this trains one network with the papers' schedule and, at
every checkpoint epoch, records on the training set the channels that are *exactly* zero
after their ReLU (removable with no change to the outputs: what ``compress --criterion
dead`` deletes) and the channels the paper's keep rule would keep, plus train and test
accuracy. λ = 0 is the dense baseline. Checkpoints before the last epoch are taken on the
weights of that epoch; the last one on the best-train-loss weights the model keeps.

Results are appended, one JSON line per finished run, to
``benchmarks/results/dsp_sparsity.jsonl``; a rerun skips runs already there, so the script
can be stopped and resumed. ``--table`` prints the markdown summary of what is there.

    python benchmarks/dsp_sparsity.py --datasets GunPoint ItalyPowerDemand ArrowHead \
        --archs lite inception --epochs 1500 --checkpoints 300 1500 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from dsp_deploy.archs import get_arch
from dsp_deploy.data import load_train_test
from dsp_deploy.train.loop import TrainConfig, fit, predict_proba, seed_torch
from dsp_deploy.train.protocol import analyse, keep_groups, keep_indices

RESULTS = Path(__file__).parent / "results" / "dsp_sparsity.jsonl"


def machine() -> dict[str, object]:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "machine": platform.machine(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def snapshot(net, arch, train, test) -> dict[str, object]:
    """Dead channels, paper-rule keeps and accuracies of ``net`` as it is now."""
    analysis = analyse(net, train.X)
    keep = keep_indices(analysis, arch.min_count, keep_groups(net))
    out = {
        "channels": list(analysis.channel_counts),
        "dead": list(analysis.dead_counts),
        "rule_keeps": [len(k) for k in keep],
        "train_accuracy": float(np.mean(predict_proba(net, train.X).argmax(1) == train.y)),
        "test_accuracy": float(np.mean(predict_proba(net, test.X).argmax(1) == test.y)),
    }
    net.train()
    return out


def run(
    dataset: str, arch_name: str, lam: float, epochs: int, checkpoints: list[int], seed: int
) -> dict[str, object]:
    train, test = load_train_test(dataset)
    arch = get_arch(arch_name)
    seed_torch(seed)
    net = arch.build(len(train.classes))
    config = TrainConfig(epochs=epochs, sparsity=lam, layer_weights=arch.layer_weights, seed=seed)
    snaps: dict[str, object] = {}

    def progress(record) -> None:
        if record.epoch in checkpoints and record.epoch != epochs:
            snaps[str(record.epoch)] = snapshot(net, arch, train, test)

    start = time.perf_counter()
    result = fit(net, train.X, train.y, config, progress=progress)
    snaps[str(epochs)] = snapshot(net, arch, train, test)
    return {
        "dataset": train.name,
        "arch": arch_name,
        "sparsity": lam,
        "epochs": epochs,
        "seed": seed,
        "n_train": len(train.y),
        "length": int(train.X.shape[-1]),
        "best_epoch": result.best_epoch,
        "seconds": round(time.perf_counter() - start, 1),
        "checkpoints": snaps,
        "platform": machine(),
    }


def done_keys(path: Path) -> set[tuple]:
    if not path.exists():
        return set()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["dataset"], r["arch"], r["sparsity"], r["epochs"], r["seed"]) for r in rows}


def append(path: Path, row: dict[str, object]) -> None:
    # One write of one line: a killed run loses at most the row it was working on.
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = [
        "| dataset | arch | λ | epoch | test acc | dead / channels per tap | "
        "paper rule keeps | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for epoch, s in sorted(r["checkpoints"].items(), key=lambda kv: int(kv[0])):
            dead = ", ".join(f"{d}/{c}" for d, c in zip(s["dead"], s["channels"], strict=True))
            keeps = ", ".join(map(str, s["rule_keeps"]))
            lines.append(
                f"| {r['dataset']} | {r['arch']} | {r['sparsity']:g} | {epoch} | "
                f"{s['test_accuracy']:.3f} | {dead} | {keeps} | {r['seconds']} |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["GunPoint", "ItalyPowerDemand", "ArrowHead"])
    p.add_argument("--archs", nargs="+", default=["lite", "inception"])
    p.add_argument(
        "--sparsities",
        nargs="+",
        type=float,
        default=None,
        help="λ values; default: 0 (dense) and the paper's λ of each arch",
    )
    p.add_argument("--epochs", type=int, default=1500)
    p.add_argument("--checkpoints", nargs="+", type=int, default=[300, 1500])
    p.add_argument("--seed", type=int, default=9409)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--table", action="store_true", help="print the summary table and exit")
    args = p.parse_args()
    if args.table:
        print(table(args.out))
        return
    torch.set_num_threads(args.threads)
    for dataset in args.datasets:
        for arch in args.archs:
            lams = args.sparsities or [0.0, get_arch(arch).sparsity]
            for lam in lams:
                key = (dataset, arch, lam, args.epochs, args.seed)
                done = done_keys(args.out)  # re-read: another process may have done it
                if any(k[1:] == key[1:] and k[0].lower() == dataset.lower() for k in done):
                    continue
                row = run(dataset, arch, lam, args.epochs, args.checkpoints, args.seed)
                append(args.out, row)
                print(
                    json.dumps({k: row[k] for k in ("dataset", "arch", "sparsity", "seconds")}),
                    flush=True,
                )


if __name__ == "__main__":
    main()

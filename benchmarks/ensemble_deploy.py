"""LITETime on the deploy side: the sweep's three seeds combined into one ONNX ensemble
per variant, compressed and benched, for the GunPoint family.

For each dataset and variant whose three seed models the 3-seed LITE sweep kept
(``benchmarks/sweeps/lite-cpu-small/models/<Dataset>__lite__<variant>__<seed>.final.onnx``,
written with ``--keep-models``), this does what a user deploying LITETime does:

1. ``dsp-deploy ensemble`` the three members into one model (the mean of their
   probabilities; the command verifies it against the members before writing);
2. checks the ensemble's test accuracy (onnxruntime, the official test split) against
   the accuracy of the averaged stored per-task probabilities the sweep report reads
   (``probs/<key>.npz``): the deploy-side file must give the report's number;
3. ``dsp-deploy compress`` it with the lossless pass (``--criterion dead``; the training
   split as calibration set), which must reproduce every calibration output;
4. benches every variant's compressed ensemble against the dense ensemble of the same
   dataset in one paired run (x86, one thread, batch 1 and 64; ``dsp-deploy bench``).

    python benchmarks/ensemble_deploy.py                       # the GunPoint family
    python benchmarks/ensemble_deploy.py --datasets GunPoint --no-bench

Rows: ``benchmarks/results/ensemble_deploy.{json,md}`` (rewritten each run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SWEEP = HERE / "sweeps" / "lite-cpu-small"
RESULTS = HERE / "results" / "ensemble_deploy"  # --out overrides
SEEDS = (9409, 3804, 3952)
FAMILY = ("GunPoint", "GunPointAgeSpan", "GunPointMaleVersusFemale", "GunPointOldVersusYoung")
VARIANTS = (
    "dense", "dense-onnx-auto", "dsp-onnx", "dsp-onnx-auto", "dsp-onnx-rule", "dsp-exact", "dsp-retrain",
    "narrow",
)  # fmt: skip


def members(dataset: str, variant: str) -> list[Path] | None:
    """The three seed models of one (dataset, variant), or None if any is missing."""
    paths = [SWEEP / "models" / f"{dataset}__lite__{variant}__{s}.final.onnx" for s in SEEDS]
    return paths if all(p.exists() for p in paths) else None


def cli(*args: str) -> dict:
    """Run ``dsp-deploy ARGS --json`` as a user would; its JSON object."""
    command = [sys.executable, "-m", "dsp_deploy", *args, "--json"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])}: exit {done.returncode}: {done.stdout[-400:]}")
    return json.loads(done.stdout)


def stored_accuracy(dataset: str, variant: str) -> float:
    """Accuracy of the averaged stored probabilities (what the sweep report computes)."""
    probs, labels = [], None
    for seed in SEEDS:
        with np.load(SWEEP / "probs" / f"{dataset}__lite__{variant}__{seed}.npz") as data:
            probs.append(data["probabilities"])
            labels = data["labels"]
    return float(np.mean(np.mean(probs, axis=0).argmax(axis=1) == labels))


def calibration(dataset: str, folder: Path) -> Path:
    """The training split as a calibration file (the members' own normalisation)."""
    from dsp_deploy.data import load_train_test

    train, _ = load_train_test(dataset)
    path = folder / f"{dataset}.calib.npz"
    np.savez(path, x=train.X, y=train.y)
    return path


def one(dataset: str, variant: str, folder: Path, calib: Path) -> dict | None:
    paths = members(dataset, variant)
    if paths is None:
        return None
    ensemble = folder / f"{dataset}-{variant}.onnx"
    built = cli("ensemble", *map(str, paths), "-o", str(ensemble))
    evaluated = cli("eval", str(ensemble), "-d", dataset)
    pruned = folder / f"{dataset}-{variant}.dead.onnx"
    compressed = cli("compress", str(ensemble), "--calib", str(calib), "-o", str(pruned))
    return {
        "dataset": dataset,
        "variant": variant,
        "params": built["params"],
        "macs": built["macs"],
        "accuracy_onnx": evaluated["accuracy"],
        "accuracy_stored": stored_accuracy(dataset, variant),
        "params_compressed": compressed["params"][1],
        "macs_compressed": compressed["macs"][1],
        "verified": compressed["verified"],
        "file": str(pruned),
    }


def bench(rows: list[dict]) -> None:
    """Each variant's compressed ensemble against the dense one, paired, in one run."""
    dense = next((r for r in rows if r["variant"] == "dense"), None)
    if dense is None or len(rows) < 2:
        return
    files = [dense["file"], *(r["file"] for r in rows if r is not dense)]
    report = cli("bench", *files, "--batch", "1", "--batch", "64", "--threads", "1")
    for c in report["comparison"]:
        row = next(r for r in rows if r["file"] == c["model"])
        row[f"latency_ratio_b{c['batch']}"] = round(c["latency_ratio"], 3)
        row["macs_ratio"] = round(c["macs_ratio"], 3)


def markdown(rows: list[dict]) -> str:
    lines = [
        "| dataset | variant | params | MACs | compressed params | test acc (ONNX) "
        "| test acc (stored probs) | lossless check | MACs / dense | latency / dense b1 | b64 |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['variant']} | {r['params']:,} | {r['macs']:,} "
            f"| {r['params_compressed']:,} | {r['accuracy_onnx']:.4f} "
            f"| {r['accuracy_stored']:.4f} | {'pass' if r['verified'] else 'fail'} "
            f"| {r.get('macs_ratio', '–')} | {r.get('latency_ratio_b1', '–')} "
            f"| {r.get('latency_ratio_b64', '–')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(FAMILY))
    parser.add_argument("--no-bench", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results stem")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for dataset in args.datasets.split(","):
            calib = calibration(dataset, folder)
            found = [one(dataset, v, folder, calib) for v in VARIANTS]
            found = [r for r in found if r is not None]
            if not args.no_bench:
                bench(found)
            rows += found
            print(f"{dataset}: {len(found)} variants with all {len(SEEDS)} seeds", flush=True)
        for r in rows:
            r["file"] = Path(r["file"]).name
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows))
    print(f"wrote {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

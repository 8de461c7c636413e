"""Build the post-training model zoo: finished models to compress and quantize, no retraining.

Every entry is trained by the product's own ``dsp-deploy train`` under the ``cpu-small``
budget (``dsp_experiments.protocols``: about 1500 optimiser steps, seed 9409), once dense
(λ = 0) and once with the paper's DSP loss (λ = 1e-5), and exported to ONNX with its
metadata. Beside each dataset's models the zoo keeps the arrays a user would have:

    benchmarks/zoo/models/<arch>-<kind>-<Dataset>.onnx     kind: dense | dsp
    benchmarks/zoo/data/<Dataset>.train.npz                x (N, C, L) z-normalised, y, classes
    benchmarks/zoo/data/<Dataset>.test.npz                 the official test split, same form
    benchmarks/zoo/manifest.csv                            one row per model: its exact command

The train split is the calibration set (what ``compress``/``quantize`` see); the test split
is only for measuring accuracy. LITE covers the 30 ``cpu-small`` LITE datasets with the
smallest arrays (so that the zoo stays small enough to commit); Inception the 10
``cpu-small`` Inception datasets that are cheapest to train.

Resumable: a model that exists is skipped, so a killed run continues where it stopped::

    python benchmarks/zoo/build.py                 # everything (≈ 2 core-hours here)
    python benchmarks/zoo/build.py --arch lite --jobs 2
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from dsp_deploy.data import load_train_test
from dsp_experiments.protocols import get_protocol

ZOO = Path(__file__).resolve().parent
SEED = 9409
SPARSITY = {"dense": 0.0, "dsp": 1e-5}
LITE_DATASETS = (
    "Adiac ArrowHead BME BeetleFly BirdChicken CBF Chinatown Coffee DiatomSizeReduction "
    "DistalPhalanxOutlineAgeGroup DistalPhalanxOutlineCorrect DistalPhalanxTW DodgerLoopGame "
    "DodgerLoopWeekend ECG200 ECGFiveDays FaceFour Fungi GunPoint GunPointAgeSpan "
    "GunPointMaleVersusFemale GunPointOldVersusYoung ItalyPowerDemand MedicalImages "
    "MiddlePhalanxOutlineAgeGroup MiddlePhalanxOutlineCorrect MiddlePhalanxTW MoteStrain "
    "Plane PowerCons"
).split()
INCEPTION_DATASETS = (  # those whose test half can certify a 2-point gate first
    "DiatomSizeReduction ProximalPhalanxOutlineCorrect Chinatown ItalyPowerDemand MoteStrain "
    "ECGFiveDays DodgerLoopWeekend DodgerLoopGame BME ProximalPhalanxOutlineAgeGroup"
).split()
DATASETS = {"lite": LITE_DATASETS, "inception": INCEPTION_DATASETS}
FIELDS = ["model", "arch", "kind", "dataset", "sparsity", "epochs", "seed", "seconds", "command"]


def model_path(arch: str, kind: str, dataset: str) -> Path:
    return ZOO / "models" / f"{arch}-{kind}-{dataset}.onnx"


def data_path(dataset: str, split: str) -> Path:
    return ZOO / "data" / f"{dataset}.{split}.npz"


def write_data(dataset: str) -> int:
    """Write both splits once; returns the number of training series."""
    train_file, test_file = data_path(dataset, "train"), data_path(dataset, "test")
    if not (train_file.exists() and test_file.exists()):
        train, test = load_train_test(dataset)
        train_file.parent.mkdir(parents=True, exist_ok=True)
        for split, path in ((train, train_file), (test, test_file)):
            tmp = path.with_name(path.name + ".tmp.npz")
            np.savez_compressed(tmp, x=split.X, y=split.y, classes=np.array(split.classes))
            os.replace(tmp, path)
    return int(np.load(train_file)["y"].shape[0])


def command(arch: str, kind: str, dataset: str, epochs: int) -> list[str]:
    return [
        "dsp-deploy", "train", "--arch", arch, "-d", dataset,
        "-o", str(model_path(arch, kind, dataset).relative_to(ZOO.parent.parent)),
        "--epochs", str(epochs), "--sparsity", str(SPARSITY[kind]), "--seed", str(SEED),
        "--threads", "1", "--device", "cpu", "--quiet",
    ]  # fmt: skip


def build_one(arch: str, kind: str, dataset: str) -> dict[str, object] | None:
    target = model_path(arch, kind, dataset)
    if target.exists():
        return None
    epochs = get_protocol("cpu-small").epochs_for(write_data(dataset))
    argv = command(arch, kind, dataset, epochs)
    exe = str(Path(sys.executable).with_name("dsp-deploy"))
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    done = subprocess.run([exe, *argv[1:]], cwd=ZOO.parent.parent, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        print(f"FAILED {target.name}: {done.stderr.strip()[-400:]}", flush=True)
        return None
    print(f"{target.name}: {epochs} epochs, {seconds:.0f} s", flush=True)
    return {
        "model": target.name, "arch": arch, "kind": kind, "dataset": dataset,
        "sparsity": SPARSITY[kind], "epochs": epochs, "seed": SEED,
        "seconds": round(seconds, 1), "command": shlex.join(argv),
    }  # fmt: skip


def append_manifest(row: dict[str, object]) -> None:
    manifest = ZOO / "manifest.csv"
    new = not manifest.exists()
    with manifest.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(DATASETS), action="append")
    parser.add_argument("--kind", choices=sorted(SPARSITY), action="append")
    parser.add_argument("--jobs", type=int, default=2, help="trainings run at once")
    args = parser.parse_args()
    work = [
        (arch, kind, dataset)
        for arch in args.arch or ["lite", "inception"]
        for dataset in DATASETS[arch]
        for kind in args.kind or ["dense", "dsp"]
    ]
    for dataset in dict.fromkeys(d for _, _, d in work):
        write_data(dataset)
    with ThreadPoolExecutor(args.jobs) as pool:
        for future in as_completed([pool.submit(build_one, *job) for job in work]):
            if (row := future.result()) is not None:
                append_manifest(row)  # as each finishes: a killed run loses no row


if __name__ == "__main__":
    main()

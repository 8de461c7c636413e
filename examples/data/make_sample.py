"""Write ``gunpoint_sample.csv`` (+ its labels): GunPoint test series as recorded.

    python examples/data/make_sample.py     # needs the dataset: aeon installed, or [ucr]

Six series of each class from the official test split, raw (not normalised: the
classifier does that, as the model's metadata says), values written so that they read
back as the same float32 numbers.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from dsp_deploy.data import load_dataset

HERE = Path(__file__).resolve().parent
PER_CLASS = 6


def main() -> None:
    test = load_dataset("GunPoint", "test", normalise=False)
    picked = sorted(
        i for k in range(len(test.classes)) for i in np.flatnonzero(test.y == k)[:PER_CLASS]
    )
    length = test.X.shape[-1]
    with open(HERE / "gunpoint_sample.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", *(f"t{t}" for t in range(length))])
        for i in picked:
            values = (np.format_float_positional(v, unique=True) for v in test.X[i, 0])
            writer.writerow([f"gunpoint-test-{i}", *values])
    with open(HERE / "gunpoint_sample_labels.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "label"])
        writer.writerows([f"gunpoint-test-{i}", test.classes[test.y[i]]] for i in picked)


if __name__ == "__main__":
    main()

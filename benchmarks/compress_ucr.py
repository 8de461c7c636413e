"""``compress`` on DSP-trained models from a sweep: ``dead`` (lossless) against ``dsp`` (the rule).

For every DSP-trained, not yet compressed model a sweep keeps
(``DIR/models/<dataset>__<arch>__dsp-onnx__<seed>.sparse.onnx``: the paper's λ, the
protocol's budget), this script runs what a user runs, ``compress`` with the CLI's
defaults and the training set as calibration data, once per criterion:

* ``dead`` — channels that are exactly zero on every calibration series; outputs unchanged;
* ``dsp``  — the paper's activation rule; outputs change. Once per compensation of the
  removed channels (``none``: the paper's masking, ``mean``, ``lstsq``: the default),
  so the default can be chosen on these numbers.

It records channels, params and MACs before and after, test accuracy of the model before
and after each (onnxruntime, the dataset's official test split), whether each passed its
gates (``verified``; the CLI writes nothing when it fails, unless ``--force``), and the
wall time of each ``compress`` call on one thread.

    .venv/bin/python benchmarks/compress_ucr.py --sweep /path/to/sweep [--archs lite,inception]

Results: ``benchmarks/results/compress_ucr.csv`` (one row per model and criterion) and
``compress_ucr.md`` (the table, and means per arch and criterion). Each row names the host.
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT = "lstsq"  # the CLI's default compensation
RUNS = (("dead", DEFAULT), ("dsp", "none"), ("dsp", "mean"), ("dsp", DEFAULT))
RESULTS = HERE / "results"
COLUMNS = (
    "dataset",
    "arch",
    "seed",
    "criterion",
    "compensation",
    "n_train",
    "length",
    "channels",
    "channels_after",
    "params",
    "params_after",
    "macs",
    "macs_after",
    "accuracy",
    "accuracy_after",
    "agreement",
    "verified",
    "failures",
    "compress_seconds",
    "host",
)


def _predict(model, X: np.ndarray) -> np.ndarray:
    from dsp_deploy.inference import run_model
    from dsp_deploy.train.export import INPUT_NAME

    (probs,) = run_model(model, {INPUT_NAME: X}, batch_size=256, threads=1)
    return probs.argmax(axis=1)


def measure(path: Path) -> list[dict]:
    """The rows (dead, then dsp under each compensation) of one sparse model."""
    from dsp_deploy.compress import compress
    from dsp_deploy.data import load_train_test
    from dsp_deploy.io import Calibration, load_model
    from dsp_deploy.options import CompressOptions
    from dsp_deploy.train.export import INPUT_NAME

    dataset, arch, _, seed = path.name.removesuffix(".sparse.onnx").split("__")
    train, test = load_train_test(dataset)
    model = load_model(path)
    before = _predict(model, test.X)
    calibration = Calibration({INPUT_NAME: train.X}, train.y)
    rows = []
    for criterion, compensation in RUNS:
        start = time.perf_counter()
        options = CompressOptions(criterion=criterion, compensation=compensation, threads=1)
        result = compress(model, calibration, options)
        seconds = time.perf_counter() - start
        after = _predict(result.model, test.X)
        rows.append(
            {
                "dataset": dataset,
                "arch": arch,
                "seed": seed,
                "criterion": criterion,
                "compensation": compensation if criterion == "dsp" else "",
                "n_train": len(train.y),
                "length": train.X.shape[-1],
                "channels": sum(layer.channels[0] for layer in result.layers),
                "channels_after": sum(layer.channels[1] for layer in result.layers),
                "params": result.params[0],
                "params_after": result.params[1],
                "macs": result.macs[0],
                "macs_after": result.macs[1],
                "accuracy": float(np.mean(before == test.y)),
                "accuracy_after": float(np.mean(after == test.y)),
                "agreement": float(np.mean(before == after)),
                "verified": result.verified,
                "failures": " | ".join(result.failures),
                "compress_seconds": round(seconds, 2),
                "host": platform.node(),
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    head = (
        "| dataset | arch | criterion | channels | params | MACs | accuracy | agreement "
        "| gates | seconds |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['dataset']} | {r['arch']} | {_name(r)} "
        f"| {r['channels']} → {r['channels_after']} "
        f"| {r['params']:,} → {r['params_after']:,} ({_drop(r, 'params')}) "
        f"| {_drop(r, 'macs')} | {r['accuracy']:.3f} → {r['accuracy_after']:.3f} "
        f"| {r['agreement']:.3f} | {'pass' if r['verified'] else 'fail'} "
        f"| {r['compress_seconds']:.1f} |"
        for r in rows
        if r["criterion"] == "dead" or r["compensation"] == DEFAULT
    ]
    summary = [
        "\n| arch | criterion (compensation) | models | params removed | MACs removed | Δ accuracy "
        "| gates passed | mean seconds |\n|---|---|---|---|---|---|---|---|"
    ]
    for arch in sorted({r["arch"] for r in rows}):
        for name in dict.fromkeys(_name(r) for r in rows):
            group = [r for r in rows if r["arch"] == arch and _name(r) == name]
            if not group:
                continue
            removed = np.mean([1 - r["params_after"] / r["params"] for r in group])
            macs = np.mean([1 - r["macs_after"] / r["macs"] for r in group])
            delta = np.mean([r["accuracy_after"] - r["accuracy"] for r in group])
            passed = sum(bool(r["verified"]) for r in group)
            secs = np.mean([r["compress_seconds"] for r in group])
            summary.append(
                f"| {arch} | {name} | {len(group)} | {removed:.1%} | {macs:.1%} "
                f"| {delta:+.4f} | {passed}/{len(group)} | {secs:.1f} |"
            )
    return head + "\n".join(lines) + "\n" + "\n".join(summary) + "\n"


def _name(row: dict) -> str:
    return "dead" if row["criterion"] == "dead" else f"dsp ({row['compensation']})"


def _drop(row: dict, key: str) -> str:
    return f"−{1 - row[f'{key}_after'] / row[key]:.0%}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", required=True, type=Path, help="a sweep's output folder")
    parser.add_argument("--archs", default="lite,inception", help="comma list")
    parser.add_argument("--out", type=Path, default=RESULTS / "compress_ucr")
    args = parser.parse_args(argv)
    archs = set(args.archs.split(","))
    paths = sorted(
        p
        for p in (args.sweep / "models").glob("*__dsp-onnx__*.sparse.onnx")
        if p.name.split("__")[1] in archs
    )
    if not paths:
        print(
            f"error: no *__dsp-onnx__*.sparse.onnx under {args.sweep / 'models'}", file=sys.stderr
        )
        return 2
    rows: list[dict] = []
    for i, path in enumerate(paths, 1):
        rows += measure(path)
        dead, dsp = rows[-len(RUNS)], rows[-1]
        print(
            f"[{i}/{len(paths)}] {path.name}: params {dead['params']} → dead "
            f"{dead['params_after']} / dsp {dsp['params_after']}, accuracy "
            f"{dead['accuracy']:.3f} → {dead['accuracy_after']:.3f} / {dsp['accuracy_after']:.3f}",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    args.out.with_suffix(".md").write_text(markdown(rows))
    print(f"wrote {args.out.with_suffix('.csv')} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

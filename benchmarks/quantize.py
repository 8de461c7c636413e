"""INT8 ``quantize`` over the shipped models (and zoo models): accuracy, size, x86 speed.

    PYTHONPATH=. python benchmarks/quantize.py                     # shipped GunPoint models
    PYTHONPATH=. python benchmarks/quantize.py --zoo 10            # + the first 10 zoo rows

For each model, float and lossless-pruned (``models/*.pruned.onnx``), × float / INT8
(``quantize`` with its default gates, the speed check off so the INT8 candidate is
always measured; "kept" says whether the default run would keep INT8: gates passed and
INT8 faster at batch 1 and 64): test accuracy (the dataset's test split, z-normalised),
file size, and one-thread latency ratios INT8 / its float input at batch 1 and 64 from
paired, interleaved rounds in one process (``quantize.speed.paired_ratio``, which uses
``bench.worker``'s paired rounds). Writes ``benchmarks/results/quantize.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from dsp_deploy import io
from dsp_deploy.inference import run_model
from dsp_deploy.quantize import QuantizeOptions, quantize
from dsp_deploy.quantize.speed import paired_ratio

ROOT = Path(__file__).resolve().parent.parent
ZOO = Path("/work/main/benchmarks/zoo")
NOTE = """# `dsp-deploy quantize`: INT8 on the shipped and zoo models

`PYTHONPATH=. python benchmarks/quantize.py --zoo 10` (rows: `benchmarks/results/quantize.json`).
Test accuracy on each dataset's test split; sizes of the serialized models; latency ratios
INT8 / its float input, x86 (AMD EPYC, AVX2, no VNNI), one thread, paired interleaved
rounds in one process. `quantize` ran with its default gates (held-out agreement ≥ 0.99,
accuracy drop ≤ 0.01, at most 8 layers kept in float) and the speed check off, so that the
INT8 candidate is always measured; "INT8 kept" is what the default run writes (gates
passed *and* INT8 faster at batch 1 and 64; otherwise exit 1, or the float model).
Zoo models have no pruned files (the zoo holds dense and DSP-trained LITE so far).

"""
SHIPPED = ("lite_gunpoint", "inception_gunpoint")


def _accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(run_model(model, {"x": x})[0].argmax(1) == y))


def _ratios(reference, candidate, x: np.ndarray) -> dict[int, float]:
    return {b: paired_ratio(reference, candidate, {"x": np.resize(x, (b, *x.shape[1:]))})
            for b in (1, 64)}  # fmt: skip


def measure(name: str, path: Path, calib: Path, test: tuple[np.ndarray, np.ndarray]) -> dict:
    model = io.load_model(path)
    calibration = io.load_calibration(calib, model)
    t0 = time.perf_counter()
    result = quantize(model, calibration, QuantizeOptions(speed_check=False))
    seconds = time.perf_counter() - t0
    ratios = _ratios(model, result.model, test[0])
    return {
        "model": name,
        "float_accuracy": _accuracy(model, *test),
        "int8_accuracy": _accuracy(result.model, *test),
        "float_bytes": path.stat().st_size,
        "int8_bytes": len(result.model.SerializeToString()),
        "latency_ratio": ratios,
        "gates_passed": result.verified,
        "failures": list(result.failures),
        "kept_float": list(result.kept_float),
        "kept": result.verified and max(ratios.values()) < 1.0,
        "seconds": round(seconds, 1),
    }


def shipped() -> list[tuple[str, Path, Path, tuple]]:
    from dsp_deploy.data import load_dataset

    d = load_dataset("GunPoint", "test")
    rows = []
    for stem in SHIPPED:
        for suffix in ("", ".pruned"):
            path = ROOT / "models" / f"{stem}{suffix}.onnx"
            rows.append((f"{stem}{suffix}", path, ROOT / "calibration" / f"{stem}.npz", (d.X, d.y)))
    return rows


def zoo(n: int) -> list[tuple[str, Path, Path, tuple]]:
    rows = []
    for path in sorted((ZOO / "models").glob("*.onnx"))[:n]:
        dataset = path.stem.split("-")[-1]
        train, test = ZOO / "data" / f"{dataset}.train.npz", ZOO / "data" / f"{dataset}.test.npz"
        if train.exists() and test.exists():
            z = np.load(test)
            rows.append((path.stem, path, train, (z["x"].astype(np.float32), z["y"])))
    return rows


def _targets(records: list[dict]) -> list[str]:
    """The issue's targets, met or not, from the records."""
    rows = ["| target | result |", "|---|---|"]
    worst = max(r["float_accuracy"] - r["int8_accuracy"] for r in records)
    rows.append(f"| INT8 accuracy within 0.5 pt of float, every model | worst drop "
                f"{100 * worst:.1f} pt: {'met' if worst <= 0.005 else 'not met'} |")  # fmt: skip
    for r in (r for r in records if "inception" in r["model"]):
        b1, b64 = r["latency_ratio"]["1"], r["latency_ratio"]["64"]
        size = r["int8_bytes"] / r["float_bytes"]
        rows.append(f"| {r['model']}: INT8 ≤ 0.5× float at b1 and b64; size ≤ 0.3× | "
                    f"{b1:.2f} / {b64:.2f}; size {size:.2f} |")  # fmt: skip
    lite = [r for r in records if "lite" in r["model"]]
    slower = [r["model"] for r in lite if not r["kept"]]
    rows.append(
        f"| LITE never slower than its float input | met by keeping float for "
        f"{len(slower)} of {len(lite)} LITE models (INT8 slower, or gates failed) |"
    )
    return rows


def markdown(records: list[dict]) -> str:
    records = json.loads(json.dumps(records))  # batch keys as text, as read back from JSON
    lines = [
        *_targets(records),
        "",
        "| model | accuracy float → INT8 | size INT8/float | time ratio b1 | b64 | gates | "
        "layers in float | INT8 kept |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['model']} | {r['float_accuracy']:.3f} → {r['int8_accuracy']:.3f} | "
            f"{r['int8_bytes'] / r['float_bytes']:.2f} | {r['latency_ratio']['1']:.2f} | "
            f"{r['latency_ratio']['64']:.2f} | {'pass' if r['gates_passed'] else 'fail'} | "
            f"{len(r['kept_float'])} | {'yes' if r['kept'] else 'no (float kept)'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--render", action="store_true", help="Rewrite the .md only.")
    args = parser.parse_args(argv)
    if args.render:
        records = json.loads((args.out / "quantize.json").read_text())
        (args.out / "quantize.md").write_text(NOTE + markdown(records))
        return 0
    records = []
    for name, path, calib, test in [*shipped(), *zoo(args.zoo)]:
        print(f"{name} ...", file=sys.stderr, flush=True)
        records.append(measure(name, path, calib, test))
        print(json.dumps(records[-1]), file=sys.stderr, flush=True)
        (args.out / "quantize.json").write_text(json.dumps(records, indent=1) + "\n")
        (args.out / "quantize.md").write_text(NOTE + markdown(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())

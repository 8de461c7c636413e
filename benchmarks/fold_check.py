"""What lossless compression on a calibration set says about data it never saw.

    .venv/bin/python benchmarks/fold_check.py        # needs the [train] extra (aeon's GunPoint)

For each shipped GunPoint model, ``compress`` (default ``dead``, ``--folds 5``) with two
calibration sets: the shipped one (the 50 training series) and all 200 series (train +
test). Recorded per run: parameters before → after, the k-fold report (channels that
wake on a fold left out of the decision, max |Δ| there), and — for the 50-series run —
the written model against the original on the 150 test series it never saw (max |Δ| of
the probabilities, test accuracy before → after). Results:
``benchmarks/results/fold_check.{json,md}``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dsp_deploy.compress import compress
from dsp_deploy.data import load_train_test
from dsp_deploy.inference import run_model
from dsp_deploy.io import Calibration, load_calibration, load_model
from dsp_deploy.options import CompressOptions
from dsp_deploy.signature import from_model

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODELS = {
    "lite_gunpoint": "lite_gunpoint",
    "litetime_gunpoint": "litetime_gunpoint",
    "inception_gunpoint": "inception_gunpoint",
    "inceptiontime_gunpoint": "inception_gunpoint",
}


def _run(model, calibration: Calibration) -> dict:
    result = compress(model, calibration, CompressOptions(threads=1))
    return {
        "samples": len(calibration),
        "params": list(result.params),
        "verified": result.verified,
        "folds": result.folds.as_dict(),
        "model": result.model,
    }


def check(name: str, calib: str) -> dict:
    model = load_model(ROOT / "models" / f"{name}.onnx")
    shipped = load_calibration(ROOT / "calibration" / f"{calib}.npz", model)
    normalise = from_model(model).normalises  # the reading every tool shares
    train, test = load_train_test("GunPoint", normalise=normalise)
    (key,) = shipped.inputs
    small = _run(model, shipped)
    written = small.pop("model")
    test_in = {key: test.X}
    before, after = run_model(model, test_in)[0], run_model(written, test_in)[0]
    small["test"] = {
        "samples": len(test.X),
        "max_abs_diff": float(np.abs(before - after).max()),
        "accuracy": [
            float(np.mean(before.argmax(1) == test.y)),
            float(np.mean(after.argmax(1) == test.y)),
        ],
    }
    both = Calibration({key: np.concatenate([train.X, test.X])}, None)
    large = _run(model, both)
    large.pop("model")
    return {"model": name, "calibration_50": small, "calibration_200": large}


def _row(r: dict) -> str:
    s, t = r["calibration_50"], r["calibration_200"]
    fs, ft = s["folds"], t["folds"]
    return (
        f"| {r['model']} | {s['params'][0]:,} → {s['params'][1]:,} | {fs['woken_channels']} | "
        f"{max(fs['max_abs_diff']):.3g} | {s['test']['max_abs_diff']:.3g} | "
        f"{s['test']['accuracy'][0]:.3f} → {s['test']['accuracy'][1]:.3f} | "
        f"{t['params'][1]:,} | {ft['woken_channels']} | {max(ft['max_abs_diff']):.3g} |"
    )


def main() -> None:
    rows = [check(name, calib) for name, calib in MODELS.items()]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fold_check.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        "# Lossless compress: the k-fold report against unseen data (GunPoint)",
        "",
        "`python benchmarks/fold_check.py`. 50 = the shipped calibration set (the training",
        "series); 200 = train + test. Woken: per fold, channels removed when deciding",
        "without the fold that the fold shows alive. Test: the model written from the 50",
        "training series against the original on the 150 test series.",
        "",
        "| model | params (50) | woken per fold (50) | max \\|Δ\\| on a left-out fold (50) "
        "| max \\|Δ\\| test | test accuracy | params after (200) | woken per fold (200) "
        "| max \\|Δ\\| left-out fold (200) |",
        "|---|---|---|---|---|---|---|---|---|",
        *map(_row, rows),
        "",
    ]
    (RESULTS / "fold_check.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

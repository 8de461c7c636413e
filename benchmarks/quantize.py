"""INT8 ``quantize`` over the shipped models (and zoo models): accuracy, size, x86 speed.

    PYTHONPATH=. python benchmarks/quantize.py                     # shipped GunPoint models
    PYTHONPATH=. python benchmarks/quantize.py --zoo               # + the zoo rows (ZOO_MODELS)
    PYTHONPATH=. python benchmarks/quantize.py --kfold 2           # zoo rows judged over k folds

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
from heldout import halves

from dsp_deploy import io
from dsp_deploy.inference import run_model
from dsp_deploy.quantize import QuantizeOptions, quantize
from dsp_deploy.quantize.speed import paired_ratio

ROOT = Path(__file__).resolve().parent.parent
ZOO = Path("/work/main/benchmarks/zoo")
NOTE = """# `dsp-deploy quantize`: INT8 on the shipped and zoo models

`PYTHONPATH=. python benchmarks/quantize.py --zoo` (rows: `benchmarks/results/quantize.json`).
Machine: AMD EPYC, AVX2, no VNNI, 2 shared cores; latency ratios INT8 / its float input,
one thread, paired interleaved rounds in one process, on the measured test half.

**Data.** Each dataset's test split is cut in two by a seeded permutation
(`benchmarks/heldout.py`): one half is `--eval` (the gates judge it; the decision
then sees all of `--calib`), the other half measures test accuracy — the only held-out
data GunPoint has (its 50 training series are the shipped calibration files). Zoo models:
the 5 with ≥ 133 training series (the whole training split is `--calib`). `quantize` ran
with its default gates (compress's: with labels the one-sided 95 % upper bound of the
accuracy drop on the judged series ≤ 2 points, at most 8 layers in float) and the speed
check off, so the INT8 candidate is always measured; "default run writes" is what the
speed check then does (the float model when INT8 is slower at batch 1 or 64).

**Before → after**, the same halves. "Before" is commit 592ea57
(`benchmarks/results/quantize_previous.json`; the first pass before it, commit 9bf2454, is
`quantize_before.json`): layers ranked by the class-probability MSE with that layer
alone quantized, the convs that read the input tried in float first, the search stopped
at the first configuration under which no decision series changes its prediction, A16W8
tried for the layers kept in float, and the Conv biases corrected all at once from one
pair of runs. Now two changes (`quantize.bias`, `quantize.build`):

- **Bias correction level by level.** One-shot correction over-corrects (each Conv's
  shift also holds the shift of the layers before it, which their own correction
  removes too). Inception GunPoint, nothing in float, 7-bit weights as below, on the
  two test halves: 0.56 / 0.53 one-shot, 0.87 / 0.88 level by level (13 levels, 7 s).
- **7-bit weights where a Conv reads a signed tensor** (x86). This machine has AVX2 without
  VNNI: onnxruntime's U8S8 kernels use `vpmaddubsw`, whose int16 pair sums saturate,
  and a signed tensor written as uint8 has a zero point near 128–160, so its codes are
  always large. Inception GunPoint, nothing in float, biases corrected: 0.93 as written
  (QDQ run in float) but 0.61 run by the fused kernels; 7-bit weights on the 20 Convs
  that read a signed tensor (the bottleneck outputs, the input series) make the fused
  result equal the written one (0.87 / 0.88 on the two halves; 8-bit weights
  everywhere, emulated, do no better with the input convs in float: 0.96 / 0.947). The
  post-ReLU inputs (zero point 0) keep 8 bits.

So Inception's search now stops at the four convs that read the series in float (cheap
ones: one input channel), not six including the four heaviest of blocks.5: 0.58× / 0.53×
float time (0.54× / 0.52× in a first run of the same code; the other agents' load
moves these), file 0.30× (value_info dropped too). Its test half is one series worse
(0.960 → 0.947), its eval half the same (0.973, float 0.987). The pruned Inception's
eval half comes back to float (0.920 → 0.987; test 0.947 both), still with 5 layers in
float (blocks.5 again: its input convs alone change one decision series). LITE:
Adiac +3 points (0.628 → 0.658; eval 0.636 → 0.687, float 0.692), lite-dsp
DistalPhalanxTW from 4 layers in float to none (one A16W8; eval 0.681 → 0.739, above
float), DistalPhalanxOutlineCorrect 2 series worse on its test half (0.790 → 0.775) and
one better on its eval half. INT8 stays slower than float at batch 1 for every LITE on
this machine, so the default writes float for them. Measured and not taken: see
`quantize_tools.md`, "Second pass". The gates refuse the GunPoint INT8 models as before:
75 eval series cannot certify a 2-point drop (133 needed even with no change), and one
newly wrong series puts the bound near 6 %.

"""
KFOLD_NOTE = """## Judged without --eval: k folds over the training series

`PYTHONPATH=. python benchmarks/quantize.py --kfold 2`: `quantize` calibrated on the whole
training split with no `--eval`; it has too few series for a held-out split (1,110
needed at `--holdout 0.2`), so it judges over 5 folds, each fold on the model the whole
procedure built without it, pooled (6 runs of the procedure: 249 s for Adiac, 160 s for
DistalPhalanxOutlineAgeGroup on this loaded machine). Test accuracy on the whole test
split. The pooled 400 series certify DistalPhalanxOutlineAgeGroup's INT8 (it fixes 10
series, breaks none; 592ea57: 3 and 1), though it loses 0.7 points on the test split
(592ea57: 1.5) — the judged series are training series, which the model fits. Adiac is
refused, now closer (bound 2.9 %, 592ea57 5.6 %; test 0.632 → 0.673, float 0.688).

"""
SHIPPED = (("inception_gunpoint", ""), ("inception_gunpoint", ".pruned"), ("lite_gunpoint", ""))
ZOO_MODELS = (  # zoo models whose training split has >= 133 series
    "lite-dense-Adiac",
    "lite-dense-DistalPhalanxOutlineAgeGroup",
    "lite-dense-DistalPhalanxOutlineCorrect",
    "lite-dense-DistalPhalanxTW",
    "lite-dsp-DistalPhalanxTW",
)


def _accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(run_model(model, {"x": x})[0].argmax(1) == y))


def _ratios(reference, candidate, x: np.ndarray) -> dict[int, float]:
    return {b: paired_ratio(reference, candidate, {"x": np.resize(x, (b, *x.shape[1:]))})
            for b in (1, 64)}  # fmt: skip


def measure(name: str, path: Path, calib: Path, test: tuple[np.ndarray, np.ndarray]) -> dict:
    model = io.load_model(path)
    calibration = io.load_calibration(calib, model)
    evaluation, measured = halves(*test)
    t0 = time.perf_counter()
    result = quantize(model, calibration, QuantizeOptions(speed_check=False), evaluation)
    seconds = time.perf_counter() - t0
    ratios = _ratios(model, result.model, measured[0])
    return {
        "model": name,
        "calibration_series": len(calibration),
        "eval_series": len(evaluation),
        "test_series": len(measured[1]),
        "float_accuracy": _accuracy(model, *measured),
        "int8_accuracy": _accuracy(result.model, *measured),
        "eval_accuracy": list(result.evaluation.accuracy),
        "float_bytes": path.stat().st_size,
        "int8_bytes": len(result.model.SerializeToString()),
        "latency_ratio": ratios,
        "gates_passed": result.verified,
        "failures": list(result.failures),
        "kept_float": list(result.kept_float),
        "a16w8": list(result.wide),
        "configurations_tried": result.tried,
        "notes": list(result.notes),
        "kept": result.verified and max(ratios.values()) < 1.0,
        "seconds": round(seconds, 1),
    }


def measure_kfold(name: str, path: Path, calib: Path, test: tuple[np.ndarray, np.ndarray]) -> dict:
    """No --eval: the gates judge the training series over k folds, pooled (each fold
    judged on the model built without it); test accuracy on the whole test split."""
    model = io.load_model(path)
    calibration = io.load_calibration(calib, model)
    t0 = time.perf_counter()
    result = quantize(model, calibration, QuantizeOptions(speed_check=False))
    return {
        "model": name,
        "calibration_series": len(calibration),
        "judged": result.gate.as_dict(),
        "float_accuracy": _accuracy(model, *test),
        "int8_accuracy": _accuracy(result.model, *test),
        "kept_float": list(result.kept_float),
        "a16w8": list(result.wide),
        "gates_passed": result.verified,
        "failures": list(result.failures),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def shipped() -> list[tuple[str, Path, Path, tuple]]:
    from dsp_deploy.data import load_dataset

    d = load_dataset("GunPoint", "test")
    x = d.X.astype(np.float32)
    rows = []
    for stem, suffix in SHIPPED:
        path = ROOT / "models" / f"{stem}{suffix}.onnx"
        rows.append((f"{stem}{suffix}", path, ROOT / "calibration" / f"{stem}.npz", (x, d.y)))
    return rows


def zoo(names: tuple[str, ...]) -> list[tuple[str, Path, Path, tuple]]:
    rows = []
    for stem in names:
        path, dataset = ZOO / "models" / f"{stem}.onnx", stem.split("-")[-1]
        train, test = ZOO / "data" / f"{dataset}.train.npz", ZOO / "data" / f"{dataset}.test.npz"
        if path.exists() and train.exists() and test.exists():
            z = np.load(test)
            rows.append((stem, path, train, (z["x"].astype(np.float32), z["y"])))
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
    slower = [r["model"] for r in lite if max(r["latency_ratio"].values()) >= 1.0]
    rows.append(
        f"| LITE never slower than its float input | met by writing the float model for "
        f"{len(slower)} of {len(lite)} LITE models (INT8 slower here at batch 1 or 64) |"
    )
    return rows


def _written(r: dict) -> str:
    """What the default run (speed check on) does with this model."""
    if max(r["latency_ratio"].values()) >= 1.0:
        return "float (INT8 slower)"
    return "INT8" if r["gates_passed"] else "nothing: exit 1 (gates)"


def _before(before: dict, r: dict) -> str:
    """The previous run's test accuracy (layers in float), time b1 / b64, size ratio."""
    old = before.get(r["model"])
    if old is None:
        return "–"
    t = old["latency_ratio"]
    return (f"{old['int8_accuracy']:.3f} ({len(old['kept_float'])}), {t['1']:.2f} / {t['64']:.2f}, "
            f"{old['int8_bytes'] / old['float_bytes']:.2f}")  # fmt: skip


def markdown(records: list[dict], before: dict | None = None) -> str:
    records = json.loads(json.dumps(records))  # batch keys as text, as read back from JSON
    before = before or {}
    lines = [
        *_targets(records),
        "",
        "| model | series calib / eval / test | test float → INT8 | "
        "before: INT8 (in float), b1 / b64, size | "
        "eval float → INT8 | size INT8/float | time b1 | b64 | in float / A16W8 | gates | "
        "default run writes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        ev = r["eval_accuracy"]
        lines.append(
            f"| {r['model']} | {r['calibration_series']} / {r['eval_series']} / "
            f"{r['test_series']} | {r['float_accuracy']:.3f} → {r['int8_accuracy']:.3f} | "
            f"{_before(before, r)} | {ev[0]:.3f} → {ev[1]:.3f} | "
            f"{r['int8_bytes'] / r['float_bytes']:.2f} | {r['latency_ratio']['1']:.2f} | "
            f"{r['latency_ratio']['64']:.2f} | {len(r['kept_float'])} / {len(r['a16w8'])} | "
            f"{'pass' if r['gates_passed'] else 'fail'} | {_written(r)} |"
        )
    return "\n".join(lines) + "\n"


def kfold_markdown(rows: list[dict]) -> str:
    lines = [
        "| model | series | judged | test float → INT8 | in float / A16W8 | gate bound | gates |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        j = r["judged"]
        bound = "; ".join(f"{b['gate']} ≤ {100 * b['upper']:.1f}% ({b['events']})"
                          for b in j["bounds"])  # fmt: skip
        lines.append(
            f"| {r['model']} | {r['calibration_series']} | {j['judged']}, {j['folds']} folds | "
            f"{r['float_accuracy']:.3f} → {r['int8_accuracy']:.3f} | {len(r['kept_float'])} / "
            f"{len(r['a16w8'])} | {bound} | {'pass' if r['gates_passed'] else 'fail'} |"
        )
    return "\n".join(lines) + "\n"


def _read(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def render(out: Path) -> str:
    """The note: NOTE, the main table, the k-fold table when measured."""
    before = {r["model"]: r for r in _read(out / "quantize_previous.json")}
    text = NOTE + markdown(_read(out / "quantize.json"), before)
    if kfold := _read(out / "quantize_kfold.json"):
        text += "\n" + KFOLD_NOTE + kfold_markdown(kfold)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", action="store_true", help="+ the zoo models (ZOO_MODELS).")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--render", action="store_true", help="Rewrite the .md only.")
    parser.add_argument("--kfold", type=int, default=0, help="k-fold rows for N zoo models.")
    args = parser.parse_args(argv)
    if args.kfold:
        rows = [measure_kfold(*row) for row in zoo(ZOO_MODELS[: args.kfold])]
        (args.out / "quantize_kfold.json").write_text(json.dumps(rows, indent=1) + "\n")
        return 0
    if args.render:
        (args.out / "quantize.md").write_text(render(args.out))
        return 0
    records = []
    for name, path, calib, test in [*shipped(), *(zoo(ZOO_MODELS) if args.zoo else [])]:
        print(f"{name} ...", file=sys.stderr, flush=True)
        records.append(measure(name, path, calib, test))
        print(json.dumps(records[-1]), file=sys.stderr, flush=True)
        (args.out / "quantize.json").write_text(json.dumps(records, indent=1) + "\n")
        (args.out / "quantize.md").write_text(render(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

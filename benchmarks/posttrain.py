"""Post-training compression on the zoo: what ``compress`` gives a finished model, no retraining.

For every model in ``benchmarks/zoo/models`` (``benchmarks/zoo/build.py``: dense and
DSP-trained LITE and Inception, ``cpu-small`` budget) this runs what a user runs —
``compress`` with the CLI's defaults, the training split as calibration set — once per
configuration in ``RUNS``:

* ``dead``       the lossless pass (exact on every calibration series);
* ``dsp``        the paper's rule with the default ``lstsq`` compensation;
* ``auto``       ``--criterion auto``: as much as the gates allow, with reconstruction;
* ``auto-norec`` the same search with the removed channels only masked (no refit), to
                 show what reconstruction buys;
* ``auto-point`` ``auto`` with ``--confidence 0.5``: the gates on point estimates, what
                 the search finds where the series are too few to certify a 2-point drop
                 (fewer than 133: ``auto`` then removes nothing, and the CLI exits 2);
* ``auto-layout`` ``auto --align 8 --conv2d``: kept channels in multiples of 8 and the
                 1-D convs in onnxruntime's blocked 2-D form, for the latency columns.

Per run it records params and MACs before/after, test accuracy of the input model and of
the result (onnxruntime, the official test split, which ``compress`` never sees), the
gate verdict and failures, and the wall time of the ``compress`` call (one thread). With
``--latency`` it also benches the input and every result in one paired run (x86, one
thread, batch 1 and 64; ``dsp_deploy.bench``): latency ratio against the input, beside
the MACs ratio.

A model a run's gates refuse is reported with the numbers it *would* have had (the CLI
writes nothing then, unless ``--force``): the accuracy column of a refused run is what the
gates protected the user from.

    python benchmarks/posttrain.py                       # every zoo model, resumable
    python benchmarks/posttrain.py --only lite-dense --latency

Rows go to ``benchmarks/results/posttrain.csv`` as each model finishes (a rerun skips the
(model, run) pairs already there); ``posttrain.md`` is rewritten from the CSV at the end.

``--eval-half`` is the protocol a careful user follows: the gates judge data the model
never trained on. Each test split is cut in two (``benchmarks/heldout.py``); one half is
``compress``'s ``evaluation`` (``--eval``: the gates judge it, and the decision sees the
whole training split), the other half alone measures the test accuracy columns. Rows go
to ``posttrain_eval.{csv,md}``; ``n_eval`` is the judged half's size, ``n_test`` the
measured half's::

    python benchmarks/posttrain.py --eval-half --runs dead,dsp,auto,auto-norec,auto-point
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from heldout import halves

from dsp_deploy.compress import bounds, compress
from dsp_deploy.inference import run_model
from dsp_deploy.io import Calibration, load_model
from dsp_deploy.options import CRITERIA, CompressOptions

HERE = Path(__file__).resolve().parent
ZOO = HERE / "zoo"
RESULTS = HERE / "results" / "posttrain"
RESULTS_EVAL = HERE / "results" / "posttrain_eval"
AUTO = "auto" in CRITERIA
RUNS: dict[str, dict[str, object]] = {
    "dead": {"criterion": "dead"},
    "dsp": {"criterion": "dsp", "compensation": "lstsq"},
    **(
        {
            "auto": {"criterion": "auto"},
            "auto-norec": {"criterion": "auto", "compensation": "none"},
            "auto-point": {"criterion": "auto", "confidence": 0.5},
            "auto-layout": {"criterion": "auto", "align": 8, "conv2d": True},
        }
        if AUTO
        else {}
    ),
}
COLUMNS = (
    "model", "arch", "kind", "dataset", "run", "n_calib", "n_eval", "n_test",
    "params", "params_after", "macs", "macs_after",
    "accuracy", "accuracy_after", "agreement", "verified", "failures",
    "latency_ratio_b1", "latency_ratio_b64", "compress_seconds", "host",
)  # fmt: skip


def zoo_models(only: str | None) -> list[Path]:
    paths = sorted((ZOO / "models").glob("*.onnx"))
    return [p for p in paths if only is None or p.name.startswith(only)]


def judged_series(path: Path, eval_half: bool) -> int:
    """How many labelled series the gates of a run on this zoo model judge."""
    dataset = path.stem.split("-", 2)[2]
    n = len(load_split(dataset, "test" if eval_half else "train")[1])
    return n // 2 if eval_half else n


def load_split(dataset: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(ZOO / "data" / f"{dataset}.{split}.npz") as data:
        return data["x"], data["y"]


def predict(model, x: np.ndarray) -> np.ndarray:
    name = model.graph.input[0].name
    (out,) = run_model(model, {name: x}, batch_size=256, threads=1)
    return out.argmax(axis=1)


def auto_on_halves(path: Path) -> tuple[object, np.ndarray, np.ndarray, np.ndarray]:
    """``--criterion auto`` (CLI defaults, one thread) on one zoo model under the
    ``--eval-half`` protocol: (the compress result, the input's and the result's
    predictions on the measured half, its labels)."""
    dataset = path.stem.split("-", 2)[2]
    (x, y), (x_test, y_test) = load_split(dataset, "train"), load_split(dataset, "test")
    model = load_model(path)
    name = model.graph.input[0].name
    evaluation, (x_test, y_test) = halves(x_test, y_test, name)
    options = CompressOptions(threads=1, criterion="auto")
    result = compress(model, Calibration({name: x}, y), options, evaluation=evaluation)
    return result, predict(model, x_test), predict(result.model, x_test), y_test


def measure(path: Path, runs: Iterable[str], eval_half: bool = False) -> list[dict[str, object]]:
    """One row per run of one zoo model (latency columns empty).

    ``eval_half``: half of the test split is ``compress``'s evaluation set and the other
    half measures accuracy (``heldout.halves``); else the whole test split measures it.
    """
    arch, kind, dataset = path.stem.split("-", 2)
    (x, y), (x_test, y_test) = load_split(dataset, "train"), load_split(dataset, "test")
    model = load_model(path)
    name = model.graph.input[0].name
    evaluation = None
    if eval_half:
        evaluation, (x_test, y_test) = halves(x_test, y_test, name)
    before = predict(model, x_test)
    calibration = Calibration({name: x}, y)
    rows = []
    for run in runs:
        options = CompressOptions(threads=1, **RUNS[run])
        start = time.perf_counter()
        result = compress(model, calibration, options, evaluation=evaluation)
        seconds = time.perf_counter() - start
        after = predict(result.model, x_test)
        rows.append(
            {
                "model": path.name, "arch": arch, "kind": kind, "dataset": dataset,
                "run": run, "n_calib": len(y), "n_test": len(y_test),
                "n_eval": len(evaluation) if evaluation is not None else "",
                "params": result.params[0], "params_after": result.params[1],
                "macs": result.macs[0], "macs_after": result.macs[1],
                "accuracy": round(float(np.mean(before == y_test)), 6),
                "accuracy_after": round(float(np.mean(after == y_test)), 6),
                "agreement": round(float(np.mean(before == after)), 6),
                "verified": result.verified, "failures": " | ".join(result.failures),
                "latency_ratio_b1": "", "latency_ratio_b64": "",
                "compress_seconds": round(seconds, 2), "host": platform.node(),
                "_model": result.model,
            }
        )  # fmt: skip
    return rows


def add_latency(path: Path, rows: list[dict[str, object]]) -> None:
    """Bench the input and every result in one paired run; fill the ratio columns."""
    import onnx

    from dsp_deploy.bench.runner import BenchSettings, benchmark

    with tempfile.TemporaryDirectory() as tmp:
        files = [str(path)]
        for row in rows:
            files.append(str(Path(tmp) / f"{row['run']}.onnx"))
            onnx.save(row["_model"], files[-1])
        settings = BenchSettings(batches=(1, 64), runs=60, rounds=2, paired_rounds=20)
        report = benchmark(files, settings)
    for c in report.comparison:
        row = rows[[Path(f).name for f in files[1:]].index(Path(c.model).name)]
        row[f"latency_ratio_b{c.batch}"] = round(c.latency_ratio, 4)


def done_pairs(csv_path: Path) -> set[tuple[str, str]]:
    if not csv_path.exists():
        return set()
    with csv_path.open() as handle:
        return {(r["model"], r["run"]) for r in csv.DictReader(handle)}


def append_rows(csv_path: Path, rows: list[dict[str, object]]) -> None:
    """Append under the file's own header (files written before a column was added keep
    their columns), or under ``COLUMNS`` in a new file."""
    new = not csv_path.exists()
    columns = COLUMNS
    if not new:
        with csv_path.open() as handle:
            columns = tuple(next(csv.reader(handle)))
    with csv_path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)


def markdown(rows: list[dict[str, str]]) -> str:
    """The per-family target table, then one line per model and run."""
    lines = [
        "| family | run | models | params removed | MACs removed | Δ test acc (mean) "
        "| Δ min | passed gates | written below −2 pt (≥ 50 judged) | latency/MACs b1 | b64 "
        "| mean s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    families = dict.fromkeys((r["arch"], r["kind"]) for r in rows)
    enough = bounds.needed(0.02, 0.95)  # judged series that can certify the default gate
    for judged in ("all", f"≥ {enough} judged"):
        for arch, kind in families:
            for run in RUNS:
                group = [
                    r for r in rows
                    if (r["arch"], r["kind"], r["run"]) == (arch, kind, run)
                    and (judged == "all" or _judged(r) >= enough)
                ]  # fmt: skip
                if group:
                    lines.append(_family_line(f"{arch} {kind} ({judged})", run, group))
    lines += ["", "| model | run | params | MACs | test accuracy | agreement | gates | s |"]
    lines.append("|---|---|---|---|---|---|---|---|")
    lines += [
        f"| {r['model']} | {r['run']} | −{_frac(r, 'params'):.0%} | −{_frac(r, 'macs'):.0%} "
        f"| {float(r['accuracy']):.3f} → {float(r['accuracy_after']):.3f} "
        f"| {float(r['agreement']):.3f} | {'pass' if r['verified'] == 'True' else 'fail'} "
        f"| {float(r['compress_seconds']):.1f} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def _family_line(family: str, run: str, group: list[dict[str, str]]) -> str:
    delta = [float(r["accuracy_after"]) - float(r["accuracy"]) for r in group]
    passed = [r for r in group if r["verified"] == "True"]
    bad = [
        r
        for r in passed
        if _judged(r) >= 50 and float(r["accuracy_after"]) - float(r["accuracy"]) < -0.02
    ]
    gap = {b: _gap(group, b) for b in ("1", "64")}
    seconds = np.mean([float(r["compress_seconds"]) for r in group])
    return (
        f"| {family} | {run} | {len(group)} | {np.mean([_frac(r, 'params') for r in group]):.1%} "
        f"| {np.mean([_frac(r, 'macs') for r in group]):.1%} | {100 * np.mean(delta):+.2f} pt "
        f"| {100 * min(delta):+.1f} pt | {len(passed)}/{len(group)} | {len(bad)} "
        f"| {gap['1']} | {gap['64']} | {seconds:.1f} |"
    )


def _judged(row: dict[str, str]) -> int:
    """The labelled series the gates could judge: the eval half, else the calibration set."""
    return int(row.get("n_eval") or row["n_calib"])


def _frac(row: dict[str, str], key: str) -> float:
    return 1 - float(row[f"{key}_after"]) / float(row[key])


def _gap(group: list[dict[str, str]], batch: str) -> str:
    """Mean latency ratio over MACs ratio, over the rows that were benched."""
    pairs = [
        float(r[f"latency_ratio_b{batch}"]) / (float(r["macs_after"]) / float(r["macs"]))
        for r in group
        if r[f"latency_ratio_b{batch}"]
    ]
    return f"{np.mean(pairs):.2f}×" if pairs else "–"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="model-name prefix, e.g. lite-dense or inception-dsp")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma list of {list(RUNS)}")
    parser.add_argument("--latency", action="store_true", help="also bench (slow)")
    parser.add_argument(
        "--eval-half", action="store_true", help="gates judge half of the test split"
    )
    parser.add_argument(
        "--min-judged", type=int, default=0, help="skip models with fewer judged series"
    )
    parser.add_argument("--out", type=Path, help="results stem (default: by protocol)")
    args = parser.parse_args(argv)
    args.out = args.out or (RESULTS_EVAL if args.eval_half else RESULTS)
    runs = [r for r in args.runs.split(",") if r]
    if unknown := [r for r in runs if r not in RUNS]:
        print(f"error: unknown run(s) {unknown}; expected {list(RUNS)}", file=sys.stderr)
        return 2
    csv_path = args.out.with_suffix(".csv")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    seen = done_pairs(csv_path)
    paths = [
        p for p in zoo_models(args.only) if judged_series(p, args.eval_half) >= args.min_judged
    ]
    for i, path in enumerate(paths, 1):
        todo = [r for r in runs if (path.name, r) not in seen]
        if not todo:
            continue
        rows = measure(path, todo, args.eval_half)
        if args.latency:
            add_latency(path, rows)
        append_rows(csv_path, rows)
        print(f"[{i}/{len(paths)}] {path.name}: " + ", ".join(_brief(r) for r in rows), flush=True)
    with csv_path.open() as handle:
        args.out.with_suffix(".md").write_text(markdown(list(csv.DictReader(handle))))
    print(f"wrote {csv_path} and {args.out.with_suffix('.md')}")
    return 0


def _brief(row: dict[str, object]) -> str:
    frac = 1 - int(row["params_after"]) / int(row["params"])  # type: ignore[arg-type]
    gate = "pass" if row["verified"] else "fail"
    return f"{row['run']} −{frac:.0%} acc {row['accuracy']:.3f}→{row['accuracy_after']:.3f} {gate}"


if __name__ == "__main__":
    sys.exit(main())

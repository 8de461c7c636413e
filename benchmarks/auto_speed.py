"""How long ``compress --criterion auto`` takes and how much memory it needs.

Targets (issue 18): ≤ 60 s for a LITE model and ≤ 10 min for an Inception model with
1,000 calibration series on the 2-core machine; peak RSS with 10,000 series ≤ 1.1× that
with 1,000.

Calibration data: the shipped ``calibration/<model>.npz`` (50 labelled GunPoint series)
*resampled* to n series — series drawn with replacement (seeded), each plus Gaussian
noise of 0.05 × the set's standard deviation, its label kept — so the models stay
accurate on them and the gates see a realistic task. At 1,000 series the default
``--holdout 0.2`` judges by 5-fold (fewer than ~1,110 series), at 10,000 by a held-out part.

Each configuration runs the real command line (``dsp_deploy.cli.main`` with
``compress MODEL --calib C.npz --criterion auto --json``) in a fresh subprocess of this
script, so peak RSS (``ru_maxrss`` of that process) is that run's alone. Wall seconds
and CPU seconds (``os.times``: user + system of the process and any children; on a
loaded machine CPU time tells the work apart from the waiting) are both recorded.

    .venv/bin/python benchmarks/auto_speed.py [--models lite inception] [--series 1000 10000]
    .venv/bin/python benchmarks/auto_speed.py --profile inception --series 1000  # cProfile

Results go to ``benchmarks/results/auto_speed.json`` (appended under ``--label``) and
``auto_speed.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
CACHE = Path(tempfile.gettempdir()) / "dsp-deploy-auto-speed"
MODELS = {"lite": "lite_gunpoint", "inception": "inception_gunpoint"}
NOISE = 0.05


def calibration_file(name: str, n: int) -> Path:
    """The shipped calibration resampled to ``n`` labelled series (module docstring)."""
    import numpy as np

    path = CACHE / f"{name}.{n}.npz"
    if path.exists():
        return path
    data = np.load(ROOT / "calibration" / f"{name}.npz")
    x, y = data["x"], data["y"]
    rng = np.random.default_rng(n)
    pick = rng.integers(0, len(x), n)
    noise = rng.standard_normal((n, *x.shape[1:])).astype(x.dtype) * (NOISE * x.std())
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, x=x[pick] + noise, y=y[pick], classes=data["classes"])
    tmp.replace(path)
    return path


def _argv(name: str, calib: Path, out: Path) -> list[str]:
    model = ROOT / "models" / f"{name}.onnx"
    return ["compress", str(model), "--calib", str(calib), "--criterion", "auto",
            "-o", str(out), "--json", "--quiet", "--force"]  # fmt: skip


def _run_cli(argv: list[str]) -> tuple[int, str]:
    import contextlib
    import io

    from dsp_deploy.cli import main

    sys.argv = ["dsp-deploy", *argv]
    buffer = io.StringIO()
    code = 0
    with contextlib.redirect_stdout(buffer):
        try:
            main()
        except SystemExit as stop:
            code = int(stop.code or 0)
    return code, buffer.getvalue()


def _summary(text: str) -> dict:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return {"raw": text[-500:]}
    search = data.get("search") or {}
    keep = ("params", "macs", "failures", "passed", "written")
    out = {k: data[k] for k in keep if k in data}
    out["chosen_units"] = search.get("chosen_units")
    out["curve"] = [
        (c["units"], round(c["macs_removed"], 4), round(c["agreement"], 4), c["passed"])
        for c in search.get("curve", [])
    ]
    return out


def worker(name: str, n: int, profile: str | None) -> dict:
    calib = calibration_file(name, n)
    out = CACHE / f"{name}.{n}.auto.onnx"
    t0, c0 = time.perf_counter(), os.times()
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        code, text = profiler.runcall(_run_cli, _argv(name, calib, out))
        profiler.dump_stats(profile)
    else:
        code, text = _run_cli(_argv(name, calib, out))
    c1 = os.times()
    cpu = sum(getattr(c1, k) - getattr(c0, k) for k in ("user", "system", "children_user",
                                                          "children_system"))  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    row = {"model": name, "series": n, "exit": code, "seconds": time.perf_counter() - t0}
    return {**row, "cpu_seconds": cpu, "peak_rss_mb": peak, **_summary(text)}


def measure(key: str, n: int) -> dict:
    calibration_file(MODELS[key], n)  # synthesised outside the measured process
    cmd = [sys.executable, __file__, "--worker", key, "--series", str(n)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode:
        raise RuntimeError(f"{key} {n}: {done.stderr[-2000:]}")
    head = ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]
    commit = subprocess.run(head, capture_output=True, text=True, check=False).stdout.strip()
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "commit": commit}


NOTES = """
## Where the time goes (cProfile, Inception, one reconstruction of 1,000 series)

At 1,000 series the default gates judge by 5 folds, so a search of 6 candidates runs
6 × (1 + 5) = 36 reconstructions; they are the whole cost (LITE: 123 of 132 s under the
profiler). One Inception reconstruction (11 levels, 512 series; after the ``upto``
cut below, before the ``conv_gram`` change): onnxruntime passes ≈ 40%,
``conv_gram.conv_sums`` ≈ 50% (of it, ``np.cumsum`` along the positions of the
(L, C, C) lag products ≈ 60%), the ridge grid's solves ≈ 8%.

Changes (results identical up to float rounding: the same chosen depth and curve):

* ``reconstruct.upto`` (now ``checkpoint.cut``): each level's passes run the model cut
  to the nodes that level's tensors need (onnxruntime runs every node whatever is
  fetched: fetching an early tensor cost the same as the logits, measured). CPU per
  reconstruction, same run order: LITE 2.97 → 2.23 s, Inception 66.8 → 52.5 s
  (``--criterion dsp --compensation reconstruct`` on 1,000 series, one reconstruction).
* ``conv_gram``: prefix sums only at the 2(k − δ) window ends (``np.add.reduceat``,
  then a cumsum over the segments) instead of a cumsum over every position; conv_sums
  0.21–0.27 → 0.18–0.23 s CPU for a (64, 32, 150) batch at k = 40 (G equal to 5e-16).
* ``auto``: one pass of the original over the decision part serves the decision
  report and the k-fold reference (was two).

Not done (measured, left): the ridge grid's 9 LU solves per consumer (≈ 8%; an eigen-
or Cholesky-based grid costs about as much as 9 solves at F ≈ 1,300); sharing the lag
products of an Inception module's three convs, which read one bottleneck output
(≈ 40% of conv_sums); caching the original's target activations across candidates
(exact, but O(512 · channels · L) per fold: ≈ 300 MB per input set for Inception).

Inception, 1,000 series, after these changes: not finished when stopped at 18.4 CPU
min (25 min wall at load 8–9 on the 2 cores): the 600 s target is **not met**; before,
an unfinished profiled run had reached 9.4 CPU min after 27 min wall. The 36
reconstructions (≈ 25–50 CPU s each) are the cost; Inception at 10,000 series was not
reached.

## Second round (branch ``aspeed``): rows ``aspeed``

Three changes, results identical up to float rounding (one Inception reconstruction,
800 series, depth 464/928: the first level's refitted weights within one float32 ulp of
before, the last ones within 2e-3 relative after 11 levels of compounding through a
float32 model; logits within 5e-5, argmax equal on all 1,000 series; the same λ):

* ``compress.checkpoint``: each level's passes start from the *frontier* the pass before
  stored (the tensors no later refit can change) instead of the network's input, so a
  reconstruction's passes cost about one whole pass of each model, not levels / 2. The
  values fed back are onnxruntime's own: with and without the frontier the refitted
  weights are bit-identical (``tests/test_compress_checkpoint.py``; on Inception too).
  Memory: at most ``checkpoint.BUDGET`` = 256 MiB per model (above it a pass starts from
  the input, as before); Inception, 512 series: ≤ 84 MB (pruned) + 112 MB (original).
  This is O(``MAX_SAMPLES`` · frontier width): bounded, independent of the calibration
  size, but not O(channels² · kernel).
* ``conv_gram.LagSums``: the lag sums between window ends are summed over the batches
  and assembled into G once per level (was: per batch, with a prefix sum over every
  position); one-position segments at the edges from one batched product for every lag,
  the long middle one matrix product; the Convs that read one tensor share one table
  (Inception's k = 40/20/10 and, since they read another tensor, 1×1 Convs alone).
* onnxruntime sessions of the reconstruction and of ``auto``'s candidate runs without
  spinning threads (``inference.session(spin=False)``; one Inception pass of 512 series:
  1.75–1.83 → 1.38–1.47 CPU s, the same wall time, at load 4).

Full search (rows ``aspeed``, load 3–6): Inception at 1,000 series 473 CPU s (510 s
wall; 36 reconstructions): the 600 s target is **met**; it removes the first 459 of 928
ranked units, 68% of the MACs (the curve: 314, 396, 441, 459 pass, 473 and 542 fail). LITE 53.9
→ 15.3 CPU s at 1,000 and 27.3 → 14.6 at 10,000, the same curve to the 4 decimals
stored. Peak RSS: LITE 243 → 285 MB (frontiers, lag tables: not measured apart), ratio
1.005; Inception 848 MB at 1,000 and 801 MB at 10,000 (0.945; 291 CPU s there, a
held-out part of 2,000 judges, 6 reconstructions: 491 units, 73% of the MACs). No
complete Inception search before these changes exists to compare its curve with (one
would take over 30 CPU min); per reconstruction the results agree as above.

Since (rows ``ladder`` … ``kfold-refit-once``): the fixed ladder replaced the bisection
(more candidates where every rung passes: LITE on resampled GunPoint climbs all 20 rungs
to 99.7% of the MACs, 120 reconstructions); the refit-aware ranking collects a Gram
matrix per consumer (``refit-ranking``: LITE 61.8 CPU s, Inception 386.8 at 1,000
series; no longer 15 CPU s for LITE, since the bisection's ~6 candidates became 20);
under k-fold judging a candidate is then only pruned for its cost and the whole part's
refit is made once, for the chosen plan (``kfold-refit-once``: 101 reconstructions,
LITE 55.6 CPU s / 62.9 s wall beside a training on the other core, Inception 356.8 CPU
s; the written LITE model byte-identical to ``refit-ranking``'s).

One reconstruction (``/tmp`` script: the plan of the first n ranked units on 800
resampled series, then ``reconstruct``), old and new code interleaved, load 7–9:

| depth (units) | before CPU s | after CPU s |
|---:|---:|---:|
| 464 / 928 | 46.5, 47.2 | 12.3, 12.6 |
| 232 / 928 | 56.6 | 16.2 |

(the 25 ridge λ chosen at depth 464 are the same before and after.)

After, per reconstruction (cProfile with a CPU clock, depth 464): onnxruntime 4.4 s,
the ridge grid's LU solves 3.2 s (2.6 s of it the 10 solves of each k = 40 Conv that
keeps 31–32 input channels, F ≈ 1,281), ``LagSums`` 4.7 s, the rest < 1.5 s.
An intermediate state (frontier and lag sums, spinning threads) was stopped at 12.5 CPU
min (26 min wall) of the full Inception search.

Not done: FFT correlations for B and the long lag products (about 10× fewer
multiply-adds, different rounding); an eigen-decomposed ridge grid (measured: no faster
at F = 641–1,281); stopping a candidate's folds once its gate cannot pass any more
(the curve's numbers for it would be partial); fewer folds or candidates (policy).

Memory: the statistics pass (``calibrate.Probe.statistics``) keeps running sums per
batch; a reconstruction reads a seeded subset of at most ``reconstruct.MAX_SAMPLES``
= 512 series; only the outputs (N × classes) and the calibration array itself grow
with N. At 10,000 series the gates judge a held-out part (2,000 series), so the search
runs 6 reconstructions instead of 36: fewer seconds than at 1,000.
"""


def _markdown(runs: dict) -> str:
    lines = [
        "# `compress --criterion auto`: time and peak RSS",
        "",
        "`benchmarks/auto_speed.py` (its docstring: resampled GunPoint calibration, one fresh",
        "process per run). CPU s = user + system of the run; the machine is shared, so",
        "wall seconds include waiting. Targets: LITE ≤ 60 s, Inception ≤ 600 s at 1,000",
        "series; RSS(10,000) / RSS(1,000) ≤ 1.1.",
        "",
        "| label | model | series | wall s | CPU s | peak RSS MB | RSS ratio | chosen "
        "| MACs removed |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, rows in runs.items():
        base = {r["model"]: r["peak_rss_mb"] for r in rows if r["series"] == 1000}
        for r in rows:
            ratio = r["peak_rss_mb"] / base[r["model"]] if r["model"] in base else float("nan")
            macs = r.get("macs") or [0, 0]
            removed = 1 - macs[1] / macs[0] if macs and macs[0] else float("nan")
            lines.append(
                f"| {label} | {r['model']} | {r['series']} | {r['seconds']:.1f} | "
                f"{r['cpu_seconds']:.1f} | {r['peak_rss_mb']:.0f} | {ratio:.3f} | "
                f"{r.get('chosen_units')} | {removed:.1%} |"
            )
    return "\n".join(lines) + "\n" + NOTES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker")
    parser.add_argument("--profile", help="cProfile one model in this process")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--series", nargs="+", type=int, default=[1000, 10000])
    parser.add_argument("--label", default="current")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(MODELS[args.worker], args.series[0], None)))
        return
    if args.profile:
        stats = str(CACHE / f"{args.profile}.prof")
        print(json.dumps(worker(MODELS[args.profile], args.series[0], stats)))
        print("profile:", stats)
        return
    path = RESULTS / "auto_speed.json"
    saved = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    rows = [measure(m, n) for m in args.models for n in args.series]
    for r in rows:
        print(json.dumps({k: v for k, v in r.items() if k != "curve"}), flush=True)
    fresh = {(r["model"], r["series"]) for r in rows}
    kept = [r for r in saved["runs"].get(args.label, []) if (r["model"], r["series"]) not in fresh]
    saved["runs"][args.label] = kept + rows
    saved["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "load": os.getloadavg()}  # fmt: skip
    path.write_text(json.dumps(saved, indent=1) + "\n")
    (RESULTS / "auto_speed.md").write_text(_markdown(saved["runs"]))


if __name__ == "__main__":
    main()

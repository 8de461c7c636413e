"""``compress`` time and peak RSS of this checkout against an earlier commit, paired rounds.

    .venv/bin/python benchmarks/compress_time_vs.py [--rev 41b753f] [--rounds 3] [--out F]

The earlier commit's ``dsp_deploy`` is unpacked with ``git archive`` into a temporary
folder; each round runs, in fresh processes one after the other, the earlier version
(its defaults), this one with ``folds=0`` (the same work as before the k-fold report)
and this one with its defaults, on the shipped Inception and InceptionTime with their
calibration sets, one thread. Each process times its second ``compress`` call (the first
warms caches): wall time and the process's CPU time (``time.process_time``; with one
onnxruntime thread the CPU seconds are the work done, and they suffer far less than
wall time from other load on a shared machine). Ratios are per round against the
earlier version's run of that round.
Results: ``benchmarks/results/compress_time_vs.json`` (``--out``: another file, e.g. for
a comparison with another revision).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "compress_time_vs.json"
MODELS = (
    ("inception", "models/inception_gunpoint.onnx", "calibration/inception_gunpoint.npz"),
    ("inceptiontime", "models/inceptiontime_gunpoint.onnx", "calibration/inception_gunpoint.npz"),
)
TIMED = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from dsp_deploy.compress import compress
from dsp_deploy.io import load_calibration, load_model
model = load_model(sys.argv[2]); calibration = load_calibration(sys.argv[3], model)
options = {"threads": 1} if sys.argv[4] == "-" else {"threads": 1, "folds": int(sys.argv[4])}
compress(model, calibration, **options)
start, cpu = time.perf_counter(), time.process_time()
compress(model, calibration, **options)
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"s": seconds, "cpu_s": cpu, "rss_mb": peak}))
"""


def _run(root: Path, model: str, calib: str, folds: str) -> dict:
    args = [sys.executable, "-c", TIMED, str(root), str(ROOT / model), str(ROOT / calib), folds]
    done = subprocess.run(args, capture_output=True, text=True, cwd=tempfile.gettempdir())
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout)


def _summary(runs: dict[str, list[dict]], base: str) -> dict:
    return {name: _row(rows, runs[base]) for name, rows in runs.items()}


def _row(rows: list[dict], base: list[dict]) -> dict:
    def ratio(key: str) -> float:
        return statistics.median(r[key] / b[key] for r, b in zip(rows, base, strict=True))

    return {
        "median_s": statistics.median(r["s"] for r in rows),
        "ratio_median": ratio("s"),
        "median_cpu_s": statistics.median(r["cpu_s"] for r in rows),
        "cpu_ratio_median": ratio("cpu_s"),
        "peak_rss_mb": max(r["rss_mb"] for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="41b753f")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", args.rev, "dsp_deploy"], cwd=ROOT,
                                 capture_output=True, check=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        cases = ((args.rev, Path(tmp), "-"), ("this, folds 0", ROOT, "0"), ("this", ROOT, "-"))
        out = {"rev": args.rev, "rounds": args.rounds, "models": {}}
        for label, model, calib in MODELS:
            runs: dict[str, list[dict]] = {name: [] for name, _, _ in cases}
            for _ in range(args.rounds):
                for name, root, folds in cases:
                    runs[name].append(_run(root, model, calib, folds))
            out["models"][label] = _summary(runs, args.rev)
            print(label, json.dumps(out["models"][label]), flush=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

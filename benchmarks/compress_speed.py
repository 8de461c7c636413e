"""How long ``compress`` takes and how much memory it needs, against plain inference.

Targets (issue 4, "Speed and memory"), on an InceptionTime ensemble (5 members):

    time ratio = compress seconds (1,000 calibration series)
                 / one onnxruntime inference pass over the same 1,000 series   ≤ 3
    RSS ratio  = peak RSS of compress with 10,000 series / with 1,000 series   ≤ 1.1

Both sides use the same intra-op thread count and batch size. CPU seconds
(``time.process_time``) are recorded beside wall seconds, with their ratio
(``cpu_time_ratio``): on a loaded machine they tell the work apart from the waiting.
Each compress and each inference pass runs in a fresh subprocess, so peak RSS
(``ru_maxrss``) belongs to that run alone. Calibration data: standard-normal series of
the model's input shape (weights need not be trained to time the pass; a 1-epoch export
has the full architecture).

    .venv/bin/python benchmarks/compress_speed.py [--model M.onnx] [--threads 1]

Without ``--model`` it trains one with ``dsp-deploy train --arch inceptiontime --epochs 1
--dataset GunPoint`` (L = 150) into ``$TMPDIR/dsp-deploy-bench``. Results go to
``benchmarks/results/compress_speed.json``.
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
RESULTS = HERE / "results"
CACHE = Path(tempfile.gettempdir()) / "dsp-deploy-bench"  # a 8.5 MB model: not in git


def _calibration(model_path: str, n: int):
    import numpy as np

    from dsp_deploy.io import Calibration, load_model, model_inputs

    model = load_model(model_path)
    rng = np.random.default_rng(0)
    inputs = {}
    for value in model_inputs(model):
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim][1:]
        inputs[value.name] = rng.standard_normal((n, *dims), dtype=np.float32)
    return model, Calibration(inputs, None)


def _worker(task: str, model_path: str, n: int, threads: int, batch: int) -> dict:
    """One measurement in this (fresh) process; returns seconds and peak RSS."""
    model, calibration = _calibration(model_path, n)
    start, cpu = time.perf_counter(), time.process_time()
    if task == "inference":
        from dsp_deploy.inference import run_model

        run_model(model, calibration.inputs, batch_size=batch, threads=threads)
        extra = {}
    else:
        from dsp_deploy.compress.pipeline import compress
        from dsp_deploy.options import CompressOptions

        options = CompressOptions(batch_size=batch, threads=threads)
        result = compress(model, calibration, options)
        extra = {"params": list(result.params), "units_removed": len(result.plan.remove)}
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    row = {"task": task, "series": n, "seconds": seconds, "cpu_seconds": cpu}
    return {**row, "peak_rss_mb": peak_mb, **extra}


def _measure(task: str, model: Path, n: int, threads: int, batch: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", task, "--model", str(model), "--series", str(n)]
    cmd += ["--threads", str(threads), "--batch-size", str(batch)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    row = json.loads(out.strip().splitlines()[-1])
    print(json.dumps(row), file=sys.stderr)
    return row


def _default_model() -> Path:
    path = CACHE / "inceptiontime_gunpoint_1epoch.onnx"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        exe = Path(sys.executable).with_name("dsp-deploy")
        subprocess.run(
            [str(exe), "train", "--arch", "inceptiontime", "--dataset", "GunPoint"]
            + ["--epochs", "1", "-o", str(path), "--quiet"],
            check=True,
        )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--large", type=int, default=10000)
    parser.add_argument("--worker", choices=["inference", "compress"])
    parser.add_argument("--out", type=Path, default=RESULTS / "compress_speed.json")
    args = parser.parse_args()
    if args.worker:
        row = _worker(args.worker, str(args.model), args.series, args.threads, args.batch_size)
        print(json.dumps(row))
        return
    model = args.model or _default_model()
    run = (model, args.series, args.threads, args.batch_size)
    # Other work on a shared machine slows either side: inference runs before and after
    # compress, and the faster of the two is the base (a conservative ratio).
    inference = [_measure("inference", *run)]
    small = _measure("compress", *run)
    inference.append(_measure("inference", *run))
    base = min(r["seconds"] for r in inference)
    large = _measure("compress", model, args.large, args.threads, args.batch_size)
    result = {
        "model": model.name,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "threads": args.threads,
        "batch_size": args.batch_size,
        "inference": inference,
        "compress": small,
        "compress_large": large,
        "time_ratio": small["seconds"] / base,
        "cpu_time_ratio": small["cpu_seconds"] / min(r["cpu_seconds"] for r in inference),
        "rss_ratio": large["peak_rss_mb"] / small["peak_rss_mb"],
        "targets": {"time_ratio": 3.0, "rss_ratio": 1.1},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

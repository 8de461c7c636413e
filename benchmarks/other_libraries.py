"""Other libraries' architectures: tsai's conv TSC models, planted dead channels, ``compress``.

    /work/tsai-venv/bin/python benchmarks/other_libraries.py [--archs FCN XCM ...]
        [--out benchmarks/results/other_libraries] [--work DIR] [--static-only] [--fresh-bn]

tsai is no dependency of this project: the script runs in a separate venv holding
torch 2.13.0 (CPU), tsai and its pure-Python dependencies, and dsp-deploy installed
editable (``benchmarks/results/other_libraries.md`` gives the install lines). tsai's
``ResNet`` and ``XResNet1d`` import ``fastai.vision.models``, which star-imports
``torchvision.models``; PyPI's torchvision does not load beside the local torch build,
so, when ``import torchvision`` fails, an empty ``torchvision.models`` module is put in
``sys.modules`` first (no tsai model used here touches torchvision).

**Models** (``other_libraries_archs.ARCHS``): ``c_out = 3``, ``seq_len = 96``, small
widths where tsai allows, seeded (torch, numpy, random), eval mode. BatchNorm γ, β, μ, σ²
are drawn (γ, σ² ~ U(0.5, 1.5); β, μ ~ N(0, 0.1)) as a trained net's differ: tsai's fresh
γ = 1, β = 0, μ = 0, σ² = 1 are equal across the BNs of one width, and the TorchScript
exporter then shares one initializer through ``Identity`` nodes, a pattern of untrained
exports (``--fresh-bn`` keeps it).

**Plants**: channels exactly zero after their activation on every input.

* ``bn``: a BatchNorm's γ = 0 and β = b on the chosen channels: its output is the constant
  b; b = −0.5 where a ReLU follows (ReLU-dead, as trained nets' dead units are), b = 0
  where another activation with f(0) = 0 follows (LeakyReLU, PReLU, ELU);
* ``conv``: a Conv's weight rows (``weight_g`` under weight_norm) zeroed, bias b as above.

``max(1, round(C / 4))`` random channels of each planted module. Only modules whose
activated output reaches channel-mixing consumers alone (no residual ``Add``, no class
outputs) are planted, so each planted channel is removable; each plant is checked in
torch (hooks) on the calibration and the fresh inputs. In the ONNX graph a planted channel
is a Conv weight row of zeros (BN folded by the exporter) or a BatchNormalization scale of
0, which random init never makes: counting them before and after ``compress`` says how
many planted channels it removed, apart from any channel dead at random init.

**Run**: export with the TorchScript exporter (``dynamo=False``, opset 17, dynamic batch
axis; a second export with a dynamic length axis too where the torch forward accepts
length 160, the ``dynamic`` rows); 64 N(0, 1) calibration series (seed 0, ``.npz``); then
the command line as a user runs it, default options: ``dsp-deploy compress M --calib C
-o P --json`` and ``dsp-deploy inspect M --calib C --json`` (groups and what pins them).
The same model compressed *before* planting gives the channels dead at random init on the
calibration series and how far removing them moves fresh outputs (the control). Recorded:
params, planted and kept channels, other channels removed, compress's check (max |Δ| on
the calibration set), the written model vs the original on 32 fresh N(0, 1) series (seed
12345; lengths 96 and 160 for ``dynamic``), exit statuses, pinned groups with reasons. A
failing architecture is recorded and the next one runs. Results: ``<out>.json``, and
``<out>.md`` through ``other_libraries_report``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "testkit"))
from other_libraries_archs import (  # noqa: E402  benchmarks/ is on sys.path: a script
    ARCHS,
    LENGTH,
    SEED,
    Arch,
    check_plants,
    plant,
    randomize_norms,
    seed_all,
    stub_torchvision,
)
from other_libraries_report import write  # noqa: E402  (testkit/ is not a package)
from planted_channels import zero_channels  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OTHER_LENGTH = 160
CALIBRATION, FRESH, FRESH_SEED = 64, 32, 12345
ATOL, RTOL = 1e-5, 1e-4  # compress's defaults


def export(model, path: Path, c_in: int, dynamic_length: bool) -> None:
    import torch

    axes = {0: "N", 2: "L"} if dynamic_length else {0: "N"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(2, c_in, LENGTH),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": axes, "y": {0: "N"}},
        )


def series(n: int, c_in: int, length: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, c_in, length)).astype(np.float32)


def accepts_length(model, c_in: int, length: int) -> bool:
    import torch

    try:
        with torch.no_grad():
            model(torch.zeros(2, c_in, length))
    except Exception:
        return False
    return True


def onnx_run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def cli(*args: str) -> tuple[int, dict | None, str]:
    """``dsp-deploy ARGS --json``: exit status, the JSON object (if any), stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "dsp_deploy", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    try:
        payload = json.loads(done.stdout) if done.stdout.strip() else None
    except json.JSONDecodeError:
        payload = None
    return done.returncode, payload, done.stderr.strip()


def pins(inspection: dict | None) -> list[dict]:
    """Pinned groups: reason, sources, channels, pinned units (and how many are zero)."""
    if not inspection:
        return []
    zero = {}
    for u in inspection["units"]:
        zero.setdefault(u["group"], set())
        if u["max_abs"] == 0:
            zero[u["group"]].add(u["unit"])
    return [
        {
            "reason": g["blocked_by"],
            "sources": g["sources"],
            "channels": g["channels"],
            "pinned": g["pinned"],
            "zero_units": len(zero.get(g["index"], ())),
        }
        for g in inspection["groups"]
        if g["pinned"]
    ]


def removed(result: dict | None) -> int | None:
    if not result:
        return None
    return sum(before - after for before, after in (r["channels"] for r in result["layers"]))


def fresh_diffs(original: Path, written: Path, c_in: int, lengths: tuple[int, ...]) -> dict:
    """Per length: max |Δ| of the written model vs the original on fresh series, and
    whether every output is within compress's default ``atol + rtol·|y|``."""
    out = {}
    for n in lengths:
        x = series(FRESH, c_in, n, FRESH_SEED)
        y, z = onnx_run(original, x), onnx_run(written, x)
        within = bool(np.all(np.abs(y - z) <= ATOL + RTOL * np.abs(y)))
        out[str(n)] = {"max_abs_diff": max_diff(y, z), "within_tolerance": within}
    return out


def _calib_diff(result: dict) -> dict | None:
    """compress's check: max |Δ| on the decision and on the held-out samples."""
    if not result:
        return None
    return {k: (result[k] or {}).get("max_abs_diff") for k in ("decision", "holdout")}


def baseline(model, c_in: int, lengths: tuple[int, ...], calib_path: Path, work: Path) -> dict:
    """``compress`` before anything is planted: the channels dead at random init on the
    calibration series, and how far removing them moves the fresh outputs."""
    path, written = work / "unplanted.onnx", work / "unplanted.pruned.onnx"
    written.unlink(missing_ok=True)
    export(model, path, c_in, len(lengths) > 1)
    code, result, _ = cli("compress", str(path), "--calib", str(calib_path), "-o", str(written))
    fresh = fresh_diffs(path, written, c_in, lengths) if written.exists() else None
    return {
        "exit_unplanted": code,
        "removed_unplanted": removed(result),
        "fresh_max_abs_diff_unplanted": fresh,
    }


def _model(arch: Arch, c_in: int, fresh_bn: bool):
    seed_all(SEED)
    model = arch.build(c_in).eval()
    if not fresh_bn:
        randomize_norms(model, np.random.default_rng(SEED + 1))
    return model


def _plant_and_export(model, arch: Arch, calib: np.ndarray, lengths, original: Path) -> dict:
    """Plant, check the plants in torch, export; the plants and the export's parity."""
    import torch

    c_in = calib.shape[1]
    records = plant(model, arch.plants, np.random.default_rng(SEED))
    check_plants(model, records, calib, *(series(FRESH, c_in, n, FRESH_SEED) for n in lengths))
    export(model, original, c_in, len(lengths) > 1)
    with torch.no_grad():
        reference = model(torch.from_numpy(calib)).numpy()
    return {
        "plants": records,
        "planted": sum(len(r["channels"]) for r in records),
        "planted_in_onnx": zero_channels(original),
        "export_max_abs_diff": max_diff(reference, onnx_run(original, calib)),
    }


def _compress_and_inspect(original: Path, calib_path: Path, written: Path) -> dict:
    written.unlink(missing_ok=True)  # a --work dir kept from an earlier run
    code, result, stderr = cli(
        "compress", str(original), "--calib", str(calib_path), "-o", str(written)
    )
    inspect_code, inspection, inspect_stderr = cli(
        "inspect", str(original), "--calib", str(calib_path)
    )
    result = result or {}
    return {
        "exit": code,
        "stderr": stderr,
        "inspect_exit": inspect_code,
        "inspect_stderr": inspect_stderr,
        "params": result.get("params"),
        "removed": removed(result),
        "verified": result.get("verified"),
        "failures": result.get("failures"),
        "calib_max_abs_diff": _calib_diff(result),
        "random_report_max_abs_diff": (result.get("random_inputs") or {}).get("max_abs_diff"),
        "pins": pins(inspection),
    }


def run_case(arch: Arch, c_in: int, dynamic_length: bool, work: Path, fresh_bn: bool) -> dict:
    """One row: build, plant, export, compress, inspect, compare; errors recorded."""
    tag = f"{arch.name}_c{c_in}{'_dynL' if dynamic_length else ''}"
    row: dict = {
        "arch": arch.name,
        "c_in": c_in,
        "note": arch.note,
        "length_axis": "dynamic" if dynamic_length else "static",
    }
    original, calib_path, written = (work / f"{tag}{s}" for s in (".onnx", ".npz", ".pruned.onnx"))
    lengths = (LENGTH, OTHER_LENGTH) if dynamic_length else (LENGTH,)
    start = time.perf_counter()
    try:
        model = _model(arch, c_in, fresh_bn)
        calib = series(CALIBRATION, c_in, LENGTH, SEED)
        np.savez(calib_path, x=calib)
        row.update(baseline(model, c_in, lengths, calib_path, work))
        row.update(_plant_and_export(model, arch, calib, lengths, original))
        row.update(_compress_and_inspect(original, calib_path, written))
        if written.exists():
            row["fresh_max_abs_diff"] = fresh_diffs(original, written, c_in, lengths)
            row["planted_kept"] = zero_channels(written)
    except Exception as e:  # recorded, and the next architecture runs
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        row["traceback"] = traceback.format_exc(limit=4)
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def cases(archs: tuple[Arch, ...], static_only: bool) -> list[tuple[Arch, int, bool]]:
    out = []
    for arch in archs:
        for c_in in arch.c_ins:
            out.append((arch, c_in, False))
            dynamic = not static_only and c_in == 1 and not arch.fixed_length
            if dynamic and accepts_length(_model(arch, c_in, True), c_in, OTHER_LENGTH):
                out.append((arch, c_in, True))
    return out


def versions(stubbed: bool) -> dict:
    from importlib import metadata

    names = ("tsai", "fastai", "fastcore", "torch", "onnx", "onnx-ir", "onnxruntime", "numpy")
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        **{n: metadata.version(n) for n in names},
        "python": platform.python_version(),
        "dsp_deploy_commit": commit,
        "torchvision": "stubbed (empty torchvision.models)" if stubbed else "installed",
        "exporter": "torch.onnx.export(dynamo=False), opset 17",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--archs", nargs="+", default=[a.name for a in ARCHS], choices=[a.name for a in ARCHS]
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/other_libraries"))
    parser.add_argument("--work", default=None, help="keep the models here [a temp dir]")
    parser.add_argument("--static-only", action="store_true", help="no dyn-L exports")
    parser.add_argument(
        "--fresh-bn",
        action="store_true",
        help="keep tsai's untrained BatchNorm (γ 1, β 0, μ 0, σ² 1)",
    )
    args = parser.parse_args(argv)
    stubbed = stub_torchvision()
    warnings.filterwarnings("ignore")
    chosen = tuple(a for a in ARCHS if a.name in args.archs)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = []
        for arch, c_in, dyn in cases(chosen, args.static_only):
            rows.append(run_case(arch, c_in, dyn, work, args.fresh_bn))
            print(summary_line(rows[-1]), flush=True)
    meta = {
        "command": " ".join(["python", "benchmarks/other_libraries.py", *(argv or sys.argv[1:])]),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": versions(stubbed),
        "seconds": round(time.perf_counter() - start, 1),
    }
    out = Path(args.out).with_suffix(".json")
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")

    print(write(out))
    return 0


def summary_line(row: dict) -> str:
    if "error" in row:
        return f"{row['arch']} c_in={row['c_in']} {row['length_axis']}: ERROR {row['error']}"
    return (
        f"{row['arch']} c_in={row['c_in']} {row['length_axis']}: exit {row['exit']}, "
        f"params {row['params']}, planted {row['planted']} (kept {row.get('planted_kept')}), "
        f"removed {row['removed']} (unplanted {row['removed_unplanted']}), "
        f"fresh {row.get('fresh_max_abs_diff')}, pins {len(row['pins'])} ({row['seconds']} s)"
    )


if __name__ == "__main__":
    sys.exit(main())

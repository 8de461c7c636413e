"""Latency of the shipped models before and after ``compress.fuse`` (BN and Relu through Concat).

    python benchmarks/fuse_concat.py                          # all shipped GunPoint models
    python benchmarks/fuse_concat.py --rounds 9 --models inception_gunpoint
    python benchmarks/fuse_concat.py --emulated               # on an emulated Cortex-A72

For each model (dense and ``.pruned``), four variants: as shipped, fused, ``--conv2d``,
fused then ``--conv2d`` (the order ``compress`` uses). onnxruntime's CPU provider, one
intra-op thread, batch 1 and 64, timed on the calling thread's CPU clock in shuffled,
interleaved rounds in one process (``latency_gap.py``). Each round gives a paired ratio
(fused / original, measured back to back), so load that drifts between rounds cancels; the
report is the median ratio with its quartiles. Parity: max |Δ| between original and fused
on the logits (the Softmax inputs) and the outputs, on random standard-normal series.

``--emulated`` times LITE and Inception (dense and pruned; the ensembles are 5× slower)
on the emulated Raspberry Pi 4 of ``dsp_deploy.emulator``, 200-300× slower than native:
this host writes the variants into a temporary folder and ONE emulated, single-threaded
python runs ``fuse_concat_worker.py`` over them all (the same timing loop, batch 1, LITE
also 64; ~15 min on a busy 2-core host). It also counts the blocked (NCHWc) Convs in
onnxruntime's optimised ``--conv2d`` graphs there and on this host. Emulated timings
compare the variants within one run only; they are no Pi latencies.

Writes ``benchmarks/results/fuse_concat.json`` (``--emulated``: ``fuse_concat_arm.json``)
and rebuilds ``fuse_concat.md`` from both stored files, so neither run redoes the other.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from dsp_deploy.compress.fuse import fuse_concat
from dsp_deploy.compress.layout import conv1d_as_conv2d
from dsp_deploy.emulator import ensure_emulator
from dsp_deploy.io import load_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuse_concat_worker import cpu_us, paired_rounds  # noqa: E402  (benchmarks/ is not a package)
from fuse_concat_worker import session as worker_session  # noqa: E402
from latency_gap import machine, session  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ("lite_gunpoint", "inception_gunpoint", "litetime_gunpoint", "inceptiontime_gunpoint")
LENGTH = 150
PAIRS = (("fused", "original"), ("fused --conv2d", "--conv2d"))
WORKER = ROOT / "benchmarks" / "fuse_concat_worker.py"
# Emulation is 200-300x slower: the small models only, batch 64 for LITE alone.
EMULATED_MODELS = ("lite_gunpoint", "lite_gunpoint.pruned", "inception_gunpoint",
                   "inception_gunpoint.pruned")  # fmt: skip
ARM_PAIRS = (*PAIRS, ("--conv2d", "original"))


def variants(model: onnx.ModelProto) -> tuple[dict[str, onnx.ModelProto], dict[str, int]]:
    """The four variants of the module doc, and how many BN / Relu the rewrite took."""
    fused = fuse_concat(model)
    return {
        "original": model,
        "fused": fused.model,
        "--conv2d": conv1d_as_conv2d(model).model,
        "fused --conv2d": conv1d_as_conv2d(fused.model).model,
    }, {"batchnorm": len(fused.report.batchnorms), "relu": len(fused.report.relus)}


def with_logits(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy that also outputs every Softmax input (probabilities saturate; logits do not)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    names = {o.name for o in out.graph.output}
    for node in out.graph.node:
        if node.op_type == "Softmax" and node.input[0] not in names:
            out.graph.output.append(onnx.ValueInfoProto(name=node.input[0]))
    return out


def parity(original: onnx.ModelProto, fused: onnx.ModelProto) -> dict[str, float]:
    """Max |Δ| and max |Δ| / max |y| over every output and logit, on 64 random series."""
    x = np.random.default_rng(4).standard_normal((64, 1, LENGTH)).astype(np.float32)
    a, b = session(with_logits(original)), session(with_logits(fused))
    name = a.get_inputs()[0].name
    ys, zs = a.run(None, {name: x}), b.run(None, {name: x})
    diff = max(float(np.abs(y - z).max()) for y, z in zip(ys, zs, strict=True))
    scale = max(float(np.abs(y).max()) for y in ys)
    return {"max_abs_diff": diff, "max_rel_diff": diff / scale}


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def summary(times: dict[str, list[float]], pairs: tuple[tuple[str, str], ...]) -> dict:
    """Median µs per variant, and quartiles of each pair's per-round ratios."""
    ratios = {}
    for new, old in pairs:
        per_round = [n / o for n, o in zip(times[new], times[old], strict=True)]
        ratios[f"{new} / {old}"] = [round(q, 4) for q in quartiles(per_round)]
    return {
        "us": {k: round(statistics.median(v), 1) for k, v in times.items()},
        "ratio_quartiles": ratios,
    }


def latency(models: dict[str, onnx.ModelProto], batch: int, rounds: int) -> dict:
    x = np.random.default_rng(3).standard_normal((batch, 1, LENGTH)).astype(np.float32)
    fns = {}
    for key, model in models.items():
        s = session(model)
        feed = {s.get_inputs()[0].name: x}
        fns[key] = lambda s=s, feed=feed: s.run(None, feed)
    probe = cpu_us(fns["original"], 2)
    calls = max(1, min(40, round(100_000 / probe)))  # ~0.1 s of CPU per variant and round
    times = paired_rounds(fns, calls, rounds)
    return {"batch": batch, "calls_per_round": calls, **summary(times, PAIRS)}


def measure(name: str, rounds: int) -> dict:
    model = load_model(ROOT / "models" / f"{name}.onnx")
    models, rewritten = variants(model)
    return {
        "rewritten": rewritten,
        "parity": parity(models["original"], models["fused"]),
        "latency": [latency(models, batch, rounds) for batch in (1, 64)],
    }


def emulated_jobs(
    names: list[str], folder: Path, rounds: int, seconds: float
) -> tuple[list[dict], dict[str, dict[str, int]]]:
    """Write every variant of every model into ``folder``; the worker's jobs for them, and
    how many BN / Relu the rewrite took in each model."""
    jobs, rewritten = [], {}
    for name in names:
        models, rewritten[name] = variants(load_model(ROOT / "models" / f"{name}.onnx"))
        paths, logits = {}, {}
        for i, (key, model) in enumerate(models.items()):
            paths[key] = str(folder / f"{name}.{i}.onnx")
            logits[key] = str(folder / f"{name}.{i}.logits.onnx")
            onnx.save(model, paths[key])
            onnx.save(with_logits(model), logits[key])
        for batch in (1, 64) if name.startswith("lite_") else (1,):
            job = {"name": name, "batch": batch, "rounds": rounds, "seconds": seconds}
            jobs.append(job | {"variants": paths, "parity": logits})
    return jobs, rewritten


def nchwc_convs(path: str) -> int:
    """Convs that onnxruntime put in its blocked layout, in a graph it saved optimised."""
    graph = onnx.load(f"{path}.opt.onnx").graph
    return sum(n.domain == "com.microsoft.nchwc" and n.op_type == "Conv" for n in graph.node)


def run_emulated(jobs: list[dict], folder: Path) -> tuple[dict, list[dict]]:
    """The worker's machine and per-job answers, all jobs in one single-threaded emulated
    process (one onnxruntime thread, numpy's BLAS held to one thread, one emulated CPU)."""
    emulator = ensure_emulator(cpus=1)
    (folder / "jobs.json").write_text(json.dumps(jobs))
    env = emulator.env() | {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    command = emulator.command([str(WORKER), str(folder / "jobs.json")])
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"emulated worker failed with exit {proc.returncode}")
    platform, *answers = (json.loads(line) for line in proc.stdout.splitlines())
    version = subprocess.run([str(emulator.qemu), "-version"], capture_output=True, text=True)
    platform["emulator"] = f"{version.stdout.splitlines()[0]}, -cpu {emulator.cpu}"
    return platform, answers


def measure_emulated(names: list[str], rounds: int, seconds: float) -> dict:
    """The ``--emulated`` results: per model what was rewritten, blocked and timed."""
    with tempfile.TemporaryDirectory(prefix="fuse_concat_arm.") as tmp:
        jobs, rewritten = emulated_jobs(names, Path(tmp), rounds, seconds)
        platform, answers = run_emulated(jobs, Path(tmp))
        paths = {job["name"]: job["variants"] for job in jobs}
        blocked = {name: {k: nchwc_convs(p) for k, p in v.items()} for name, v in paths.items()}
        for variant_paths in paths.values():  # the same graphs on this (x86) host
            for p in variant_paths.values():
                worker_session(p)  # overwrites the emulated run's optimised graph
        here = {name: {k: nchwc_convs(p) for k, p in v.items()} for name, v in paths.items()}
    models: dict = {}
    for answer in answers:
        name = answer.pop("name")
        part = models.setdefault(name, {
            "rewritten": rewritten[name],
            "nchwc_convs": {"pi4-emulated": blocked[name], "host": here[name]},
            "latency": [],
        })  # fmt: skip
        part["latency"].append(answer | summary(answer["us_per_round"], ARM_PAIRS))
    return {"platform": platform, "host": machine(), "models": models}


def markdown(doc: dict) -> str:
    lines = [
        f"Machine: {doc['platform']['cpu']}, onnxruntime {doc['platform']['onnxruntime']}, "
        f"1 thread, CPU time of the calling thread. The machine was shared with a long "
        f"background job (load average {doc['platform']['load_average_at_start'][0]:.1f} on "
        f"{doc['platform']['cpu_count']} cores at the start), so the variants run in "
        f"{doc['rounds']} shuffled, interleaved rounds and each ratio is the median of the "
        "per-round ratios [quartiles]; a ratio < 1 means fused is faster.",
        "",
        "| model | batch | BN folded / Relu moved | original µs | fused / original | "
        "fused --conv2d / --conv2d | max abs Δ (logits) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, part in doc["models"].items():
        done = part["rewritten"]
        for row in part["latency"]:
            cells = [
                f"{q[1]:.3f} [{q[0]:.3f}, {q[2]:.3f}]" for q in row["ratio_quartiles"].values()
            ]
            lines.append(
                f"| {name} | {row['batch']} | {done['batchnorm']} / {done['relu']} | "
                f"{row['us']['original']:.0f} | {' | '.join(cells)} | "
                f"{part['parity']['max_abs_diff']:.1e} |"
            )
    lines += [
        "",
        "LITE's (and each LITETime member's) Concat also reads Relu(Concat(hand-crafted "
        "filters)), which is no Conv: its BN folds into the three learned branches (96 "
        "channels) and stays, sliced, over the 17 hand-crafted channels alone; the inner "
        "Relu moves onto the 17 one-channel Convs and the outer one onto every Concat input. "
        "Under `--conv2d` a moved Relu goes inside the 2-D wrapper of a blocked Conv (before "
        "its Squeeze), where onnxruntime fuses it into the Conv.",
    ]
    return "\n".join(lines) + "\n"


def markdown_arm(doc: dict) -> str:
    p, blocked = doc["platform"], {}
    for name, part in doc["models"].items():
        for target, counts in part["nchwc_convs"].items():
            blocked.setdefault(target, {})[name] = counts["--conv2d"]
    here = ", ".join(f"{n} {c}" for n, c in blocked["host"].items())
    lines = [
        "## Emulated Raspberry Pi 4 (Cortex-A72)",
        "",
        f"`--emulated`: {p['cpu']} emulated by {p['emulator']} on the host above (load "
        f"average {doc['host']['load_average_at_start'][0]:.1f} on {doc['host']['cpu_count']} "
        f"cores at the start), onnxruntime {p['onnxruntime']} (aarch64 wheel), 1 thread, 1 "
        f"emulated CPU, CPU time of the emulating thread; {doc['rounds']} shuffled, "
        "interleaved rounds in one "
        f"emulated process, ~{doc['seconds_per_variant_round']} s of CPU per variant and "
        "round; each ratio is the median of the per-round ratios [quartiles]. Emulated "
        "timings compare these variants with each other within this one run only: qemu's "
        "cost per instruction is not the A72's, so the ms are no Pi latencies, and numbers "
        "from other runs (`bench_models`) are not comparable with them.",
        "",
        "| model | batch | original ms (emulated) | fused / original | "
        "fused --conv2d / --conv2d | --conv2d / original | max abs Δ logits (all variants) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, part in doc["models"].items():
        for row in part["latency"]:
            cells = [
                f"{q[1]:.3f} [{q[0]:.3f}, {q[2]:.3f}]" for q in row["ratio_quartiles"].values()
            ]
            lines.append(
                f"| {name} | {row['batch']} | {row['us']['original'] / 1e3:.1f} | "
                f"{' | '.join(cells)} | {max(row['max_abs_diff'].values()):.1e} |"
            )
    arm = sum(blocked["pi4-emulated"].values())
    why = ": `--conv2d` only adds an Unsqueeze and a Squeeze per Conv there" if not arm else ""
    lines += [
        "",
        f"Blocked (NCHWc) Convs in onnxruntime's optimised `--conv2d` graphs: {arm} on the "
        f"emulated A72{why}; on the x86 host: {here}.",
    ]
    return "\n".join(lines) + "\n"


def write_markdown() -> str:
    """``fuse_concat.md`` from the stored x86 and emulated results (either may be missing)."""
    parts = []
    for file, render in (("fuse_concat.json", markdown), ("fuse_concat_arm.json", markdown_arm)):
        if (RESULTS / file).exists():
            parts.append(render(json.loads((RESULTS / file).read_text())))
    text = "\n".join(parts)
    (RESULTS / "fuse_concat.md").write_text(text)
    return text


def header(rounds: int) -> dict:
    return {
        "benchmark": "fuse_concat",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", help="default: all shipped GunPoint models "
                        f"(--emulated: {' '.join(EMULATED_MODELS)})")  # fmt: skip
    parser.add_argument("--rounds", type=int, help="default: 15 (--emulated: 35)")
    parser.add_argument("--emulated", action="store_true", help="on the emulated Cortex-A72")
    parser.add_argument("--seconds", type=float, default=0.5,
                        help="--emulated: CPU seconds per variant and round")  # fmt: skip
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.emulated:
        rounds, names = args.rounds or 35, args.models or list(EMULATED_MODELS)
        doc = header(rounds) | {"target": "pi4-emulated", "seconds_per_variant_round": args.seconds}
        doc |= measure_emulated(names, rounds, args.seconds)
        (RESULTS / "fuse_concat_arm.json").write_text(json.dumps(doc, indent=2) + "\n")
    else:
        rounds = args.rounds or 15
        names = args.models or [f"{m}{s}" for m in MODELS for s in ("", ".pruned")]
        doc = header(rounds) | {"platform": machine(), "models": {}}
        for name in names:
            doc["models"][name] = measure(name, rounds)
            print(name, json.dumps(doc["models"][name]), flush=True)
        (RESULTS / "fuse_concat.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(write_markdown())


if __name__ == "__main__":
    main()

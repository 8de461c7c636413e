"""Pruned / dense latency of the shipped models on the emulated Cortex-A72, in one process.

    python benchmarks/emulated_pairs.py                        # all pairs, ~6 min of CPU
    python benchmarks/emulated_pairs.py --models lite_gunpoint --rounds 3 --out /tmp/x

``bench_models`` times each configuration in its own process by wall clock, so on a busy
host its emulated pruned / dense ratios are mostly noise. Here ``models/X.onnx`` and
``models/X.pruned.onnx`` run interleaved in shuffled rounds in ONE emulated, single-threaded
python (``fuse_concat_worker.py``, the loop of ``fuse_concat --emulated``), timed on the
emulating thread's CPU clock. Each round gives a paired ratio t_pruned / t_dense measured
back to back, so load that drifts between rounds cancels; the report is the median ratio
with its quartiles, beside the MACs ratio (``dsp_deploy.cost.model_cost``, per sample) and
max |Δ| of the pruned model's outputs and logits against the dense one's: the worker's, on
random N(0,1) series, which wake channels that were dead on every calibration series, and
``compress``'s own on its calibration (decision) series, from ``models/X.compress.json``.

Emulation is 200-300x slower than native, so batch 1 for every pair, batch 64 for LITE
alone, and fewer rounds for the 5-member ensembles (``PLAN``). Emulated timings compare the
pair within one run only; qemu's cost per instruction is not the A72's, so the ms are no
Pi latencies.

Writes ``emulated_pairs.json`` (per-round µs of every job) and ``emulated_pairs.md`` into
``benchmarks/results`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from dsp_deploy.cost import model_cost
from dsp_deploy.io import load_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuse_concat import run_emulated, summary, with_logits  # noqa: E402  (not a package)
from latency_gap import machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PAIR = (("pruned", "dense"),)  # the ratio reported, in fuse_concat.summary's terms


@dataclass(frozen=True)
class Job:
    """One pair at one batch: ``rounds`` rounds of ~``seconds`` CPU s per model (≥ 1 call)."""

    model: str  # models/<model>.onnx vs models/<model>.pruned.onnx
    batch: int
    rounds: int
    seconds: float


# Emulated calls: LITE ~20 ms (batch 64 ~1 s), Inception ~0.6 s, InceptionTime ~3 s.
PLAN = (
    Job("lite_gunpoint", 1, 25, 1.0),
    Job("lite_gunpoint", 64, 25, 1.0),
    Job("inception_gunpoint", 1, 25, 1.0),
    Job("litetime_gunpoint", 1, 25, 1.0),
    Job("inceptiontime_gunpoint", 1, 15, 2.5),
)


def model_paths(name: str) -> dict[str, Path]:
    """The shipped pair, dense first: the worker takes its first variant as the reference."""
    return {"dense": ROOT / "models" / f"{name}.onnx",
            "pruned": ROOT / "models" / f"{name}.pruned.onnx"}  # fmt: skip


def model_names(plan: tuple[Job, ...]) -> list[str]:
    return list(dict.fromkeys(j.model for j in plan))


def write_pair(name: str, folder: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Copies of the pair in ``folder`` (the worker writes ``<path>.opt.onnx`` beside each),
    and of the same models with their logits as extra outputs, for parity."""
    timed, logits = {}, {}
    for key, source in model_paths(name).items():
        model = load_model(source)
        timed[key] = str(folder / f"{name}.{key}.onnx")
        logits[key] = str(folder / f"{name}.{key}.logits.onnx")
        onnx.save(model, timed[key])
        onnx.save(with_logits(model), logits[key])
    return timed, logits


def worker_jobs(plan: tuple[Job, ...], folder: Path) -> list[dict]:
    """``fuse_concat_worker``'s JOBS list for ``plan``, each pair written once."""
    written = {name: write_pair(name, folder) for name in model_names(plan)}
    return [
        {"name": j.model, "batch": j.batch, "rounds": j.rounds, "seconds": j.seconds,
         "variants": written[j.model][0], "parity": written[j.model][1]}
        for j in plan
    ]  # fmt: skip


def macs_ratio(name: str) -> float:
    """MACs per sample of the pruned model over the dense one's."""
    macs = {k: model_cost(load_model(p)).macs for k, p in model_paths(name).items()}
    return macs["pruned"] / macs["dense"]


def calibration_diff(name: str) -> float:
    """Max |Δ| of the outputs that ``compress`` verified the pruned model with."""
    report = json.loads((ROOT / "models" / f"{name}.compress.json").read_text())
    return report["max_abs_diff"]


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(plan: tuple[Job, ...]) -> dict:
    """Run ``plan`` in one emulated process; its answers with their ratio summaries."""
    host = machine()
    before = children_cpu_s()
    with tempfile.TemporaryDirectory(prefix="emulated_pairs.") as tmp:
        platform, answers = run_emulated(worker_jobs(plan, Path(tmp)), Path(tmp))
    known = {
        name: {"macs_ratio": round(macs_ratio(name), 4), "calibration_diff": calibration_diff(name)}
        for name in model_names(plan)
    }
    jobs = [a | summary(a["us_per_round"], PAIR) | known[a["name"]] for a in answers]
    return {
        "benchmark": "emulated_pairs",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "platform": platform,
        "host": host,
        "emulator_cpu_s": round(children_cpu_s() - before, 1),
        "plan": [vars(j) for j in plan],
        "jobs": jobs,
    }


def markdown(doc: dict) -> str:
    p, host = doc["platform"], doc["host"]
    lines = [
        "## Shipped models, pruned vs dense on the emulated Cortex-A72",
        "",
        f"`benchmarks/emulated_pairs.py`: {p['cpu']} emulated by {p['emulator']} on "
        f"{host['cpu']} ({host['cpu_count']} cores, load average "
        f"{host['load_average_at_start'][0]:.1f} at the start: a busy host), onnxruntime "
        f"{p['onnxruntime']} (aarch64 wheel), 1 thread, 1 emulated CPU. Dense and pruned run "
        "interleaved in shuffled rounds in ONE emulated process, timed on the emulating "
        "thread's CPU clock (~1 s of CPU per model and round, at least one call; "
        f"{doc['emulator_cpu_s']:.0f} s of CPU in all). The ratio is the median of the "
        "per-round pruned / dense ratios [quartiles]; ms are medians per call. Emulated "
        "timings compare the pair within this one run only: qemu's cost per instruction is "
        "not the A72's, so the ms are no Pi latencies, and the emulated rows of "
        "`bench_models` (separate processes, wall clock) are not comparable with them.",
        "",
        "| model | batch | rounds × calls | dense ms | pruned ms | pruned / dense | "
        "MACs ratio | max abs Δ, N(0,1) series | max abs Δ, calibration (`compress`) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for job in doc["jobs"]:
        q1, q2, q3 = job["ratio_quartiles"]["pruned / dense"]
        lines.append(
            f"| {job['name']} | {job['batch']} | {job['rounds']} × {job['calls_per_round']} | "
            f"{job['us']['dense'] / 1e3:.1f} | {job['us']['pruned'] / 1e3:.1f} | "
            f"{q2:.3f} [{q1:.3f}, {q3:.3f}] | {job['macs_ratio']:.3f} | "
            f"{job['max_abs_diff']['pruned']:.1e} | {job['calibration_diff']:.1e} |"
        )
    lines += [
        "",
        "The pruned models are `compress`'s lossless `dead` criterion: channels that were zero "
        "on every calibration series. Random N(0,1) series wake some of them, hence the larger "
        "Δ there; on the calibration series the outputs agree to float rounding.",
    ]
    return "\n".join(lines) + "\n"


def selected(models: list[str] | None, rounds: int | None) -> tuple[Job, ...]:
    """``PLAN`` restricted to ``models``, with every job's rounds set to ``rounds``."""
    known = {j.model for j in PLAN}
    unknown = sorted(set(models or ()) - known)
    if unknown:
        raise SystemExit(f"unknown models {unknown}; known: {sorted(known)}")
    jobs = [j for j in PLAN if not models or j.model in models]
    return tuple(Job(j.model, j.batch, rounds or j.rounds, j.seconds) for j in jobs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", help="default: every model of PLAN")
    parser.add_argument("--rounds", type=int, help="every job's rounds (default: PLAN's)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for .json and .md")
    args = parser.parse_args()
    doc = measure(selected(args.models, args.rounds))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "emulated_pairs.json").write_text(json.dumps(doc, indent=2) + "\n")
    text = markdown(doc)
    (args.out / "emulated_pairs.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

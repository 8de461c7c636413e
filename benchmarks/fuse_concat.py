"""Latency of the shipped models before and after ``compress.fuse`` (BN and Relu through Concat).

    python benchmarks/fuse_concat.py                          # all shipped GunPoint models
    python benchmarks/fuse_concat.py --rounds 9 --models inception_gunpoint

For each model (dense and ``.pruned``), four variants: as shipped, fused, ``--conv2d``,
fused then ``--conv2d`` (the order ``compress`` uses). onnxruntime's CPU provider, one
intra-op thread, batch 1 and 64, timed on the calling thread's CPU clock in shuffled,
interleaved rounds in one process (``latency_gap.py``). Each round gives a paired ratio
(fused / original, measured back to back), so load that drifts between rounds cancels; the
report is the median ratio with its quartiles. Parity: max |Δ| between original and fused
on the logits (the Softmax inputs) and the outputs, on random standard-normal series.

Writes ``benchmarks/results/fuse_concat.json`` and ``fuse_concat.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from dsp_deploy.compress.fuse import fuse_concat
from dsp_deploy.compress.layout import conv1d_as_conv2d
from dsp_deploy.io import load_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency_gap import cpu_us, machine, session  # noqa: E402  (benchmarks/ is not a package)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ("lite_gunpoint", "inception_gunpoint", "litetime_gunpoint", "inceptiontime_gunpoint")
LENGTH = 150
PAIRS = (("fused", "original"), ("fused --conv2d", "--conv2d"))


def variants(model: onnx.ModelProto) -> tuple[dict[str, onnx.ModelProto], dict[str, int]]:
    """The four variants of the module doc, and how many BN / Relu the rewrite took."""
    fused = fuse_concat(model)
    return {
        "original": model,
        "fused": fused.model,
        "--conv2d": conv1d_as_conv2d(model)[0],
        "fused --conv2d": conv1d_as_conv2d(fused.model)[0],
    }, {"batchnorm": len(fused.batchnorms), "relu": len(fused.relus)}


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


def paired_rounds(
    fns: dict[str, Callable[[], object]], calls: int, rounds: int
) -> dict[str, list[float]]:
    """µs per call of each function in each of ``rounds`` shuffled rounds."""
    for fn in fns.values():
        cpu_us(fn, max(1, calls // 2))
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    shuffle = random.Random(0).shuffle
    for _ in range(rounds):
        shuffle(order)
        for key in order:
            times[key].append(cpu_us(fns[key], calls))
    return times


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


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
    ratios = {}
    for new, old in PAIRS:
        per_round = [n / o for n, o in zip(times[new], times[old], strict=True)]
        ratios[f"{new} / {old}"] = [round(q, 4) for q in quartiles(per_round)]
    return {
        "batch": batch,
        "calls_per_round": calls,
        "us": {k: round(statistics.median(v), 1) for k, v in times.items()},
        "ratio_quartiles": ratios,
    }


def measure(name: str, rounds: int) -> dict:
    model = load_model(ROOT / "models" / f"{name}.onnx")
    models, rewritten = variants(model)
    return {
        "rewritten": rewritten,
        "parity": parity(models["original"], models["fused"]),
        "latency": [latency(models, batch, rounds) for batch in (1, 64)],
    }


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
        "LITE and LITETime keep their BN: their Concat also reads Relu(Concat(hand-crafted "
        "filters)), which is no Conv, so only that inner Relu moves (onto 17 one-channel "
        "Convs). Under `--conv2d` a Squeeze sits between each Conv and its moved Relu, so "
        "onnxruntime cannot fuse them and only the BN folding counts.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = [f"{m}{s}" for m in MODELS for s in ("", ".pruned")]
    parser.add_argument("--models", nargs="+", default=default)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    doc: dict = {
        "benchmark": "fuse_concat",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "platform": machine(),
        "rounds": args.rounds,
        "models": {},
    }
    for name in args.models:
        doc["models"][name] = measure(name, args.rounds)
        print(name, json.dumps(doc["models"][name]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fuse_concat.json").write_text(json.dumps(doc, indent=2) + "\n")
    (RESULTS / "fuse_concat.md").write_text(markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()

"""Why a pruned model's latency ratio differs from its MACs ratio, and what closes the gap.

    python benchmarks/latency_gap.py                      # both shipped GunPoint models
    python benchmarks/latency_gap.py --rounds 30 --models lite_gunpoint

Three measurements, all on onnxruntime's CPU provider with one intra-op thread, timed on
the calling thread's CPU clock (with one thread onnxruntime computes on the calling
thread, and time spent descheduled on a shared machine does not count):

1. **Kernels**: ns per multiply-accumulate of single convs shaped like LITE's and
   InceptionTime's (depthwise k = 20, pointwise, dense k = 10; L = 150), with channel
   counts aligned to 8 or not, in their 1-D form and in the 2-D form of
   ``compress.layout`` — onnxruntime blocks channels by 8 (NCHWc) only for 2-D convs.
2. **Profile**: onnxruntime's profiler on the dense and the pruned model, per node; the
   *time-weighted ideal* is Σ_n t_dense(n) · r(n), with r(n) the node's MACs ratio (its
   output-size ratio for nodes without MACs): the latency ratio to expect if every
   node's time scaled with its work. It differs from the plain MACs ratio when the
   removed MACs sit in nodes that are cheap per MAC.
3. **Variants**: dense and pruned models as shipped, ``--conv2d``, ``--align 8`` and both,
   at batch 1 and 64, interleaved in shuffled rounds; latency ratio to dense beside the
   MACs ratio.

Writes ``benchmarks/results/latency_gap.json`` and ``latency_gap.md`` with the machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from fuse_concat_worker import paired_rounds  # benchmarks/ is on sys.path: a script
from onnx import TensorProto, helper, numpy_helper

from dsp_deploy.compress import compress
from dsp_deploy.compress.layout import conv1d_as_conv2d
from dsp_deploy.cost import model_cost
from dsp_deploy.inference import session_options
from dsp_deploy.io import load_calibration, load_model
from dsp_deploy.options import CompressOptions

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
LENGTH = 150


def machine() -> dict[str, object]:
    cpu = platform.processor()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    flags = Path("/proc/cpuinfo").read_text()
    return {
        "machine": platform.machine(),
        "cpu": cpu,
        "avx512f": " avx512f" in flags,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "onnxruntime": ort.__version__,
        "threads": 1,
    }


def session(model: onnx.ModelProto, profile: bool = False) -> ort.InferenceSession:
    options = session_options(1)
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "dsp_latency_gap")
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def interleaved(fns: dict[str, Callable[[], object]], calls: int, rounds: int) -> dict[str, float]:
    """Median µs per call of each function, over shuffled rounds of ``calls`` calls."""
    return {k: statistics.median(v) for k, v in paired_rounds(fns, calls, rounds).items()}


# --- 1. kernels --------------------------------------------------------------------------


def conv_model(c_in: int, c_out: int, k: int, group: int, two_d: bool) -> onnx.ModelProto:
    """One Conv on (N, C_in, L); ``two_d``: as (N, C_in, 1, L) between Unsqueeze/Squeeze."""
    w = np.random.default_rng(0).standard_normal((c_out, c_in // group, k)).astype(np.float32)
    pads = [(k - 1) // 2, k // 2]
    if two_d:
        w, pads = w[:, :, None, :], [0, pads[0], 0, pads[1]]
    nodes = [
        helper.make_node(
            "Conv", ["x4" if two_d else "x", "w"], ["y4" if two_d else "y"], group=group, pads=pads
        )
    ]
    inits = [numpy_helper.from_array(w, "w")]
    if two_d:
        inits.append(numpy_helper.from_array(np.array([2], np.int64), "axis"))
        nodes = [
            helper.make_node("Unsqueeze", ["x", "axis"], ["x4"]),
            *nodes,
            helper.make_node("Squeeze", ["y4", "axis"], ["y"]),
        ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c_in, LENGTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


KERNELS = (  # (label, C_in, C_out, k, group)
    ("depthwise k20", 111, 111, 20, 111),
    ("depthwise k20", 112, 112, 20, 112),
    ("pointwise", 111, 26, 1, 1),
    ("pointwise", 112, 32, 1, 1),
    ("dense k10", 27, 27, 10, 1),
    ("dense k10", 32, 32, 10, 1),
)


def kernels(rounds: int) -> list[dict[str, object]]:
    rows = []
    for batch, calls in ((1, 40), (64, 2)):
        fns, macs = {}, {}
        for label, c_in, c_out, k, group in KERNELS:
            x = np.random.default_rng(1).standard_normal((batch, c_in, LENGTH), np.float32)
            for form in ("1-D", "2-D"):
                s = session(conv_model(c_in, c_out, k, group, two_d=form == "2-D"))
                key = f"{label} {c_in}->{c_out} {form}"
                fns[key] = lambda s=s, x=x: s.run(None, {"x": x})
                macs[key] = c_out * (c_in // group) * k * LENGTH * batch
        for key, us in interleaved(fns, calls, rounds).items():
            rows.append(
                {
                    "batch": batch,
                    "conv": key,
                    "us": round(us, 1),
                    "ns_per_mac": round(us * 1e3 / macs[key], 4),
                }
            )
    return rows


# --- 2. profile ----------------------------------------------------------------------------


def node_times(model: onnx.ModelProto, x: np.ndarray, runs: int) -> dict[str, tuple[float, int]]:
    """Mean kernel µs per run and output elements, per node name, from the profiler."""
    s = session(model, profile=True)
    name = s.get_inputs()[0].name
    for _ in range(runs):
        s.run(None, {name: x})
    path = s.end_profiling()
    events = json.loads(Path(path).read_text())
    Path(path).unlink()
    total: dict[str, float] = defaultdict(float)
    size: dict[str, int] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node = e["name"][: -len("_kernel_time")]
            total[node] += e["dur"]
            shapes = e["args"].get("output_type_shape", [])
            size[node] = sum(int(np.prod(next(iter(d.values())))) for d in shapes)
    return {n: (t / runs, size[n]) for n, t in total.items()}


def profile(dense: onnx.ModelProto, pruned: onnx.ModelProto, batch: int, runs: int) -> dict:
    x = np.random.default_rng(2).standard_normal((batch, 1, LENGTH), np.float32)
    before, after = node_times(dense, x, runs), node_times(pruned, x, runs)
    macs_before = {n.name: n.macs for n in model_cost(dense, length=LENGTH).per_node}
    macs_after = {n.name: n.macs for n in model_cost(pruned, length=LENGTH).per_node}
    ideal = 0.0
    by_op: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    ops = {n.name: n.op_type for n in dense.graph.node}
    for node, (t, size) in before.items():
        base = node.split("_nchwc")[0]  # onnxruntime's renamed fused/reordered nodes
        if macs_before.get(base):
            ratio = macs_after.get(base, 0) / macs_before[base]
        else:
            ratio = after.get(node, (0.0, 0))[1] / size if size else 1.0
        ideal += t * ratio
        op = ops.get(base, "other")
        by_op[op][0] += t
        by_op[op][1] += after.get(node, (0.0, 0))[0]
    t_before = sum(t for t, _ in before.values())
    t_after = sum(t for t, _ in after.values())
    cost_b, cost_a = model_cost(dense, length=LENGTH), model_cost(pruned, length=LENGTH)
    return {
        "batch": batch,
        "kernel_us": [round(t_before, 1), round(t_after, 1)],
        "kernel_ratio": round(t_after / t_before, 4),
        "macs_ratio": round(cost_a.macs / cost_b.macs, 4),
        "time_weighted_ideal": round(ideal / t_before, 4),
        "by_op_us": {op: [round(a, 1), round(b, 1)] for op, (a, b) in sorted(by_op.items())},
    }


# --- 3. variants ---------------------------------------------------------------------------


def variants(name: str) -> dict[str, onnx.ModelProto]:
    dense = load_model(ROOT / "models" / f"{name}.onnx")
    calibration = load_calibration(ROOT / "calibration" / f"{name}.npz", dense)

    def pruned(**options: object) -> onnx.ModelProto:
        result = compress(dense, calibration, CompressOptions(**options))
        assert result.verified, result.failures
        return result.model

    return {
        "dense": dense,
        "dense --conv2d": conv1d_as_conv2d(dense).model,
        "pruned": pruned(),
        "pruned --conv2d": pruned(conv2d=True),
        "pruned --align 8": pruned(align=8),
        "pruned --align 8 --conv2d": pruned(align=8, conv2d=True),
    }


def latency(models: dict[str, onnx.ModelProto], rounds: int) -> list[dict[str, object]]:
    rows = []
    dense_macs = model_cost(models["dense"], length=LENGTH).macs
    for batch, calls in ((1, 40), (64, 2)):
        x = np.random.default_rng(3).standard_normal((batch, 1, LENGTH), np.float32)
        fns = {}
        for key, model in models.items():
            s = session(model)
            feed = {s.get_inputs()[0].name: x}
            fns[key] = lambda s=s, feed=feed: s.run(None, feed)
        times = interleaved(fns, calls, rounds)
        for key, us in times.items():
            macs = model_cost(models[key], length=LENGTH).macs / dense_macs
            ratio = us / times["dense"]
            rows.append(
                {
                    "batch": batch,
                    "variant": key,
                    "us": round(us, 1),
                    "latency_ratio": round(ratio, 4),
                    "macs_ratio": round(macs, 4),
                    "gap": round(ratio / macs, 4),
                }
            )
    return rows


def markdown(doc: dict) -> str:
    lines = [
        f"Machine: {doc['platform']['cpu']}, onnxruntime {doc['platform']['onnxruntime']}, "
        "1 thread, CPU time of the calling thread; medians of interleaved rounds.",
        "",
    ]
    for name, part in doc["models"].items():
        lines += [
            f"### {name}",
            "",
            "| batch | variant | µs | latency ratio | MACs ratio | gap |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['batch']} | {r['variant']} | {r['us']:.0f} | {r['latency_ratio']:.3f} | "
            f"{r['macs_ratio']:.3f} | {r['gap']:.2f} |"
            for r in part["variants"]
        ]
        lines += [
            "",
            "| batch | kernel ratio (profiler) | MACs ratio | time-weighted ideal |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {p['batch']} | {p['kernel_ratio']:.3f} | {p['macs_ratio']:.3f} | "
            f"{p['time_weighted_ideal']:.3f} |"
            for p in part["profile"]
        ]
        lines.append("")
    lines += [
        "### Single convs (ns per MAC)",
        "",
        "| batch | conv | µs | ns/MAC |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['batch']} | {r['conv']} | {r['us']:.0f} | {r['ns_per_mac']:.3f} |"
        for r in doc["kernels"]
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["lite_gunpoint", "inception_gunpoint"])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--profile-runs", type=int, default=20)
    args = parser.parse_args()
    doc: dict = {
        "benchmark": "latency_gap",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "platform": machine(),
        "models": {},
    }
    for name in args.models:
        models = variants(name)
        doc["models"][name] = {
            "variants": latency(models, args.rounds),
            "profile": [
                profile(models["dense"], models["pruned"], b, args.profile_runs) for b in (1, 64)
            ],
        }
        print(json.dumps(doc["models"][name]["variants"], indent=1), flush=True)
    doc["kernels"] = kernels(args.rounds)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latency_gap.json").write_text(json.dumps(doc, indent=2) + "\n")
    (RESULTS / "latency_gap.md").write_text(markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()

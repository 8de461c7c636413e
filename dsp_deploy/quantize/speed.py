"""Whether INT8 pays on this machine: what onnxruntime fuses, and a quick paired timing.

**Fusions.** A QDQ model is a float graph with QuantizeLinear/DequantizeLinear pairs;
onnxruntime's graph optimiser turns ``DQ → Conv → Q`` into one ``QLinearConv`` only
where the CPU provider has a kernel for those types (on x86, U8S8 fuses; S8S8 fuses
for few convs). A Conv left between a DQ and a Q runs in float *plus* the conversions,
slower than the float model. ``fusions`` writes the optimised graph
(``SessionOptions.optimized_model_filepath``, as ``compress --conv2d`` checks blocked
kernels) and counts, per original Conv, whether an integer op (QLinearConv, or
ConvInteger / NhwcQLinearConv) took its place: ``unfused`` names the Convs that still
read a DequantizeLinear. Conv node names survive the rewrite where onnxruntime keeps
them; the count is what is reported.

**Timing.** ``paired_ratio``: both sessions (one intra-op thread) in this process,
``rounds`` paired rounds of blocks of calls in a shuffled order on this thread's CPU
clock (``bench.worker.paired_rounds``); the median of the per-round ratios int8/float.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from dsp_deploy.bench.worker import block_size, paired_rounds
from dsp_deploy.inference import session, session_options

__all__ = ["Fusions", "fusions", "paired_ratio"]

INTEGER_CONVS = frozenset({"QLinearConv", "ConvInteger", "NhwcQLinearConv"})


@dataclass(frozen=True)
class Fusions:
    """Convs of the quantized model run as integer ops, and those left in float."""

    integer: int
    float_convs: int
    unfused: tuple[str, ...]  # Convs reading a DequantizeLinear after optimisation


def optimised_graph(model: onnx.ModelProto) -> ir.Model:
    """The graph onnxruntime runs (all optimisations, this machine's kernels)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="dsp-quantize.") as tmp:
        path = Path(tmp) / "optimised.onnx"
        options = session_options(1)
        options.optimized_model_filepath = str(path)
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return ir.from_proto(onnx.load(str(path)))


def _reads_dequantized(node: ir.Node) -> bool:
    """Whether an input of ``node`` comes from a DequantizeLinear (any domain)."""
    producers = (v.producer() for v in node.inputs if v is not None)
    return any(p is not None and p.op_type == "DequantizeLinear" for p in producers)


def fusions(model: onnx.ModelProto) -> Fusions:
    """The count (module doc) for ``model`` on this machine (op types of any domain:
    onnxruntime's fused kernels live in its own)."""
    graph = optimised_graph(model).graph
    integer = sum(n.op_type in INTEGER_CONVS for n in graph)
    convs = [n for n in graph if n.op_type in ("Conv", "FusedConv")]
    unfused = tuple(n.name for n in convs if _reads_dequantized(n))
    return Fusions(integer, len(convs), unfused)


def paired_ratio(
    reference: onnx.ModelProto,
    candidate: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    rounds: int = 9,
    block_ms: float = 20.0,
) -> float:
    """Median over paired rounds of candidate/reference time per call (module doc)."""
    calls = []
    for model in (reference, candidate):
        sess = session(model, 1)
        sess.run(None, feeds)
        calls.append(lambda s=sess: s.run(None, feeds))
    per_block = block_size(calls[0], 3, block_ms)
    ns = paired_rounds(calls, per_block, rounds)
    return float(np.median(np.array(ns[1]) / np.array(ns[0])))

"""The float model made ready for INT8, and onnxruntime's quantizer run on it.

``prepare``: BatchNormalization folded into the Convs before it, including a BN after a
Concat of Convs (``compress.fuse``, the ``--fuse`` logic), then onnxruntime's
``quant_pre_process`` (its basic graph optimisations fold ``Conv → BN``, fold constants;
symbolic and ONNX shape inference give the quantizer every tensor's type). The result
computes the same function as the input (float rounding apart; checked by the caller).

``quantize_qdq``: ``quantize_static`` in QDQ form with per-channel weights, the
flavour's types, the given per-tensor activation ranges (its calibration cache: no
calibration pass of its own) and the nodes to keep in float (``nodes_to_exclude``).
Only Conv, Gemm and MatMul are quantized (their inputs and outputs). With every op type
quantized, a Conv kept in float still read an int8 tensor (quantized at the Relu, Concat
or MaxPool before it, a Relu even dropped into that Q), so keeping layers in float did
not bring the model back towards float (Inception: 0.72 → 0.96 → 0.78 on the
calibration set for 0, 1, 2 layers in float; with this, 0.63 → 0.93 → 0.90 → … on the
decision part, flat after). Quantizing Relu and MaxPool as well (onnxruntime folds the
Relu into the QLinearConv, MaxPool runs on uint8) is faster (Inception GunPoint, input
convs in float, biases corrected: 0.45× / 0.43× float time at batch 1 / 64 against
0.54× / 0.47×) but less faithful: the class probabilities' MSE against float on the
test split 0.23 against 0.047.
Biases are quantized to int32 at ``scale_x · scale_w`` as onnxruntime does.
``wide`` nodes are quantized with 16-bit activations (A16W8: their input and output
tensors through ``TensorQuantOverrides``; weights stay int8), for layers that 8 bits
would cost too much accuracy.

**7-bit weights on signed inputs** (``Flavour.narrow_signed``, x86). Without VNNI,
onnxruntime's x86 U8S8 kernels (AVX2, AVX-512BW) multiply with ``vpmaddubsw``, which
sums two ``u8 · s8`` products into a *saturating* int16: ``a₁w₁ + a₂w₂`` clips at
32767 once ``a (|w₁| + |w₂|) > 32767``. A tensor that takes negative values is written
as uint8 with its zero point ``zp = round(−lo / scale)`` well above 0, so every code is
large and pairs of large same-sign weights saturate on every position — the fused
model then departs from the QDQ graph it was judged as (measured on Inception GunPoint,
nothing in float, biases corrected: 0.93 as written, 0.61 run by the fused kernels).
A post-ReLU tensor has ``zp = 0`` and small codes. So the Convs whose input range has
``lo < 0`` (``signed_input_convs``) get 7-bit weights (``reduce_range`` on that weight
through ``TensorQuantOverrides``: ``|w| ≤ 63``, ``255 · 126 < 32767``, no pair can
saturate); the others keep 8 bits. That is onnxruntime's own advice for U8S8 on
non-VNNI x86 (its ``reduce_range``), applied only where saturation happens; it is
harmless on VNNI (one bit of weight precision on those layers).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from dsp_deploy.quantize.ranges import TensorRange, write_cache

logger = logging.getLogger(__name__)

__all__ = ["WEIGHTED", "Flavour", "prepare", "quantize_qdq", "signed_input_convs"]

# Only the inputs and outputs of these are quantized: a node kept in float then reads a
# float tensor (with every op type quantized, the Relu, Concat and MaxPool before it
# would still quantize its input, and onnxruntime drops a Relu it folds into a Q).
WEIGHTED = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class Flavour:
    """How a target's INT8 is written: format, activation/weight types, 7-bit weights."""

    format: str  # "qdq" | "qoperator"
    activations: str  # "u8" | "s8"
    weights: str  # "s8"
    reduce_range: bool
    narrow_signed: bool = False  # 7-bit weights for Convs reading a signed tensor (doc)

    @property
    def label(self) -> str:
        a, w = self.activations.upper(), self.weights.upper()
        return f"{self.format.upper()} {a}{w}{' reduce-range' if self.reduce_range else ''}"


def prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with BN folded (module doc); ``model`` itself is not modified."""
    from onnxruntime.quantization import quant_pre_process

    from dsp_deploy.compress.fuse import fuse_concat

    fused = fuse_concat(model).model
    with tempfile.TemporaryDirectory(prefix="dsp-quantize.") as tmp:
        src, dst = Path(tmp) / "fused.onnx", Path(tmp) / "pre.onnx"
        onnx.save_model(fused, src)
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
        return onnx.load(str(dst))


def _types(flavour: Flavour, bits: int = 8):
    from onnxruntime.quantization import QuantType

    kinds = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
    if bits == 16:
        kinds = {"u8": QuantType.QUInt16, "s8": QuantType.QInt16}
    return kinds[flavour.activations], kinds.get(flavour.weights, QuantType.QInt8)


def signed_input_convs(
    model: onnx.ModelProto, ranges: Mapping[str, TensorRange]
) -> tuple[str, ...]:
    """The Convs whose data input's range takes negative values (module doc)."""
    return tuple(
        n.name
        for n in model.graph.node
        if n.op_type == "Conv" and n.input[0] in ranges and ranges[n.input[0]].lo < 0
    )


def _overrides(
    model: onnx.ModelProto,
    flavour: Flavour,
    wide: Sequence[str],
    ranges: Mapping[str, TensorRange] | None = None,
) -> dict:
    """``TensorQuantOverrides``: the activations of the ``wide`` nodes at 16 bits, and
    7-bit weights for the Convs reading a signed tensor (``narrow_signed``)."""
    wide16, _ = _types(flavour, 16)
    chosen = set(wide)
    tensors = {t for n in model.graph.node if n.name in chosen for t in (n.input[0], n.output[0])}
    found = {t: [{"quant_type": wide16}] for t in sorted(tensors)}
    narrow = signed_input_convs(model, ranges or {}) if flavour.narrow_signed else ()
    weights = {n.name: n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    return found | {weights[n]: [{"reduce_range": True}] for n in narrow if n not in chosen}


def quantize_qdq(
    model: onnx.ModelProto,
    ranges: Mapping[str, TensorRange],
    flavour: Flavour,
    exclude: Sequence[str] = (),
    op_types: Sequence[str] | None = WEIGHTED,
    wide: Sequence[str] = (),
) -> onnx.ModelProto:
    """``model`` quantized (module doc), the nodes ``exclude`` kept in float, ``wide``
    with 16-bit activations."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    activation, weight = _types(flavour)
    fmt = QuantFormat.QDQ if flavour.format == "qdq" else QuantFormat.QOperator
    with tempfile.TemporaryDirectory(prefix="dsp-quantize.") as tmp:
        cache, out = Path(tmp) / "ranges.json", Path(tmp) / "int8.onnx"
        write_cache(ranges, cache)
        quantize_static(
            model, out, None, quant_format=fmt, per_channel=True,
            reduce_range=flavour.reduce_range, activation_type=activation, weight_type=weight,
            nodes_to_exclude=list(exclude), calibration_cache_path=cache,
            op_types_to_quantize=None if op_types is None else list(op_types),
            extra_options={"WeightSymmetric": True,
                           "TensorQuantOverrides": _overrides(model, flavour, wide, ranges)},
        )  # fmt: skip
        return _drop_unused(ir.from_proto(onnx.load(str(out))))


def _drop_unused(model: ir.Model) -> onnx.ModelProto:
    """``model`` without initializers no node reads (replaced biases, float copies) and
    without the intermediate shapes ``quant_pre_process`` annotated (``value_info``:
    optional, 1.5 % of an INT8 Inception's file; onnxruntime infers them again).
    onnx-ir's ``RemoveUnusedNodesPass`` drops what nothing reads (an initializer a graph
    input lists stays); as onnx-ir writes a ``value_info`` for every typed value that is
    neither a graph input nor output, initializers included, those values lose their
    types before ``ir.to_proto``."""
    RemoveUnusedNodesPass()(model)
    graph = model.graph
    inner = [v for node in graph for v in node.outputs if not v.is_graph_output()]
    for value in (*inner, *graph.initializers.values()):
        if not (value.is_graph_input() or value.is_graph_output()):
            value.type, value.shape = None, None
    return ir.to_proto(model)

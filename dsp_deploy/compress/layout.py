"""1-D convolutions in the 2-D form that onnxruntime's blocked x86 kernels run.

onnxruntime's CPU provider runs a ``Conv`` in its blocked layout (NCHWc: channels in
blocks of 8 with AVX2, 16 with AVX-512; the ``com.microsoft.nchwc`` ops of an optimised
graph) only when the input is 4-D: 1-D convolutions always take the generic im2col + GEMM
path. Measured here (``benchmarks/latency_gap.py``, AVX2, one thread): a depthwise conv of
112 channels, k = 20, L = 150 ran 2.3× faster at batch 1 (1.4× at batch 64) in the
blocked layout, and the whole dense Inception model (``inception_gunpoint``) ~1.2× faster.
On aarch64 the 2-D form gains nothing: onnxruntime's aarch64 build has no blocked kernels
(its optimised graphs of ``--conv2d`` models hold no ``com.microsoft.nchwc`` Conv; x86's
hold 31 for the dense Inception), so the wrapper only adds reshapes. On the emulated
Cortex-A72 (``benchmarks/fuse_concat.py --emulated``) the 2-D LITE and Inception models,
dense and pruned, ran 0.98–1.04× as long as the 1-D ones, within that run's noise;
emulated timings compare models within one run only.

``conv1d_as_conv2d(model)`` wraps each 1-D ``Conv`` that the blocked kernels accept as

    Unsqueeze(axis 2) → Conv on (N, C, 1, L), weights (M, C/g, 1, k) → Squeeze(axis 2)

— the same arithmetic (a 1 × k kernel over a height-1 image), so outputs agree to float
rounding. A Relu that is the Conv's only reader moves inside the wrapper, before the
Squeeze (it is element-wise, so it commutes with a reshape): onnxruntime fuses a Relu
into the Conv only when it reads the Conv directly, and after the Squeeze it would run as
one more pass over the activations.

onnxruntime 1.32 blocks a 2-D conv, with ``b`` the block size (8: AVX2; AVX-512 uses 16
and leaves 8-aligned convs on the generic path, where the wrapper costs only two
reshapes), when::

    group = 1             C_in < b or C_in ≡ 0 (mod 4)     (C_out padded up to a block)
    depthwise (g = C)     C ≡ 0 (mod b)

(read off its optimised graphs; ``tests/test_compress_layout.py`` checks this against the
onnxruntime it runs with). A conv *qualifies* when it is blocked and, for group 1, also
C_out ≡ 0 (mod b): a conv with few outputs would compute a whole padded block (LITE's
1-channel filters would do 8× their work). Other convs stay 1-D. ``compress --align 8``
rounds kept channel counts up so that pruned convs qualify.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from dsp_deploy.compress.graph import attr, copy_model, names_read

logger = logging.getLogger(__name__)

BLOCK = 8  # onnxruntime's NCHWc block with AVX2, the common x86 case
_AXIS = "dsp_layout_axis2"  # the int64 [2] initializer the wrappers share
_LIFTED = ("kernel_shape", "strides", "dilations")  # 1-D [v] becomes 2-D [1, v]


def qualifies(c_in: int, c_out: int, group: int, block: int = BLOCK) -> bool:
    """Whether onnxruntime's blocked kernels take a conv of this shape (module doc)."""
    if group == 1:
        return (c_in < block or c_in % 4 == 0) and c_out % block == 0
    return group == c_in == c_out and c_out % block == 0


def conv1d_as_conv2d(
    model: onnx.ModelProto,
    block: int = BLOCK,
    *,
    select: Callable[[int, int, int], bool] | None = None,
) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with every qualifying 1-D Conv wrapped as 2-D, and their count.

    ``model`` is not modified. Only convs whose weight is a rank-3 initializer of the main
    graph are considered (a weight computed at run time has no static shape to check).
    ``select(c_in, c_out, group)`` replaces the rule (default: :func:`qualifies`).
    """
    select = select or (lambda c_in, c_out, group: qualifies(c_in, c_out, group, block))
    out = copy_model(model)
    graph = out.graph
    weights = {t.name: t for t in graph.initializer if len(t.dims) == 3}
    readers = Counter(names_read(graph.node))  # subgraph reads count: they pin a name
    outputs = {o.name for o in graph.output}
    relu_of = {  # Conv output -> the Relu that alone reads it
        node.input[0]: node
        for node in graph.node
        if node.op_type == "Relu" and node.domain == "" and readers[node.input[0]] == 1
        and node.input[0] not in outputs
    }  # fmt: skip
    moved: set[int] = set()  # ids of Relu nodes now inside a wrapper
    axes_input = _opset(out) >= 13  # Unsqueeze/Squeeze axes became an input in opset 13
    nodes: list[onnx.NodeProto] = []
    count = 0
    for node in graph.node:
        if id(node) in moved:
            continue
        w = weights.get(node.input[1]) if node.op_type == "Conv" and node.domain == "" else None
        group = attr(node, "group", 1) if w is not None else 1
        if w is None or attr(node, "auto_pad", "NOTSET") != "NOTSET":
            nodes.append(node)
            continue
        c_out, c_in = int(w.dims[0]), int(w.dims[1]) * group
        if not select(c_in, c_out, group):
            nodes.append(node)
            continue
        weight = _weight_2d(graph, w, readers[w.name] > 1)
        relu = relu_of.get(node.output[0])
        if relu is not None:
            moved.add(id(relu))
        nodes.extend(_wrapped(node, weight, relu, axes_input=axes_input))
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
        if axes_input:
            graph.initializer.append(numpy_helper.from_array(np.array([2], np.int64), _AXIS))
        # A shape recorded for a reshaped weight no longer holds; a Conv output that a
        # moved Relu read is gone.
        gone = {r.input[0] for r in relu_of.values() if id(r) in moved}
        kept = [v for v in graph.value_info if v.name not in weights and v.name not in gone]
        del graph.value_info[:]
        graph.value_info.extend(kept)
    logger.info("%d Conv nodes wrapped as 2-D for blocked kernels", count)
    return out, count


def _weight_2d(graph: onnx.GraphProto, w: onnx.TensorProto, shared: bool) -> str:
    """Name of ``w`` reshaped (M, C/g, k) → (M, C/g, 1, k): in place, or a copy if shared."""
    array = numpy_helper.to_array(w)
    lifted = numpy_helper.from_array(array[:, :, None, :], w.name + "_2d" if shared else w.name)
    if not shared:
        w.CopyFrom(lifted)
        return w.name
    names = {t.name for t in graph.initializer}
    if lifted.name not in names:
        graph.initializer.append(lifted)
    return lifted.name


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _wrapped(
    node: onnx.NodeProto, weight: str, relu: onnx.NodeProto | None, *, axes_input: bool
) -> list[onnx.NodeProto]:
    """Unsqueeze → Conv (→ Relu) → Squeeze, writing what the Conv (its Relu) wrote."""
    x4, y4 = f"{node.output[0]}_4d_in", f"{node.output[0]}_4d_out"
    attrs = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        if a.name == "pads":  # [begin, end] → [top, begin, bottom, end]
            value = [0, value[0], 0, value[1]]
        elif a.name in _LIFTED:
            value = [1, *value]
        attrs[a.name] = value
    conv = helper.make_node(
        "Conv",
        [x4, weight, *node.input[2:]],
        [y4],
        name=node.name,
        doc_string=node.doc_string,
        **attrs,
    )
    axes = {} if axes_input else {"axes": [2]}
    extra = [_AXIS] if axes_input else []
    nodes = [
        helper.make_node(
            "Unsqueeze", [node.input[0], *extra], [x4], name=f"{node.name}_to_2d", **axes
        ),
        conv,
    ]
    out = node.output[0]
    if relu is not None:
        nodes.append(helper.make_node("Relu", [y4], [f"{y4}_relu"], name=relu.name))
        y4, out = f"{y4}_relu", relu.output[0]
    nodes.append(
        helper.make_node("Squeeze", [y4, *extra], [out], name=f"{node.name}_to_1d", **axes)
    )
    return nodes

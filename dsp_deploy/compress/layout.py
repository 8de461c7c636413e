"""1-D convolutions in the 2-D form that onnxruntime's blocked x86 kernels run.

onnxruntime's CPU provider runs a ``Conv`` in its blocked layout (NCHWc: channels in
blocks of 8 with AVX2, 16 with AVX-512; the ``com.microsoft.nchwc`` ops of an optimised
graph) only when the input is 4-D: 1-D convolutions always take the generic im2col + GEMM
path. On aarch64 the 2-D form gains nothing: onnxruntime's aarch64 build has no blocked
kernels, so the wrapper only adds reshapes. Measurements, x86 and emulated Cortex-A72:
``benchmarks/results/fuse_layout_notes.md``.

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

The pass is an onnx-ir ``ModelPass`` (``dsp_deploy.passes``): ``conv1d_as_conv2d(model)``
returns ``Rewrite(model, modified, LayoutReport)``. A weight only the wrapped Conv reads
is reshaped in place, a shared one gets a 2-D copy; ``irgraph.finish`` drops what is no
longer read, fixes names and checks the shapes of the values around each wrapper.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from dsp_deploy.irgraph import Expected, finish, initializer, is_op, only_reader, opset
from dsp_deploy.passes import ModelPass, Rewrite, apply

logger = logging.getLogger(__name__)

BLOCK = 8  # onnxruntime's NCHWc block with AVX2, the common x86 case
_AXIS = "dsp_layout_axis2"  # the int64 [2] initializer the wrappers share
_LIFTED = ("kernel_shape", "strides", "dilations")  # 1-D [v] becomes 2-D [1, v]
Select = Callable[[int, int, int], bool]


def qualifies(c_in: int, c_out: int, group: int, block: int = BLOCK) -> bool:
    """Whether onnxruntime's blocked kernels take a conv of this shape (module doc)."""
    if group == 1:
        return (c_in < block or c_in % 4 == 0) and c_out % block == 0
    return group == c_in == c_out and c_out % block == 0


@dataclass(frozen=True)
class LayoutReport:
    """The Convs wrapped as 2-D, and the Relus moved inside a wrapper (labels: name,
    else ``op#position`` in the input)."""

    wrapped: tuple[str, ...]
    relus: tuple[str, ...]


@dataclass
class _Wrapping:
    """One run's state: the axes input (opset ≥ 13), 2-D copies of shared weights, and
    what ``finish`` registers and checks."""

    axes: ir.Value | None
    copies: dict[ir.Value, ir.Value]
    new: list[ir.Value]
    expected: list[Expected]


class Conv2dLayout(ModelPass[LayoutReport]):
    """Every qualifying 1-D Conv wrapped as 2-D (module doc).

    Only convs whose weight is a rank-3 initializer of the main graph are considered (a
    weight computed at run time has no static shape to check). ``select(c_in, c_out,
    group)`` replaces the rule (default: :func:`qualifies` with ``block``).
    """

    def __init__(self, block: int = BLOCK, select: Select | None = None) -> None:
        super().__init__()
        self.select = select or (lambda c_in, c_out, group: qualifies(c_in, c_out, group, block))

    def rewrite(self, model: ir.Model) -> tuple[bool, LayoutReport]:
        axes = initializer(np.array([2], np.int64), _AXIS) if opset(model) >= 13 else None
        state = _Wrapping(axes, {}, [] if axes is None else [axes], [])
        labels = {node: node.name or f"{node.op_type}#{i}" for i, node in enumerate(model.graph)}
        convs = [n for n in model.graph if self._takes(n)]
        relus = [labels[r] for r in (_wrap(conv, state) for conv in convs) if r is not None]
        if convs:
            finish(model, state.new, state.expected)
        logger.info("%d Conv nodes wrapped as 2-D for blocked kernels", len(convs))
        return bool(convs), LayoutReport(tuple(labels[c] for c in convs), tuple(relus))

    def _takes(self, node: ir.Node) -> bool:
        weight = node.inputs[1] if is_op(node, "Conv") and len(node.inputs) > 1 else None
        if weight is None or not weight.is_initializer() or weight.const_value is None:
            return False
        dims = weight.const_value.shape.numpy()
        if len(dims) != 3 or node.attributes.get_string("auto_pad", "NOTSET") != "NOTSET":
            return False
        group = node.attributes.get_int("group", 1)
        c_out, c_per_group, _ = dims
        return self.select(c_per_group * group, c_out, group)


def _wrap(conv: ir.Node, state: _Wrapping) -> ir.Node | None:
    """Unsqueeze → ``conv`` in 2-D (→ its Relu) → Squeeze; returns the Relu moved in."""
    x = conv.inputs[0]
    unsqueeze = _reshape("Unsqueeze", x, state, f"{conv.name}_to_2d")
    unsqueeze.outputs[0].name = f"{conv.outputs[0].name}_4d_in"
    state.expected.append((unsqueeze.outputs[0], _lifted(x.shape)))
    conv.graph.insert_before(conv, unsqueeze)
    conv.replace_input_with(0, unsqueeze.outputs[0])
    conv.replace_input_with(1, _weight_2d(conv.inputs[1], state))
    _lift_attributes(conv)
    relu = _only_relu(conv.outputs[0])
    y4_name = f"{conv.outputs[0].name}_4d_out"
    tail = conv if relu is None else relu
    _squeeze_after(tail, state, f"{conv.name}_to_1d", y4_name)
    if relu is not None:
        conv.outputs[0].name = y4_name
        state.expected.append((conv.outputs[0], relu.outputs[0]))
    return relu


def _only_relu(y: ir.Value) -> ir.Node | None:
    """The Relu that alone reads ``y`` (a graph output or another reader keeps it out)."""
    if not only_reader(y):
        return None
    reader = next(iter(y.uses())).node
    return reader if is_op(reader, "Relu") and reader.graph is not None else None


def _squeeze_after(node: ir.Node, state: _Wrapping, name: str, y4_name: str) -> None:
    """A Squeeze after ``node`` that writes what ``node`` wrote, under its name."""
    y = node.outputs[0]
    out = ir.Value(name=y.name, shape=y.shape, type=y.type)
    ir.convenience.replace_all_uses_with(y, out, replace_graph_outputs=True)
    y.name = y4_name if node.op_type == "Conv" else f"{y4_name}_relu"
    squeeze = _reshape("Squeeze", y, state, name, out)
    node.graph.insert_after(node, squeeze)
    state.expected += [(out, out.shape), (y, _lifted(out.shape))]


def _reshape(
    op_type: str, x: ir.Value, state: _Wrapping, name: str, out: ir.Value | None = None
) -> ir.Node:
    """Unsqueeze/Squeeze of axis 2: an ``axes`` input from opset 13, an attribute before."""
    inputs, attrs = ([x, state.axes], {}) if state.axes is not None else ([x], {"axes": [2]})
    return ir.node(op_type, inputs, attrs, outputs=None if out is None else [out], name=name)


def _weight_2d(w: ir.Value, state: _Wrapping) -> ir.Value:
    """``w`` reshaped (M, C/g, k) → (M, C/g, 1, k): in place, or a copy if shared."""
    if w in state.copies:
        return state.copies[w]
    lifted = w.const_value.numpy()[:, :, None, :]
    if len(w.uses()) == 1:
        w.const_value = ir.Tensor(lifted, name=w.name)
        w.shape = w.const_value.shape
        return w
    copy = state.copies[w] = initializer(lifted, f"{w.name}_2d")
    state.new.append(copy)
    return copy


def _lift_attributes(conv: ir.Node) -> None:
    """1-D ``pads`` [b, e] → [0, b, 0, e]; kernel_shape, strides, dilations [v] → [1, v]."""
    for name, attr in list(conv.attributes.items()):
        if name == "pads":
            begin, end = attr.as_ints()
            conv.attributes[name] = ir.AttrInt64s(name, [0, begin, 0, end])
        elif name in _LIFTED:
            conv.attributes[name] = ir.AttrInt64s(name, [1, *attr.as_ints()])


def _lifted(shape: ir.Shape | None) -> ir.Shape | None:
    """(N, C, L) → (N, C, 1, L)."""
    return None if shape is None else ir.Shape([*shape.dims[:2], 1, *shape.dims[2:]])


def conv1d_as_conv2d(
    model: onnx.ModelProto, block: int = BLOCK, *, select: Select | None = None
) -> Rewrite[LayoutReport]:
    """``model`` with every qualifying 1-D Conv wrapped as 2-D (:class:`Conv2dLayout`).

    ``model`` is not modified.
    """
    return apply(Conv2dLayout(block, select), model)


__all__ = ["BLOCK", "Conv2dLayout", "LayoutReport", "conv1d_as_conv2d", "qualifies"]

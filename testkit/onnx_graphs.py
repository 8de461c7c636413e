"""Small conv graphs for the compress tests, written as ONNX text plus seeded weights.

Each builder returns a checked ``ModelProto`` with input ``x`` (N, 1, L), N dynamic, and
one output ``probabilities``. ``dead`` plants channels that ReLU kills: the producer's
weight rows are zero and its bias is negative, so the channel is exactly 0 downstream.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnx
from onnx import numpy_helper

L = 32


def build(body: str, weights: Mapping[str, np.ndarray], *, classes: int = 2) -> onnx.ModelProto:
    """Parse a graph body (nodes only) and attach ``weights`` as initializers."""
    text = f"""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[N, 1, {L}] x) => (float[N, {classes}] probabilities)
    {{
    {body}
    }}
    """
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(
        numpy_helper.from_array(np.asarray(v, dtype=_dtype(v)), k) for k, v in weights.items()
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def _dtype(value: np.ndarray) -> type:
    """Integer tensors (axes, shapes) stay int64; everything else is float32."""
    return np.int64 if np.asarray(value).dtype.kind in "iu" else np.float32


class Weights:
    """Seeded weight factory; ``conv`` plants dead output channels."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.values: dict[str, np.ndarray] = {}

    def conv(
        self, name: str, out: int, inp: int, k: int, dead: Iterable[int] = (), bias: bool = True
    ) -> None:
        w = self.rng.normal(0, 1 / np.sqrt(inp * k), (out, inp, k))
        b = self.rng.normal(0.1, 0.1, out)
        for c in dead:
            w[c], b[c] = 0.0, -1.0
        self.values[f"{name}_w"] = w
        if bias:
            self.values[f"{name}_b"] = b

    def bn(self, name: str, c: int) -> None:
        self.values[f"{name}_s"] = self.rng.uniform(0.5, 1.5, c)
        self.values[f"{name}_b"] = self.rng.normal(0, 0.1, c)
        self.values[f"{name}_m"] = self.rng.normal(0, 0.1, c)
        self.values[f"{name}_v"] = self.rng.uniform(0.5, 1.5, c)

    def dense(self, name: str, inp: int, out: int, trans_b: bool = True) -> None:
        w = self.rng.normal(0, 1 / np.sqrt(inp), (out, inp) if trans_b else (inp, out))
        self.values[f"{name}_w"] = w
        self.values[f"{name}_b"] = self.rng.normal(0, 0.1, out)

    def tensor(self, name: str, value: np.ndarray) -> None:
        self.values[name] = value


HEAD = """
    g = GlobalAveragePool (h)
    f = Flatten (g)
    z = Gemm <transB = 1> (f, fc_w, fc_b)
    probabilities = Softmax <axis = 1> (z)
"""


CHAIN = """
    a = Conv <pads = [1, 1]> (x, c1_w, c1_b)
    r = Relu (a)
    b = Conv <pads = [1, 1]> (r, c2_w, c2_b)
    h = Relu (b)
"""


def chain_weights(
    width: int = 4, dead1: Iterable[int] = (1,), dead2: Iterable[int] = (2,), seed: int = 0
) -> Weights:
    """The weights of ``chain`` with ``width`` first-conv channels."""
    w = Weights(seed)
    w.conv("c1", width, 1, 3, dead1)
    w.conv("c2", 3, width, 3, dead2)
    w.dense("fc", 3, 2)
    return w


def chain(dead1: Iterable[int] = (1,), dead2: Iterable[int] = (2,), seed: int = 0):
    """x → Conv(4,k3) → Relu → Conv(3,k3) → Relu → GAP → Flatten → Gemm → Softmax."""
    return build(CHAIN + HEAD, chain_weights(4, dead1, dead2, seed).values)


def concat(dead_a: Iterable[int] = (0,), dead_b: Iterable[int] = (1,), seed: int = 0):
    """Two branches (3 and 2 channels) → Concat → Relu → Conv 1×1 (4) → Relu → head."""
    w = Weights(seed)
    w.conv("ca", 3, 1, 5, dead_a, bias=False)
    w.conv("cb", 2, 1, 3, dead_b)
    w.values["ca_w"][list(dead_a)] = 0.0
    w.conv("pw", 4, 5, 1)
    w.dense("fc", 4, 2)
    body = """
    a = Conv <pads = [2, 2]> (x, ca_w)
    b = Conv <pads = [1, 1]> (x, cb_w, cb_b)
    c = Concat <axis = 1> (a, b)
    r = Relu (c)
    p = Conv (r, pw_w, pw_b)
    h = Relu (p)
    """
    return build(body + HEAD, w.values)


def residual(dead: Iterable[int] = (2,), seed: int = 0):
    """Conv(4) → Relu → Conv(4) ; Add(shortcut) → Relu → head: both convs share units."""
    w = Weights(seed)
    w.conv("c1", 4, 1, 3, dead)
    w.conv("c2", 4, 4, 3, dead)
    w.dense("fc", 4, 2)
    body = """
    a = Conv <pads = [1, 1]> (x, c1_w, c1_b)
    r = Relu (a)
    b = Conv <pads = [1, 1]> (r, c2_w, c2_b)
    s = Add (b, r)
    h = Relu (s)
    """
    return build(body + HEAD, w.values)


def depthwise(dead: Iterable[int] = (1, 3), seed: int = 0):
    """Conv(4) → BN → Relu → depthwise Conv (group 4, dilation 2) → Conv 1×1 (3) → head."""
    w = Weights(seed)
    w.conv("c1", 4, 1, 5, dead)
    w.bn("bn", 4)
    w.values["bn_b"][list(dead)] = -5.0  # BN shifts the dead channel; ReLU kills it again
    w.conv("dw", 4, 1, 3)
    w.conv("pw", 3, 4, 1)
    w.dense("fc", 3, 2)
    body = """
    a = Conv <pads = [2, 2]> (x, c1_w, c1_b)
    n = BatchNormalization (a, bn_s, bn_b, bn_m, bn_v)
    r = Relu (n)
    d = Conv <group = 4, dilations = [2], pads = [2, 2]> (r, dw_w, dw_b)
    p = Conv (d, pw_w, pw_b)
    h = Relu (p)
    """
    return build(body + HEAD, w.values)


def grouped(
    dead1: Iterable[int] = (0,),
    dead2: Iterable[int] = (),
    *,
    width: int = 4,
    groups: int = 2,
    out: int = 4,
    seed: int = 0,
):
    """Conv(width) → Relu → grouped Conv (``groups``, width → out, k3) → Relu → head.
    ``dead1`` / ``dead2``: planted dead channels of the first / the grouped Conv."""
    w = Weights(seed)
    w.conv("c1", width, 1, 3, dead1)
    w.conv("gc", out, width // groups, 3, dead2)
    w.dense("fc", out, 2)
    body = f"""
    a = Conv <pads = [1, 1]> (x, c1_w, c1_b)
    r = Relu (a)
    b = Conv <group = {groups}, pads = [1, 1]> (r, gc_w, gc_b)
    h = Relu (b)
    """
    return build(body + HEAD, w.values)


def grouped_on_input(dead: Iterable[int] = (0, 2), seed: int = 0):
    """x · [1, 2] per channel (2 untracked channels) → grouped Conv (group 2, 2 → 4) → Relu
    → head: the grouped Conv's input blocks are nobody's channels."""
    w = Weights(seed)
    w.tensor("two", np.array([1.0, 2.0]).reshape(1, 2, 1))
    w.conv("gc", 4, 1, 3, dead)
    w.dense("fc", 4, 2)
    body = """
    x2 = Mul (x, two)
    b = Conv <group = 2, pads = [1, 1]> (x2, gc_w, gc_b)
    h = Relu (b)
    """
    return build(body + HEAD, w.values)


def matmul_head(
    bias: bool = True,
    dead: Iterable[int] = (),
    constant: Iterable[int] = (),
    faint: Iterable[int] = (),
    seed: int = 0,
):
    """Conv(4) → Relu → GAP → Flatten → MatMul [→ Add(bias)] → Softmax, as exporters
    write ``nn.Linear`` (with bias: MatMul + Add; without: a bare MatMul). Channels in
    ``constant`` are 0.7 everywhere (zero weights, bias 0.7); ``faint`` ones have their
    weights scaled by 1e-4 (near-dead, for ``--threshold``)."""
    w = Weights(seed)
    w.conv("c1", 4, 1, 3, dead)
    for c in constant:
        w.values["c1_w"][c], w.values["c1_b"][c] = 0.0, 0.7
    for c in faint:
        w.values["c1_w"][c] *= 1e-4
        w.values["c1_b"][c] = 1e-4
    w.dense("fc", 4, 2, trans_b=False)
    if not bias:
        del w.values["fc_b"]
    tail = "z = Add (m, fc_b)" if bias else "z = Identity (m)"
    body = f"""
    a = Conv <pads = [1, 1]> (x, c1_w, c1_b)
    r = Relu (a)
    g = GlobalAveragePool (r)
    f = Flatten (g)
    m = MatMul (f, fc_w)
    {tail}
    probabilities = Softmax <axis = 1> (z)
    """
    return build(body, w.values)


def gemm_head(trans_b: bool, dead: Iterable[int] = (0, 2), seed: int = 0):
    """Conv(4) → Relu → ReduceMean(axis 2, keepdims 0) → Gemm(transB) → 3 classes."""
    w = Weights(seed)
    w.conv("c1", 4, 1, 3, dead)
    w.dense("fc", 4, 3, trans_b=trans_b)
    body = f"""
    a = Conv <pads = [1, 1]> (x, c1_w, c1_b)
    r = Relu (a)
    m = ReduceMean <axes = [2], keepdims = 0> (r)
    z = Gemm <transB = {int(trans_b)}> (m, fc_w, fc_b)
    probabilities = Softmax <axis = 1> (z)
    """
    return build(body, w.values, classes=3)


def flatten_matmul(dead: Iterable[int] = (1,), seed: int = 0):
    """Conv(3) → Relu → GAP → Flatten → MatMul → Add(bias) → Softmax."""
    w = Weights(seed)
    w.conv("c1", 3, 1, 3, dead)
    w.dense("fc", 3, 2, trans_b=False)
    body = """
    a = Conv <pads = [1, 1]> (x, c1_w, c1_b)
    r = Relu (a)
    g = GlobalAveragePool (r)
    f = Flatten (g)
    m = MatMul (f, fc_w)
    z = Add (m, fc_b)
    probabilities = Softmax <axis = 1> (z)
    """
    return build(body, w.values)


def dynamo_pool_head(dead: Iterable[int] = (1,), seed: int = 0):
    """Conv(4) → Relu → Unsqueeze(-2) → ReduceMean(-1, -2) → Squeeze(-2) → Reshape([-1, 4])
    → Gemm: how torch's dynamo exporter writes adaptive_avg_pool1d(·, 1) + flatten."""
    w = Weights(seed)
    w.conv("c1", 4, 1, 3, dead)
    w.dense("fc", 4, 2)
    w.tensor("axis", np.array([-2]))
    w.tensor("shape", np.array([-1, 4]))
    body = """
    a = Conv <pads = [1, 1]> (x, c1_w, c1_b)
    r = Relu (a)
    u = Unsqueeze (r, axis)
    m = ReduceMean <axes = [-1, -2]> (u)
    s = Squeeze (m, axis)
    f = Reshape (s, shape)
    z = Gemm <transB = 1> (f, fc_w, fc_b)
    probabilities = Softmax <axis = 1> (z)
    """
    return build(body, w.values)


def ensemble(dead1: Iterable[int] = (0,), dead2: Iterable[int] = (2,), seed: int = 0):
    """Two conv members, mean of their softmax: two independent groups."""
    w = Weights(seed)
    for k, dead in (("m1", dead1), ("m2", dead2)):
        w.conv(f"{k}c", 3, 1, 3, dead)
        w.dense(f"{k}fc", 3, 2)
    w.tensor("half", np.array(0.5))
    body = """
    a1 = Conv <pads = [1, 1]> (x, m1c_w, m1c_b)
    r1 = Relu (a1)
    g1 = GlobalAveragePool (r1)
    f1 = Flatten (g1)
    z1 = Gemm <transB = 1> (f1, m1fc_w, m1fc_b)
    p1 = Softmax <axis = 1> (z1)
    a2 = Conv <pads = [1, 1]> (x, m2c_w, m2c_b)
    r2 = Relu (a2)
    g2 = GlobalAveragePool (r2)
    f2 = Flatten (g2)
    z2 = Gemm <transB = 1> (f2, m2fc_w, m2fc_b)
    p2 = Softmax <axis = 1> (z2)
    s = Add (p1, p2)
    probabilities = Mul (s, half)
    """
    return build(body, w.values)


def pinned(seed: int = 0):
    """Conv(4) → Relu → LpNormalization over channels (not in the table) → head."""
    w = Weights(seed)
    w.conv("c1", 4, 1, 3, (1,))
    w.dense("fc", 4, 2)
    body = """
    a = Conv <pads = [1, 1]> (x, c1_w, c1_b)
    r = Relu (a)
    h = LpNormalization <axis = 1, p = 2> (r)
    """
    return build(body + HEAD, w.values)


def constant_channel(seed: int = 0):
    """Conv(3) → Relu → GAP → Gemm where channel 1 is the constant 0.7 (zero W, bias 0.7)."""
    w = Weights(seed)
    w.conv("c1", 3, 1, 3)
    w.values["c1_w"][1], w.values["c1_b"][1] = 0.0, 0.7
    w.dense("fc", 3, 2)
    body = """
    a = Conv <pads = [1, 1]> (x, c1_w, c1_b)
    h = Relu (a)
    """
    return build(body + HEAD, w.values)


def inputs(n: int = 16, seed: int = 1) -> np.ndarray:
    """Standard-normal series (n, 1, L), float32."""
    return np.random.default_rng(seed).normal(size=(n, 1, L)).astype(np.float32)


def lite_like(dead_concat=(1, 6), dead_dw1=(2,), seed: int = 0):
    """LITE in miniature: 3 branches + frozen-style filters → Concat(15) → BN → Relu →
    depthwise (dilation 2) → 1×1 (6) → BN → Relu → depthwise (dilation 4) → 1×1 (6) →
    BN → Relu → GAP → Gemm. Dead channels: zero rows and a BN shift of −5 before ReLU."""
    w = Weights(seed)
    for name, k in (("b9", 9), ("b5", 5), ("b3", 3)):
        w.conv(name, 4, 1, k, bias=False)
    w.conv("hy", 3, 1, 4, bias=False)
    w.bn("bn1", 15)
    for c in dead_concat:
        w.values[("b9", "b5", "b3")[c // 4] + "_w"][c % 4] = 0.0 if c < 12 else 1.0
        w.values["bn1_b"][c] = -5.0
    w.conv("dw1", 15, 1, 5)
    w.conv("pw1", 6, 15, 1)
    w.bn("bn2", 6)
    for c in dead_dw1:
        w.values["pw1_w"][c], w.values["bn2_b"][c] = 0.0, -5.0
    w.conv("dw2", 6, 1, 3)
    w.conv("pw2", 6, 6, 1)
    w.bn("bn3", 6)
    w.dense("fc", 6, 2)
    body = """
    a = Conv <pads = [4, 4]> (x, b9_w)
    b = Conv <pads = [2, 2]> (x, b5_w)
    c = Conv <pads = [1, 1]> (x, b3_w)
    hc = Conv <pads = [1, 2]> (x, hy_w)
    hr = Relu (hc)
    cat = Concat <axis = 1> (a, b, c, hr)
    n1 = BatchNormalization (cat, bn1_s, bn1_b, bn1_m, bn1_v)
    r1 = Relu (n1)
    d1 = Conv <group = 15, dilations = [2], pads = [4, 4]> (r1, dw1_w, dw1_b)
    p1 = Conv (d1, pw1_w, pw1_b)
    n2 = BatchNormalization (p1, bn2_s, bn2_b, bn2_m, bn2_v)
    r2 = Relu (n2)
    d2 = Conv <group = 6, dilations = [4], pads = [4, 4]> (r2, dw2_w, dw2_b)
    p2 = Conv (d2, pw2_w, pw2_b)
    n3 = BatchNormalization (p2, bn3_s, bn3_b, bn3_m, bn3_v)
    h = Relu (n3)
    """
    return build(body + HEAD, w.values)


def inception_like(dead_m1=(0, 13), dead_out=(5,), seed: int = 0):
    """Two Inception modules (3 convs + MaxPool→1×1, Concat 16, BN, Relu; bottleneck in
    module 2), a 1×1 + BN shortcut added to module 2, Relu, GAP, Gemm."""
    w = Weights(seed)
    w.conv("m1a", 4, 1, 9, bias=False)
    w.conv("m1b", 4, 1, 5, bias=False)
    w.conv("m1c", 4, 1, 3, bias=False)
    w.conv("m1p", 4, 1, 1, bias=False)
    w.bn("m1n", 16)
    w.values["m1n_b"][list(dead_m1)] = -50.0
    w.conv("bt", 4, 16, 1, bias=False)
    w.conv("m2a", 4, 4, 9, bias=False)
    w.conv("m2b", 4, 4, 5, bias=False)
    w.conv("m2c", 4, 4, 3, bias=False)
    w.conv("m2p", 4, 16, 1, bias=False)
    w.bn("m2n", 16)
    w.conv("sc", 16, 1, 1, bias=False)
    w.bn("scn", 16)
    for c in dead_out:
        w.values["m2n_b"][c], w.values["scn_b"][c] = -50.0, -50.0
    w.dense("fc", 16, 2)
    body = """
    a1 = Conv <pads = [4, 4]> (x, m1a_w)
    b1 = Conv <pads = [2, 2]> (x, m1b_w)
    c1 = Conv <pads = [1, 1]> (x, m1c_w)
    q1 = MaxPool <kernel_shape = [3], pads = [1, 1]> (x)
    p1 = Conv (q1, m1p_w)
    cat1 = Concat <axis = 1> (a1, b1, c1, p1)
    n1 = BatchNormalization (cat1, m1n_s, m1n_b, m1n_m, m1n_v)
    o1 = Relu (n1)
    bz = Conv (o1, bt_w)
    a2 = Conv <pads = [4, 4]> (bz, m2a_w)
    b2 = Conv <pads = [2, 2]> (bz, m2b_w)
    c2 = Conv <pads = [1, 1]> (bz, m2c_w)
    q2 = MaxPool <kernel_shape = [3], pads = [1, 1]> (o1)
    p2 = Conv (q2, m2p_w)
    cat2 = Concat <axis = 1> (a2, b2, c2, p2)
    n2 = BatchNormalization (cat2, m2n_s, m2n_b, m2n_m, m2n_v)
    o2 = Relu (n2)
    s = Conv (x, sc_w)
    sn = BatchNormalization (s, scn_s, scn_b, scn_m, scn_v)
    added = Add (o2, sn)
    h = Relu (added)
    """
    return build(body + HEAD, w.values)


def hybrid_sources(dead=(3, 4, 6), seed: int = 0):
    """LITE's first stage in miniature: branches ca (3 ch, k5) and cb (2 ch, k3), three
    1-channel frozen-style filters → Concat → Relu, all → Concat(8) → BN → Relu → Conv
    1×1 (3) → Relu → head. ``dead`` positions of the 8 get a BN shift of −50 (0 after
    the Relu); the default kills branch cb (3, 4) and the filter hy1 (6) whole."""
    w = Weights(seed)
    w.conv("ca", 3, 1, 5, bias=False)
    w.conv("cb", 2, 1, 3, bias=False)
    for k in range(3):
        w.conv(f"hy{k}", 1, 1, 2 + 2 * k, bias=False)
    w.bn("bn", 8)
    w.values["bn_b"][list(dead)] = -50.0
    w.conv("pw", 3, 8, 1)
    w.dense("fc", 3, 2)
    body = """
    a = Conv <pads = [2, 2]> (x, ca_w)
    b = Conv <pads = [1, 1]> (x, cb_w)
    h0 = Conv <pads = [0, 1]> (x, hy0_w)
    h1 = Conv <pads = [1, 2]> (x, hy1_w)
    h2 = Conv <pads = [2, 3]> (x, hy2_w)
    hc = Concat <axis = 1> (h0, h1, h2)
    hr = Relu (hc)
    cat = Concat <axis = 1> (a, b, hr)
    n = BatchNormalization (cat, bn_s, bn_b, bn_m, bn_v)
    r = Relu (n)
    p = Conv (r, pw_w, pw_b)
    h = Relu (p)
    """
    return build(body + HEAD, w.values)


def as_float(model: onnx.ModelProto, dtype: type) -> onnx.ModelProto:
    """``model`` (float32 everywhere) with every float input, output and weight in ``dtype``."""
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for value in (*out.graph.input, *out.graph.output):
        if value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            value.type.tensor_type.elem_type = elem
    for tensor in out.graph.initializer:
        array = numpy_helper.to_array(tensor)
        if array.dtype == np.float32:
            tensor.CopyFrom(numpy_helper.from_array(array.astype(dtype), tensor.name))
    onnx.checker.check_model(out, full_check=True)
    return out

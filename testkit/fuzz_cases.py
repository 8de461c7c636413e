"""Fuzz cases for the commands: a valid model, mutated one to three times, replayable.

Each case takes a valid model (the shipped ``models/*.onnx`` or a small graph from
:mod:`onnx_graphs`) and applies one to three mutations (bit flips, truncations, and field
edits through the onnx API: dims, dtypes, dangling inputs, cycles, duplicate outputs,
Conv/other attributes, unknown ops and domains, opsets, external data, huge constants,
metadata). ``make_case(sources, seed, index)`` is a pure function of its arguments, so a
case found by a run replays from (seed, index). Shared by ``benchmarks/fuzz_onnx.py``
(the full run) and ``tests/test_fuzz_onnx.py`` (a seeded sample); the contract a run
must keep is in :mod:`fuzz_runs`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_graphs
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent  # the checkout: models/, calibration/
HUGE = (2**31, 2**40, 2**62)
BAD_INTS = (0, -1, -7, 3, 7, 2**31 - 1, *HUGE)


# --- sources -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A valid model with a calibration set and a dataset that fit it."""

    name: str
    model: bytes
    calib: dict[str, np.ndarray]
    dataset: dict[str, np.ndarray]


def _shipped(name: str) -> Source:
    model = (ROOT / "models" / f"{name}.onnx").read_bytes()
    with np.load(ROOT / "calibration" / f"{name}.npz") as f:
        x, y, classes = f["x"][:16], f["y"][:16], f["classes"]
    return Source(name, model, {"x": x}, {"X": x, "y": y, "classes": classes})


def _small(name: str) -> Source:
    model = getattr(onnx_graphs, name)()
    x = onnx_graphs.inputs(12)
    y = np.arange(12) % 2
    return Source(name, model.SerializeToString(), {"x": x}, {"X": x, "y": y})


SMALL_GRAPHS = ("chain", "concat", "residual", "depthwise", "grouped", "lite_like")


def sources() -> tuple[Source, ...]:
    """The shipped models (inception only once: it is the slow one) and small graphs."""
    return (
        _shipped("lite_gunpoint"),
        _shipped("lite_gunpoint"),
        _shipped("inception_gunpoint"),
        *(_small(n) for n in SMALL_GRAPHS),
    )


# --- mutations -----------------------------------------------------------------------------
# Each takes the model (a copy) and a generator, edits the model in place and returns a
# short description, or None when it does not apply to this model.

Mutation = Callable[[onnx.ModelProto, np.random.Generator], str | None]


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))] if len(seq) else None


def _bad_int(rng: np.random.Generator) -> int:
    return int(_pick(rng, BAD_INTS)) if rng.random() < 0.7 else int(rng.integers(1, 1000))


def m_input_dim(model, rng):
    value = _pick(rng, [*model.graph.input, *model.graph.output])
    dims = value.type.tensor_type.shape.dim
    if not dims:
        return None
    i, d = int(rng.integers(len(dims))), _bad_int(rng)
    dims[i].dim_value = d
    return f"{value.name}.dim[{i}]={d}"


def m_init_dims(model, rng):
    t = _pick(rng, model.graph.initializer)
    if t is None:
        return None
    choice = rng.integers(3)
    if choice == 0 and t.dims:
        t.dims[int(rng.integers(len(t.dims)))] = _bad_int(rng)
    elif choice == 1:
        t.dims.append(_bad_int(rng))
    elif t.dims:
        del t.dims[-1]
    return f"{t.name}.dims={list(t.dims)}"


def m_init_dtype(model, rng):
    t = _pick(rng, model.graph.initializer)
    if t is None:
        return None
    t.data_type = int(_pick(rng, [0, 2, 3, 7, 8, 9, 10, 11, 16, 999]))
    return f"{t.name}.data_type={t.data_type}"


def m_init_raw(model, rng):
    t = _pick(rng, [t for t in model.graph.initializer if t.raw_data])
    if t is None:
        return None
    t.raw_data = t.raw_data[: int(rng.integers(len(t.raw_data)))]
    return f"{t.name}.raw_data cut to {len(t.raw_data)}"


def m_init_remove_or_duplicate(model, rng):
    inits = model.graph.initializer
    if not inits:
        return None
    i = int(rng.integers(len(inits)))
    if rng.random() < 0.5:
        name = inits[i].name
        del inits[i]
        return f"removed initializer {name}"
    inits.append(inits[i])
    return f"duplicated initializer {inits[i].name}"


def m_dangling(model, rng):
    node = _pick(rng, [n for n in model.graph.node if n.input])
    if node is None:
        return None
    node.input[int(rng.integers(len(node.input)))] = "no_such_tensor"
    return f"{node.name or node.op_type}: dangling input"


def m_cycle(model, rng):
    nodes = model.graph.node
    if len(nodes) < 2:
        return None
    i = int(rng.integers(len(nodes) - 1))
    j = int(rng.integers(i + 1, len(nodes)))
    if not nodes[i].input:
        return None
    nodes[i].input[0] = nodes[j].output[0]
    return f"cycle: node {i} reads node {j}"


def m_duplicate_output(model, rng):
    nodes = model.graph.node
    if len(nodes) < 2:
        return None
    if rng.random() < 0.3:
        model.graph.output.append(model.graph.output[0])
        return "graph output listed twice"
    i, j = (int(v) for v in rng.choice(len(nodes), 2, replace=False))
    nodes[i].output[0] = nodes[j].output[0]
    return f"node {i} writes node {j}'s output"


def m_reorder(model, rng):
    nodes = model.graph.node
    if len(nodes) < 2:
        return None
    i, j = (int(v) for v in rng.choice(len(nodes), 2, replace=False))
    a, b = onnx.NodeProto(), onnx.NodeProto()
    a.CopyFrom(nodes[i])
    b.CopyFrom(nodes[j])
    nodes[i].CopyFrom(b)
    nodes[j].CopyFrom(a)
    return f"swapped nodes {i} and {j}"


def set_attr(node: onnx.NodeProto, attr: onnx.AttributeProto) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == attr.name:
            del node.attribute[i]
            break
    node.attribute.append(attr)


def m_conv_attr(model, rng):
    conv = _pick(rng, [n for n in model.graph.node if n.op_type in ("Conv", "MaxPool")])
    if conv is None:
        return None
    name = str(_pick(rng, ["group", "pads", "kernel_shape", "strides", "dilations", "auto_pad"]))
    if name == "auto_pad":
        value = str(_pick(rng, ["SAME_UPPER", "VALID", "NOTSET", "BOGUS"]))
    elif name == "group":
        value = _bad_int(rng)
    else:
        value = [_bad_int(rng) for _ in range(int(rng.integers(0, 4)))]
    kind = onnx.AttributeProto.INTS if isinstance(value, list) else None
    set_attr(conv, helper.make_attribute(name, value, attr_type=kind))
    return f"{conv.op_type}.{name}={value}"


def m_other_attr(model, rng):
    node = _pick(rng, [n for n in model.graph.node if n.attribute])
    if node is None:
        return None
    attr = _pick(rng, node.attribute)
    kind = int(rng.integers(4))
    value = [_bad_int(rng), -1.5, "x", [_bad_int(rng)] * 2][kind]
    set_attr(node, helper.make_attribute(attr.name, value))
    return f"{node.op_type}.{attr.name}={value!r}"


def m_op(model, rng):
    node = _pick(rng, model.graph.node)
    if rng.random() < 0.4:
        node.op_type = str(_pick(rng, ["NoSuchOp", "Relu", "Conv", "Identity", "Gemm"]))
        return f"op_type -> {node.op_type}"
    node.domain = str(_pick(rng, ["custom.x", "com.microsoft", "ai.onnx.ml", "ai.onnx"]))
    if rng.random() < 0.7:
        model.opset_import.append(helper.make_opsetid(node.domain, 1))
    return f"{node.op_type} -> domain {node.domain}"


def m_opset(model, rng):
    if rng.random() < 0.7:
        v = int(_pick(rng, [-1, 0, 1, 5, 6, 7, 10, 11, 13, 21, 25, 28, 29, 1000]))
        model.opset_import[0].version = v
        return f"opset {v}"
    model.ir_version = int(_pick(rng, [0, 1, 3, 7, 11, 12, 13, 99]))
    return f"ir_version {model.ir_version}"


def m_input_type(model, rng):
    value = _pick(rng, [*model.graph.input, *model.graph.output])
    value.type.tensor_type.elem_type = int(_pick(rng, [0, 2, 6, 7, 8, 9, 11, 16]))
    return f"{value.name} elem_type {value.type.tensor_type.elem_type}"


def m_huge_constant(model, rng):
    dims = [int(_pick(rng, [2**20, 2**24, 2**31, 3])) for _ in range(int(rng.integers(1, 4)))]
    op = str(_pick(rng, ["ConstantOfShape", "Expand", "Tile"]))
    shape = numpy_helper.from_array(np.array(dims, dtype=np.int64), "fz_shape")
    model.graph.initializer.append(shape)
    if op == "ConstantOfShape":
        node = helper.make_node(op, ["fz_shape"], ["fz_big"])
    else:
        one = numpy_helper.from_array(np.ones([1] * len(dims), dtype=np.float32), "fz_one")
        model.graph.initializer.append(one)
        node = helper.make_node(op, ["fz_one", "fz_shape"], ["fz_big"])
    model.graph.node.append(node)
    rank = [f"d{i}" for i in range(len(dims))]
    model.graph.output.append(helper.make_tensor_value_info("fz_big", TensorProto.FLOAT, rank))
    return f"{op}{dims} as an extra output"


def m_external_data(model, rng):
    t = _pick(rng, model.graph.initializer)
    if t is None:
        return None
    location = str(_pick(rng, ["../x.data", "/etc/hostname", "nope.data", "", "a/../../b"]))
    del t.external_data[:]
    t.data_location = TensorProto.EXTERNAL
    t.ClearField("raw_data")
    for key, value in (("location", location), ("offset", "0"), ("length", str(2**40))):
        t.external_data.add(key=key, value=value)
    return f"{t.name} external at {location!r}"


def m_metadata(model, rng):
    key, value = _pick(
        rng,
        [
            ("dsp.classes", "[1,"),
            ("dsp.classes", '["a"]'),
            ("dsp.input_length", "-3"),
            ("dsp.input_channels", "2"),
            ("dsp.normalisation", "minmax"),
            ("dsp.output", "labels"),
        ],
    )
    helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, key: value})
    return f"metadata {key}={value}"


def m_weights(model, rng):
    t = _pick(rng, [t for t in model.graph.initializer if len(t.raw_data) >= 4])
    if t is None:
        return None
    raw = bytearray(t.raw_data)
    i = int(rng.integers(len(raw) // 4)) * 4
    value = float(_pick(rng, [np.nan, np.inf, -np.inf, 3e38, 1e-45, 0.0]))
    raw[i : i + 4] = (
        np.float32(value).tobytes() if t.data_type == TensorProto.FLOAT else b"\xff" * 4
    )
    t.raw_data = bytes(raw)
    return f"{t.name}[{i // 4}] = {value}"


MUTATIONS: dict[str, Mutation] = {
    f.__name__[2:]: f
    for f in (
        m_input_dim,
        m_init_dims,
        m_init_dtype,
        m_init_raw,
        m_init_remove_or_duplicate,
        m_dangling,
        m_cycle,
        m_duplicate_output,
        m_reorder,
        m_conv_attr,
        m_other_attr,
        m_op,
        m_opset,
        m_input_type,
        m_huge_constant,
        m_external_data,
        m_metadata,
        m_weights,
    )
}
GENTLE = ("weights", "metadata")  # mutants that stay valid: they reach onnxruntime


def flip_bits(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    out = bytearray(data)
    n = int(rng.integers(1, 9))
    for _ in range(n):
        i = int(rng.integers(len(out)))
        out[i] ^= 1 << int(rng.integers(8))
    return bytes(out), f"flipped {n} bits"


def truncate(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    n = int(rng.integers(1, len(data)))
    return data[:n], f"truncated to {n} of {len(data)} bytes"


def overwrite(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    out = bytearray(data)
    n, i = int(rng.integers(1, 65)), int(rng.integers(len(data)))
    out[i : i + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    return bytes(out), f"overwrote {n} bytes at {i}"


BYTE_MUTATIONS = {"bitflip": flip_bits, "truncate": truncate, "overwrite": overwrite}


@dataclass(frozen=True)
class Case:
    index: int
    source: str
    mutations: tuple[str, ...]
    model: bytes


def make_case(srcs: tuple[Source, ...], seed: int, index: int) -> tuple[Case, Source]:
    """Case ``index`` of run ``seed``: the same mutant every time."""
    rng = np.random.default_rng([seed, index])
    src = srcs[int(rng.integers(len(srcs)))]
    described: list[str] = []
    data = src.model
    if rng.random() < 0.75:  # field edits through the onnx API
        model = onnx.load_from_string(src.model)
        names = list(GENTLE if rng.random() < 0.25 else MUTATIONS)
        for _ in range(int(rng.integers(1, 3))):
            name = str(_pick(rng, names))
            try:
                what = MUTATIONS[name](model, rng)
            except (ValueError, TypeError, IndexError) as e:  # the edit itself did not fit
                what = f"n/a ({e})"
            described.append(f"{name}: {what}" if what else f"{name}: n/a")
        data = model.SerializeToString()
    if not described or rng.random() < 0.3:  # byte-level damage, alone or on top
        name = str(_pick(rng, list(BYTE_MUTATIONS)))
        data, what = BYTE_MUTATIONS[name](data, rng)
        described.append(f"{name}: {what}")
    return Case(index, src.name, tuple(described), data), src

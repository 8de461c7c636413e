"""Fuzz the commands with mutated ONNX models: nothing may crash, hang, trace or leak.

    .venv/bin/python benchmarks/fuzz_onnx.py --cases 1000 --seed 0 [--workers 2]

Each case takes a valid model (the shipped ``models/*.onnx`` or a small graph from
``tests/onnx_graphs.py``), applies one to three mutations (bit flips, truncations, and
field edits through the onnx API: dims, dtypes, dangling inputs, cycles, duplicate
outputs, Conv/other attributes, unknown ops and domains, opsets, external data, huge
constants, metadata), then runs ``inspect``, ``compress`` (with a calibration set that
fits the unmutated model), ``eval`` and, for a share of cases, ``bench --runs 1`` on it.
Every command runs in a forked child of a worker that imported everything first (a
segfault or abort kills the child, not the fuzzer; a hang hits ``--timeout``), with
stdout/stderr on files. A run passes when:

* the child exited by itself with 0, 1 or 2 (no signal, no timeout);
* on a non-zero exit, stderr is exactly one line ``error: ...`` naming an input file,
  and holds no traceback;
* on a failure no output (model, external data, temp file) is left beside the inputs;
* the input files are byte for byte unchanged.

Separately, each mutant is handed *unvalidated* to ``onnxruntime.InferenceSession`` and
run once on zeros in a forked child: that measures what validation protects against
(crashes and hangs of onnxruntime itself), and whether any mutant that *passed*
``io.load_model`` still crashed onnxruntime (the question whether untrusted models need
a subprocess). Results: ``benchmarks/results/fuzz_onnx.json``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import hashlib
import json
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(ROOT / "tests"))

import onnx_graphs  # noqa: E402  (tests/ is not a package)

ALLOWED_CODES = (0, 1, 2)
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


def _set_attr(node: onnx.NodeProto, attr: onnx.AttributeProto) -> None:
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
    _set_attr(conv, helper.make_attribute(name, value, attr_type=kind))
    return f"{conv.op_type}.{name}={value}"


def m_other_attr(model, rng):
    node = _pick(rng, [n for n in model.graph.node if n.attribute])
    if node is None:
        return None
    attr = _pick(rng, node.attribute)
    kind = int(rng.integers(4))
    value = [_bad_int(rng), -1.5, "x", [_bad_int(rng)] * 2][kind]
    _set_attr(node, helper.make_attribute(attr.name, value))
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


# --- running -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    command: str
    code: int | None  # exit code; None when killed by a signal or the timeout
    signal: int | None
    timed_out: bool
    stdout: str
    stderr: str
    seconds: float


Runner = Callable[[list[str], Path], Run]


def run_forked(argv: list[str], folder: Path, timeout: float) -> Run:
    """``dsp-deploy ARGV`` in a forked child of this (pre-imported) process."""
    out, err = folder / ".stdout", folder / ".stderr"
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child: never returns
        _child_cli(argv, out, err)
    code, sig, timed_out = _wait(pid, timeout)
    return Run(
        argv[0],
        code,
        sig,
        timed_out,
        out.read_text(errors="replace") if out.exists() else "",
        err.read_text(errors="replace") if err.exists() else "",
        time.perf_counter() - start,
    )


def _child_cli(argv: list[str], out: Path, err: Path) -> None:
    code = 99
    try:
        for fd, path in ((1, out), (2, err)):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        from dsp_deploy.cli import main

        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # an escaped exception: what a user would see is a traceback
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _wait(pid: int, timeout: float) -> tuple[int | None, int | None, bool]:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            if os.WIFSIGNALED(status):
                return None, os.WTERMSIG(status), False
            return os.WEXITSTATUS(status), None, False
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None, None, True
        time.sleep(0.005)


def raw_onnxruntime(model: bytes, folder: Path, timeout: float) -> str:
    """Unvalidated: ok | error | crash:<signal> | hang — onnxruntime alone on the bytes."""
    result = folder / ".raw"
    pid = os.fork()
    if pid == 0:
        status = "error"
        try:
            status = _raw_session(model)
        except BaseException:
            status = "error"
        finally:
            result.write_text(status)
            os._exit(0)
    code, sig, timed_out = _wait(pid, timeout)
    if timed_out:
        return "hang"
    if sig is not None:
        return f"crash:{signal.Signals(sig).name}"
    return result.read_text() if result.exists() else f"exit:{code}"


def _raw_session(model: bytes) -> str:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    feeds = {}
    for value in session.get_inputs():
        dims = [d if isinstance(d, int) and 0 <= d <= 4096 else 1 for d in value.shape]
        kind = {"tensor(float)": np.float32, "tensor(double)": np.float64}.get(value.type)
        if kind is None or int(np.prod(dims)) > 2**24:
            return "session"  # opened; no sane input to feed
        feeds[value.name] = np.zeros(dims, kind)
    session.run(None, feeds)
    return "ok"


def _digest(paths: list[Path]) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def commands(folder: Path, rng: np.random.Generator, bench_share: float) -> list[list[str]]:
    m = str(folder / "model.onnx")
    out = str(folder / "out.onnx")
    cmds = [
        ["inspect", m, "--json"],
        ["compress", m, "--calib", str(folder / "calib.npz"), "-o", out, "--threads", "1"],
        ["eval", m, "--dataset", str(folder / "data.npz"), "--split", "train", "--threads", "1"],
    ]
    if rng.random() < bench_share:
        cmds.append(["bench", m, "--runs", "1", "--warmup", "0", "--rounds", "1", "--json"])
    return cmds


def problems(run: Run, inputs: list[Path]) -> list[str]:
    """What is wrong with one command's run (empty: it behaved)."""
    found = []
    if run.timed_out:
        found.append("hang (timeout)")
    elif run.signal is not None:
        found.append(f"crash: killed by {signal.Signals(run.signal).name}")
    elif run.code not in ALLOWED_CODES:
        found.append(f"exit code {run.code}")
    if "Traceback" in run.stderr:
        found.append("traceback on stderr")
    if run.code not in (0, None):
        lines = run.stderr.splitlines()
        if len(lines) != 1 or not lines[0].startswith("error: "):
            found.append(f"stderr is not one 'error:' line: {run.stderr[-300:]!r}")
        elif not any(str(p) in lines[0] for p in inputs):
            found.append(f"error names no input file: {lines[0][:300]!r}")
    return found


def leftovers(folder: Path, before: set[str]) -> list[str]:
    """Files a failed command left in the case folder."""
    return sorted(p.name for p in folder.iterdir() if p.name not in before)


def run_case(
    srcs: tuple[Source, ...],
    seed: int,
    index: int,
    *,
    timeout: float = 60.0,
    bench_share: float = 0.15,
    raw: bool = True,
    runner: Runner | None = None,
) -> dict:
    """Make case ``index``, run every command on it; a JSON-ready record.

    ``runner(argv, folder)`` runs one command (default: ``run_forked`` with ``timeout``).
    """
    if runner is None:
        runner = functools.partial(run_forked, timeout=timeout)
    case, src = make_case(srcs, seed, index)
    rng = np.random.default_rng([seed, index, 1])
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        folder = Path(tmp)
        (folder / "model.onnx").write_bytes(case.model)
        np.savez(folder / "calib.npz", **src.calib)
        np.savez(folder / "data.npz", **src.dataset)
        inputs = [folder / n for n in ("model.onnx", "calib.npz", "data.npz")]
        digest = _digest(inputs)
        before = {p.name for p in folder.iterdir()} | {".stdout", ".stderr", ".raw"}
        record = {**asdict(case), "model": len(case.model), "runs": [], "problems": []}
        record["valid"] = _validates(folder / "model.onnx")
        if record["valid"].startswith("crash:"):
            record["problems"].append(f"io.load_model raised {record['valid'][6:]}")
        for argv in commands(folder, rng, bench_share):
            run = runner(argv, folder)
            found = problems(run, inputs)
            if run.code != 0:
                found += [f"left behind: {n}" for n in leftovers(folder, before)]
            for leftover in leftovers(folder, before):  # reset for the next command
                (folder / leftover).unlink()
            if _digest(inputs) != digest:
                found.append("an input file changed")
            record["runs"].append(
                {"command": run.command, "code": run.code, "seconds": round(run.seconds, 3)}
            )
            record["problems"] += [f"{run.command}: {p}" for p in found]
        record["raw_onnxruntime"] = raw_onnxruntime(case.model, folder, timeout) if raw else None
    return record


def _validates(path: Path) -> str:
    """'valid' if io.load_model accepts the file, else the error's class."""
    from dsp_deploy import io
    from dsp_deploy.errors import DspDeployError

    try:
        io.load_model(path)
    except DspDeployError as e:
        return type(e).__name__
    except Exception as e:  # a bug in validation itself: reported as a problem
        return f"crash:{type(e).__name__}: {e}"
    return "valid"


# --- driver --------------------------------------------------------------------------------

_SOURCES: tuple[Source, ...] = ()


def _init() -> None:
    global _SOURCES
    _SOURCES = sources()
    # Import in the worker once, so forked children start warm.
    import onnxruntime  # noqa: F401

    import dsp_deploy.bench.runner  # noqa: F401
    import dsp_deploy.cli  # noqa: F401
    import dsp_deploy.compress.pipeline  # noqa: F401
    import dsp_deploy.evaluate  # noqa: F401
    from dsp_deploy.cli import main

    # typer imports more on its first parse: pay that here, not in every child.
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        main(["inspect", os.devnull])


def _work(args: tuple[int, int, float]) -> dict:
    seed, index, timeout = args
    return run_case(_SOURCES, seed, index, timeout=timeout)


def summarise(records: list[dict], seed: int, seconds: float) -> dict:
    codes = collections.Counter()
    for r in records:
        for run in r["runs"]:
            codes[f"{run['command']}:{run['code']}"] += 1
    raw = collections.Counter(r["raw_onnxruntime"] for r in records)
    crashed_raw = [r for r in records if str(r["raw_onnxruntime"]).startswith(("crash", "hang"))]
    return {
        "seed": seed,
        "cases": len(records),
        "commands_run": sum(len(r["runs"]) for r in records),
        "seconds": round(seconds, 1),
        "cases_with_problems": sum(bool(r["problems"]) for r in records),
        "problems": [
            {
                "index": r["index"],
                "source": r["source"],
                "mutations": r["mutations"],
                "problems": r["problems"],
            }
            for r in records
            if r["problems"]
        ],  # fmt: skip
        "load_model": dict(collections.Counter(r["valid"] for r in records)),
        "exit_codes": dict(sorted(codes.items())),
        "mutations": dict(
            collections.Counter(m.split(":")[0] for r in records for m in r["mutations"])
        ),
        "raw_onnxruntime": dict(raw),
        "raw_onnxruntime_crash_or_hang": [
            {
                "index": r["index"],
                "mutations": r["mutations"],
                "outcome": r["raw_onnxruntime"],
                "load_model": r["valid"],
            }
            for r in crashed_raw
        ],  # fmt: skip
        "validated_but_onnxruntime_crashed": sum(r["valid"] == "valid" for r in crashed_raw),
        "platform": {
            "machine": platform.machine(),
            "python": platform.python_version(),
            "onnx": onnx.__version__,
            "cpus": os.cpu_count(),
        },  # fmt: skip
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "fuzz_onnx.json")
    parser.add_argument("--only", help="replay these case indices (comma-separated)")
    args = parser.parse_args(argv)
    import multiprocessing

    start = time.perf_counter()
    indices = [int(i) for i in args.only.split(",")] if args.only else range(args.cases)
    jobs = [(args.seed, i, args.timeout) for i in indices]
    with multiprocessing.get_context("fork").Pool(args.workers, initializer=_init) as pool:
        records = []
        for n, record in enumerate(pool.imap_unordered(_work, jobs, chunksize=4), 1):
            records.append(record)
            if record["problems"] or n % 50 == 0:
                print(f"{n}/{len(jobs)}", record["index"], record["problems"], flush=True)
    records.sort(key=lambda r: r["index"])
    summary = summarise(records, args.seed, time.perf_counter() - start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "problems"}, indent=2))
    return 1 if summary["cases_with_problems"] else 0


if __name__ == "__main__":
    sys.exit(main())

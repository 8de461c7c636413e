"""compress.fuse: BatchNormalization folded into, and Relu moved before, a Concat of Convs.

Numerics: the rewritten model against the original on onnxruntime and, for the small
graphs, on ``onnx.reference`` too (an independent runtime), within rtol 1e-5 and
atol 1e-5 · max(1, max|y|): float32 rounding of the folded weights (measured differences
are ~1e-7 relative). "Untouched" means ``modified`` is false and the nodes print the same.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from dsp_deploy import metadata
from dsp_deploy.compress.fuse import FuseReport, fuse_concat
from dsp_deploy.compress.graph import node_label

sys.path.insert(0, str(Path(__file__).parent))
import onnx_graphs as G  # noqa: E402

MODELS = Path(__file__).resolve().parent.parent / "models"


def run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    s = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})


def assert_close(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape and g.dtype == e.dtype
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(e).max())))


def assert_same_outputs(before: onnx.ModelProto, after: onnx.ModelProto, x: np.ndarray) -> None:
    """onnxruntime on both; onnx.reference on the rewritten one as a second runtime."""
    expected = run(before, x)
    assert_close(run(after, x), expected)
    assert_close(ReferenceEvaluator(after).run(None, {"x": x}), expected)


def seeded(seed: int = 0, **shapes: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Normal weights; names starting with ``v`` (variances) are positive."""
    rng = np.random.default_rng(seed)
    return {
        k: (rng.uniform(0.2, 2.0, s) if k.startswith("v") else rng.normal(0, 0.7, s))
        for k, s in shapes.items()
    }


def parse(signature: str, body: str, weights: dict[str, np.ndarray], opset: int = 17):
    text = f'<ir_version: 8, opset_import: ["" : {opset}]>\nnet {signature}\n{{\n{body}\n}}'
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(
        numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def inception_module(
    *,
    pool_into_concat: bool = False,
    a_also_output: bool = False,
    scale_as_input: bool = False,
    d_reads_wa: bool = False,
    bn: str = "n = BatchNormalization <epsilon = 0.001> (cat, s, t, m, vr)",
    opset: int = 17,
) -> onnx.ModelProto:
    """Inception's module: Convs a (bias), b (grouped, no bias) and MaxPool → 1×1 Conv c,
    Concat, BN, Relu. Each flag breaks (or, ``d_reads_wa``, strains) one precondition.

    The pool is unpadded and c pads instead (same length): onnx.reference (1.23) fails on a
    padded 1-D MaxPool. ``pool_into_concat`` has no c: a padded MaxPool feeds the Concat.
    """
    pool, fourth = ("pads = [1, 1]", "q") if pool_into_concat else ("strides = [1]", "c")
    width = 3 + 4 + (4 if pool_into_concat else 2)
    body = f"""
    a = Conv <pads = [1, 1]> (x, wa, ba)
    b = Conv <pads = [2, 2], group = 2> (x, wb)
    q = MaxPool <kernel_shape = [3], {pool}> (x)
    c = Conv <pads = [1, 1]> (q, wc)
    cat = Concat <axis = 1> (a, b, {fourth})
    {bn}
    y = Relu (n)
    """
    if pool_into_concat:
        body = body.replace("c = Conv <pads = [1, 1]> (q, wc)", "")
    inputs, outputs = ["float[N, 4, 16] x"], [f"float[N, {width}, 16] y"]
    if a_also_output:
        outputs.append("float[N, 3, 16] a")
    if scale_as_input:
        inputs.append(f"float[{width}] s")
    if d_reads_wa:
        body += "d = Conv <pads = [1, 1]> (x, wa, ba)\n"
        outputs.append("float[N, 3, 16] d")
    shapes = {"wa": (3, 4, 3), "ba": (3,), "wb": (4, 2, 5), "wc": (2, 4, 1)}
    shapes |= {p: (width,) for p in ("s", "t", "m", "vr")}
    weights = seeded(**shapes)
    if scale_as_input:
        del weights["s"]
    signature = f"({', '.join(inputs)}) => ({', '.join(outputs)})"
    return parse(signature, body, weights, opset=opset)


BN = "BatchNormalization <{}> (cat, s, t, m, vr)"


def time_concat(bn: bool) -> onnx.ModelProto:
    """Two 3-channel Convs concatenated along time (axis −1), then (BN and) Relu."""
    body = """
    a = Conv <pads = [1, 1]> (x, wa, ba)
    b = Conv <pads = [2, 2]> (x, wb)
    cat = Concat <axis = -1> (a, b)
    """
    body += "n = BatchNormalization (cat, s, t, m, vr)\ny = Relu (n)" if bn else "y = Relu (cat)"
    shapes = {"wa": (3, 4, 3), "ba": (3,), "wb": (3, 4, 5)}
    shapes |= {p: (3,) for p in ("s", "t", "m", "vr")} if bn else {}
    return parse("(float[N, 4, 16] x) => (float[N, 3, 32] y)", body, seeded(**shapes))


def x_for(model: onnx.ModelProto, n: int = 5, length: int = 16) -> np.ndarray:
    channels = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    return np.random.default_rng(7).standard_normal((n, channels, length)).astype(np.float32)


def texts(nodes) -> list[str]:
    """Nodes as ONNX text: equal nodes, whether or not a default domain is spelled out."""
    return [onnx.printer.to_text(n) for n in nodes]


def read_from(model: onnx.ModelProto, node: onnx.NodeProto) -> list[str]:
    """Op types producing ``node``'s inputs ("initializer" / "input" for the others)."""
    made = {o: n.op_type for n in model.graph.node for o in n.output}
    inits = {t.name for t in model.graph.initializer}
    return [made.get(i, "initializer" if i in inits else "input") for i in node.input]


def test_inception_module_loses_its_bn_and_its_relu_moves_onto_each_conv() -> None:
    model = inception_module()
    before = model.SerializeToString()
    result = fuse_concat(model)
    assert model.SerializeToString() == before  # the input is not modified
    fused = result.model
    onnx.checker.check_model(fused, full_check=True)
    assert result.modified
    assert result.report == FuseReport(("BatchNormalization#5",), ("Relu#6",), ())
    ops = [n.op_type for n in fused.graph.node]
    assert ops == ["Conv", "Conv", "MaxPool", "Conv", "Relu", "Relu", "Relu", "Concat"]
    concat = fused.graph.node[-1]
    assert list(concat.output) == ["y"]  # the name readers and graph outputs know
    assert read_from(fused, concat) == ["Relu"] * 3
    assert [read_from(fused, n) for n in fused.graph.node[4:7]] == [["Conv"]] * 3
    convs = [n for n in fused.graph.node if n.op_type == "Conv"]
    assert [read_from(fused, c)[1:] for c in convs] == [["initializer"] * 2] * 3  # new biases
    left = {t.name for t in fused.graph.initializer}
    assert not left & {"s", "t", "m", "vr", "wa", "ba", "wb", "wc"}  # replaced and unread
    assert len(left) == 6
    assert_same_outputs(model, fused, x_for(model))


def test_an_initializer_another_node_reads_keeps_its_values() -> None:
    model = inception_module(d_reads_wa=True)
    result = fuse_concat(model)
    fused = result.model
    assert result.report.batchnorms == ("BatchNormalization#5",)
    original = {t.name: t for t in model.graph.initializer}
    kept = {t.name: t for t in fused.graph.initializer}
    assert kept["wa"] == original["wa"] and kept["ba"] == original["ba"]
    d = next(n for n in fused.graph.node if n.output[0] == "d")
    a = next(n for n in fused.graph.node if n.output[0] == "a")
    assert list(d.input) == ["x", "wa", "ba"] and not {"wa", "ba"} & set(a.input)
    assert_same_outputs(model, fused, x_for(model))


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda: inception_module(scale_as_input=True), "parameters ['s'] are not initializers"),
        (lambda: time_concat(bn=True), "Concat axis -1 is not the channel axis"),
        (
            lambda: inception_module(pool_into_concat=True, a_also_output=True),
            "Concat inputs ['a', 'q'] are not Convs the BN folds into (at most one may be)",
        ),
        (
            lambda: inception_module(bn=f"n, rm, rv = {BN.format('training_mode = 1')}", opset=15),
            "training form (running statistics as outputs)",
        ),
        (
            lambda: inception_module(bn=f"n = {BN.format('spatial = 0')}", opset=8),
            "spatial = 0 normalises each position separately",
        ),
        (
            lambda: inception_module(bn=f"n = {BN.format('epsilon = 0.001')}", opset=6),
            "training form (is_test = 0)",
        ),
    ],
    ids=[
        "BN scale not constant",
        "time axis",
        "two inputs not foldable",
        "training_mode",
        "spatial 0",
        "opset 6 without is_test",
    ],
)
def test_a_failed_precondition_leaves_the_graph_untouched(build, reason: str) -> None:
    model = build()
    result = fuse_concat(model)
    assert not result.modified
    assert texts(result.model.graph.node) == texts(model.graph.node)
    assert result.model.graph.initializer == model.graph.initializer
    assert result.report.batchnorms == result.report.relus == ()
    nodes = enumerate(model.graph.node)
    bn = next(node_label(n, i) for i, n in nodes if n.op_type == "BatchNormalization")
    assert result.report.skipped == ((bn, reason),)


@pytest.mark.parametrize(
    ("build", "kept"),
    [
        (lambda: inception_module(a_also_output=True), "a"),
        (lambda: inception_module(pool_into_concat=True), "q"),
    ],
    ids=["shared Conv output", "MaxPool input"],
)
def test_one_input_that_is_no_foldable_conv_keeps_a_bn_over_its_channels(build, kept) -> None:
    """The other Convs take the BN; the odd input gets the same BN on its slice of the
    parameters, and the Relu moves onto every input (fused after each Conv)."""
    model = build()
    result = fuse_concat(model)
    assert (len(result.report.batchnorms), len(result.report.relus), result.report.skipped) == (
        1,
        1,
        (),
    )
    fused = result.model
    onnx.checker.check_model(fused, full_check=True)
    (part,) = [n for n in fused.graph.node if n.op_type == "BatchNormalization"]
    original_bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    assert part.input[0] == kept and list(part.attribute) == list(original_bn.attribute)
    inits = {t.name: numpy_helper.to_array(t) for t in fused.graph.initializer}
    original = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    rows = slice(0, 3) if kept == "a" else slice(7, 11)
    for name, param in zip(part.input[1:], ("s", "t", "m", "vr"), strict=True):
        np.testing.assert_array_equal(inits[name], original[param][rows])
    concat = next(n for n in fused.graph.node if n.op_type == "Concat")
    assert read_from(fused, concat) == ["Relu"] * 3
    x = x_for(model)  # onnx.reference (1.23) fails on the padded 1-D MaxPool: ORT only
    assert_close(run(fused, x), run(model, x))
    if kept == "a":
        assert_same_outputs(model, fused, x)


def test_relu_moves_through_a_concat_along_any_axis() -> None:
    model = time_concat(bn=False)
    result = fuse_concat(model)
    assert result.report.relus == ("Relu#3",)
    assert [n.op_type for n in result.model.graph.node] == [
        "Conv",
        "Conv",
        "Relu",
        "Relu",
        "Concat",
    ]
    assert_same_outputs(model, result.model, x_for(model))


def test_lite_stage_keeps_a_bn_only_over_its_hand_crafted_channels() -> None:
    """LITE's main Concat reads Relu(Concat(hand-crafted filters)), no Conv: the BN folds
    into the learned branches and stays over the 3 hand-crafted channels alone; both
    Relus move (the inner one onto the filters, the outer one onto every input)."""
    model = G.hybrid_sources()
    result = fuse_concat(model)
    assert result.report.batchnorms == ("BatchNormalization#8",)
    assert result.report.relus == ("Relu#6", "Relu#9") and result.report.skipped == ()
    bns = [n for n in result.model.graph.node if n.op_type == "BatchNormalization"]
    assert [n.input[0] for n in bns] == ["hr"]
    shapes = {t.name: tuple(t.dims) for t in result.model.graph.initializer}
    assert [shapes[p] for p in bns[0].input[1:]] == [(3,)] * 4
    assert_same_outputs(model, result.model, G.inputs(6))


@st.composite
def concat_modules(draw: st.DrawFn) -> tuple[onnx.ModelProto, np.ndarray]:
    """1–4 Conv branches (widths 1–5, kernels 1/3/5/7, bias or not, dilation 1–2) on
    1–3 input channels, and a MaxPool of the input or not (anywhere in the Concat) →
    Concat → BN (random ε, scales of either sign) → Relu or not."""
    c_in = draw(st.integers(1, 3))
    n = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    nodes, inits, names = [], [], []
    for k in range(n):
        width, kernel = draw(st.integers(1, 5)), draw(st.sampled_from([1, 3, 5, 7]))
        dilation = draw(st.integers(1, 2))
        pad = (kernel - 1) * dilation // 2
        inputs = ["x", f"w{k}"]
        inits.append(
            numpy_helper.from_array(
                rng.normal(0, 1, (width, c_in, kernel)).astype(np.float32), f"w{k}"
            )
        )
        if draw(st.booleans()):
            inputs.append(f"b{k}")
            inits.append(
                numpy_helper.from_array(rng.normal(0, 1, width).astype(np.float32), f"b{k}")
            )
        nodes.append(
            helper.make_node("Conv", inputs, [f"c{k}"], pads=[pad, pad], dilations=[dilation])
        )
        names.append(f"c{k}")
    total = sum(int(t.dims[0]) for t in inits if t.name.startswith("w"))
    pool = draw(st.booleans())  # one input no Conv: the BN stays over its channels
    if pool:
        nodes.append(helper.make_node("MaxPool", ["x"], ["q"], kernel_shape=[3], pads=[1, 1]))
        names.insert(draw(st.integers(0, n)), "q")
        total += c_in
    sign = rng.choice([-1.0, 1.0], total)
    bn = {
        "s": sign * rng.uniform(0.1, 3.0, total),
        "t": rng.normal(0, 1, total),
        "m": rng.normal(0, 1, total),
        "vr": rng.uniform(0.01, 3.0, total),
    }
    inits += [numpy_helper.from_array(v.astype(np.float32), k) for k, v in bn.items()]
    eps = draw(st.sampled_from([1e-5, 1e-3, 0.1]))
    relu = draw(st.booleans())
    nodes += [
        helper.make_node("Concat", names, ["cat"], axis=1),
        helper.make_node("BatchNormalization", ["cat", *bn], ["n" if relu else "y"], epsilon=eps),
        *([helper.make_node("Relu", ["n"], ["y"])] if relu else []),
    ]
    graph = helper.make_graph(
        nodes,
        "concat_module",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c_in, 20])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", total, 20])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = rng.standard_normal((3, c_in, 20)).astype(np.float32)
    return model, x


@settings(max_examples=60, deadline=None)
@given(concat_modules())
def test_any_concat_of_convs_folds_its_bn_and_keeps_its_outputs(case) -> None:
    model, x = case
    result = fuse_concat(model)
    relu = any(n.op_type == "Relu" for n in model.graph.node)
    assert len(result.report.batchnorms) == 1 and len(result.report.relus) == int(relu)
    ops = [n.op_type for n in result.model.graph.node]
    pool = "MaxPool" in ops
    assert ops.count("BatchNormalization") == int(pool) and ops[-1] == "Concat"
    assert ops.count("Relu") == ((ops.count("Conv") + pool) if relu else 0)
    onnx.checker.check_model(result.model, full_check=True)
    assert_close(run(result.model, x), run(model, x))


def with_logits(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy that also outputs each Softmax input: probabilities saturate, logits do not."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in out.graph.node:
        if node.op_type == "Softmax":
            out.graph.output.append(onnx.ValueInfoProto(name=node.input[0]))
    return out


def bn_after_concat(model: onnx.ModelProto) -> list[list[str]]:
    """For each BN reading a Concat, the op types feeding that Concat."""
    made = {o: n for n in model.graph.node for o in n.output}
    return [
        read_from(model, made[n.input[0]])
        for n in model.graph.node
        if n.op_type == "BatchNormalization" and made.get(n.input[0], n).op_type == "Concat"
    ]


@pytest.mark.parametrize(
    ("name", "folded", "moved"), [("lite_gunpoint", 1, 2), ("inception_gunpoint", 6, 6)]
)
def test_shipped_models_keep_their_outputs(name: str, folded: int, moved: int) -> None:
    """Inception loses every BN after a Concat. LITE's one such BN folds into its learned
    branches and stays over the 17 hand-crafted channels (Relu(Concat(filters)), no Conv)."""
    model = onnx.load(MODELS / f"{name}.onnx")
    result = fuse_concat(model)
    assert (len(result.report.batchnorms), len(result.report.relus)) == (folded, moved)
    onnx.checker.check_model(result.model, full_check=True)
    left = bn_after_concat(result.model)  # LITE: its slice reads Concat(Relu(filters))
    assert all(set(ops) != {"Conv"} for ops in left)
    assert len(left) == len(bn_after_concat(model)) - (name != "lite_gunpoint") * folded
    x = np.random.default_rng(5).standard_normal((16, 1, 150)).astype(np.float32)
    assert_close(run(with_logits(result.model), x), run(with_logits(model), x))


def test_compress_fuse_records_what_it_did_and_verifies() -> None:
    from dsp_deploy.compress.pipeline import compress
    from dsp_deploy.io import Calibration

    model = G.inception_like()
    calibration = Calibration({"x": G.inputs(48)}, None)
    result = compress(model, calibration, fuse=True, conv2d=True)
    assert result.verified and result.decision.max_abs_diff <= 1e-5
    stamp = json.loads(metadata.read_metadata(result.model)[metadata.COMPRESS])
    assert stamp["fuse"] == {"batchnorm": 2, "relu": 2}
    assert bn_after_concat(result.model) == []
    plain = compress(model, calibration)
    assert json.loads(metadata.read_metadata(plain.model)[metadata.COMPRESS])["fuse"] == {
        "batchnorm": 0,
        "relu": 0,
    }
    assert len(bn_after_concat(plain.model)) == 2


def test_cli_fuse_flag(tmp_path: Path, run_cli) -> None:
    model, calib = tmp_path / "net.onnx", tmp_path / "calib.npz"
    onnx.save(G.inception_like(), model)
    np.savez(calib, x=G.inputs(40))
    for flag, left in (("--fuse", 0), ("--no-fuse", 2)):
        out = tmp_path / f"out{flag}.onnx"
        result = run_cli("compress", model, "--calib", calib, "-o", out, flag, "--json")
        assert result.code == 0, result.stderr
        assert len(bn_after_concat(onnx.load(out))) == left

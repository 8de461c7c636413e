"""Constant subgraphs are folded before the analysis: one exporter pattern per test.

Each graph has a planted dead channel behind the constant subgraph; before the fold
the subgraph pinned its group (Identity-fed BatchNormalization, Shape → Reshape) or
stopped ``compress`` and ``inspect`` with exit 2 (a Pad whose amounts are computed:
"cannot count MACs ... not static after shape inference").
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from dsp_deploy.compress.fold_constants import fold_constants
from dsp_deploy.compress.groups import find_groups
from dsp_deploy.compress.pipeline import compress
from dsp_deploy.inference import run_model
from dsp_deploy.io import Calibration

HEAD = """
    g = GlobalAveragePool (r)
    f = Flatten (g)
    z = Gemm <transB = 1> (f, fc_w, fc_b)
    probabilities = Softmax <axis = 1> (z)
"""
# TorchScript's F.pad(h, (2, 1)): [2, 1] padded with zeros, reversed by pairs, transposed.
TORCH_PADS = """
    two_one = Constant <value = int64[2] {2, 1}> ()
    four = Constant <value = int64[1] {4}> ()
    zeros = ConstantOfShape <value = int64[1] {0}> (four)
    flat = Concat <axis = 0> (two_one, zeros)
    pairs_shape = Constant <value = int64[2] {-1, 2}> ()
    pairs = Reshape (flat, pairs_shape)
    s0 = Constant <value = int64[1] {-1}> ()
    s1 = Constant <value = int64[1] {-9223372036854775807}> ()
    s2 = Constant <value = int64[1] {0}> ()
    s3 = Constant <value = int64[1] {-1}> ()
    reversed = Slice (pairs, s0, s1, s2, s3)
    columns = Transpose <perm = [1, 0]> (reversed)
    minus_one = Constant <value = int64[1] {-1}> ()
    row = Reshape (columns, minus_one)
    pads1 = Cast <to = 7> (row)
"""
# A hand-written "same" padding of a k = 3 Conv from the length: total = (L − 1) − L + 3.
SAME_PADS = """
    shp = Shape (h)
    axis2 = Constant <value = int64 {2}> ()
    length = Gather <axis = 0> (shp, axis2)
    one = Constant <value = int64 {1}> ()
    three = Constant <value = int64 {3}> ()
    two = Constant <value = int64 {2}> ()
    l1 = Sub (length, one)
    l2 = Sub (l1, length)
    total = Add (l2, three)
    half = Div (total, two)
    rest = Sub (total, half)
    ax0 = Constant <value = int64[1] {0}> ()
    hu = Unsqueeze (half, ax0)
    ru = Unsqueeze (rest, ax0)
    zz = Constant <value = int64[2] {0, 0}> ()
    pads2 = Concat <axis = 0> (zz, hu, zz, ru)
"""


def _model(body: str, weights: dict, length: str = "32", doc: str = "") -> onnx.ModelProto:
    text = f"""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[N, 1, {length}] x) => (float[N, 2] probabilities)
    {{
    {body}
    {HEAD}
    }}
    """
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(
        numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items()
    )
    model.doc_string = doc
    onnx.checker.check_model(model, full_check=True)
    return model


def _conv(rng, name: str, out: int, inp: int, k: int, dead: tuple[int, ...], bias=-1.0) -> dict:
    w, b = rng.normal(0, 1 / np.sqrt(inp * k), (out, inp, k)), rng.normal(0.1, 0.1, out)
    w[list(dead)], b[list(dead)] = 0.0, bias
    return {f"{name}_w": w, f"{name}_b": b}


def _head(rng, inp: int) -> dict:
    return {"fc_w": rng.normal(0, 0.5, (2, inp)), "fc_b": rng.normal(0, 0.1, 2)}


def _series(n: int, seed: int, length: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 1, length)).astype(np.float32)


def _assert_exact(original: onnx.ModelProto, written: onnx.ModelProto, length: int = 32) -> None:
    """Written = original on fresh inputs, on onnxruntime and on onnx.reference."""
    x = _series(16, 99, length)
    expected = run_model(original, {"x": x})[0]
    np.testing.assert_allclose(run_model(written, {"x": x})[0], expected, rtol=0, atol=1e-6)
    reference = ReferenceEvaluator(written).run(None, {"x": x})[0]
    np.testing.assert_allclose(reference, expected, rtol=0, atol=1e-6)


def _kept(model: onnx.ModelProto) -> list[int]:
    weights = {t.name: t.dims[0] for t in model.graph.initializer}
    return [weights[n.input[1]] for n in model.graph.node if n.op_type == "Conv"]


def identity_bn_residual() -> onnx.ModelProto:
    """Conv → BN (its scale an Identity of the shortcut BN's scale) + Conv → BN → Relu.

    Channel 1 is dead on both sides of the Add: zero weights, BN mean and bias 0 on the
    main path (0 stays 0), bias −1 on the shortcut (Relu(0 − 1) = 0).
    """
    rng = np.random.default_rng(0)
    weights = {
        **_conv(rng, "c1", 4, 1, 3, (1,), bias=0.0),
        **_conv(rng, "c2", 4, 1, 1, (1,)),
        **_head(rng, 4),
        "bn_s": rng.uniform(0.5, 1.5, 4),
        "bn_b": rng.normal(0, 0.1, 4) * [1, 0, 1, 1],
        "bn_m": rng.normal(0, 0.1, 4) * [1, 0, 1, 1],
        "bn_v": rng.uniform(0.5, 1.5, 4),
        "sc_b": np.zeros(4),
    }
    body = """
    a = Conv <pads = [1, 1]> (x, c1_w, c1_b)
    bn_s_copy = Identity (bn_s)
    n = BatchNormalization (a, bn_s_copy, bn_b, bn_m, bn_v)
    s = Conv (x, c2_w, c2_b)
    t = BatchNormalization (s, bn_s, sc_b, sc_b, bn_v)
    sum = Add (n, t)
    r = Relu (sum)
    """
    return _model(body, weights)


def computed_pads(length: str = "32") -> onnx.ModelProto:
    """F.pad (TorchScript's chain) → Conv(4) → Relu → "same" Pad from Shape → Conv(3).

    Channel 2 of the first Conv is dead.
    """
    rng = np.random.default_rng(1)
    weights = {**_conv(rng, "c1", 4, 1, 4, (2,)), **_conv(rng, "c2", 3, 4, 3, ()), **_head(rng, 3)}
    body = f"""
    {TORCH_PADS}
    p1 = Pad (x, pads1)
    a = Conv (p1, c1_w, c1_b)
    h = Relu (a)
    {SAME_PADS}
    p2 = Pad (h, pads2)
    b = Conv (p2, c2_w, c2_b)
    r = Relu (b)
    """
    return _model(body, weights, length, doc="computed pads")


def computed_reshape() -> onnx.ModelProto:
    """Conv(4) → Relu → ReduceMean → Reshape to (−1, C·1) from Shape → Gemm; channel 0 dead."""
    rng = np.random.default_rng(2)
    weights = {**_conv(rng, "c1", 4, 1, 3, (0,)), **_head(rng, 4)}
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[N, 1, 32] x) => (float[N, 2] probabilities)
    {
        a = Conv (x, c1_w, c1_b)
        h = Relu (a)
        m = ReduceMean <axes = [2], keepdims = 1> (h)
        shp = Shape (m)
        i1 = Constant <value = int64 {1}> ()
        i2 = Constant <value = int64 {-1}> ()
        channels = Gather <axis = 0> (shp, i1)
        steps = Gather <axis = 0> (shp, i2)
        width = Mul (channels, steps)
        ax0 = Constant <value = int64[1] {0}> ()
        wu = Unsqueeze (width, ax0)
        minus_one = Constant <value = int64[1] {-1}> ()
        shape = Concat <axis = 0> (minus_one, wu)
        f = Reshape (m, shape)
        z = Gemm <transB = 1> (f, fc_w, fc_b)
        probabilities = Softmax <axis = 1> (z)
    }
    """
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(
        numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items()
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def test_identity_fed_batchnorm_prunes_its_residual_group() -> None:
    model = identity_bn_residual()
    (group,) = find_groups(model).groups
    assert (group.sources, group.blocked_by) == (("Conv_0", "Conv_3"), None)
    result = compress(model, Calibration({"x": _series(40, 1)}, None))
    assert result.verified, result.failures
    assert _kept(result.model) == [3, 3]
    assert [n.op_type for n in result.model.graph.node].count("BatchNormalization") == 2
    _assert_exact(model, result.model)


@pytest.mark.parametrize("command", ["compress", "inspect"])
def test_computed_pads_neither_stop_compress_nor_inspect(command, run_cli, tmp_path) -> None:
    model, calib = tmp_path / "pads.onnx", tmp_path / "calib.npz"
    onnx.save(computed_pads(), model)
    np.savez(calib, x=_series(40, 1))
    result = run_cli(command, model, "--calib", calib, "--json")
    assert result.code == 0, result.stderr
    if command == "compress":
        written = onnx.load(tmp_path / "pads.pruned.onnx")
        assert _kept(written) == [3, 3]
        assert [n.op_type for n in written.graph.node].count("Pad") == 2
        _assert_exact(computed_pads(), written)


def test_pads_fold_to_their_values_unless_they_follow_a_dynamic_length() -> None:
    values = {}
    for length in ("32", "L"):
        folded = fold_constants(computed_pads(length)).model
        values[length] = {
            t.name: numpy_helper.to_array(t).tolist() for t in folded.graph.initializer
        }
    assert (values["32"]["pads1"], values["32"]["pads2"]) == ([0, 0, 2, 0, 0, 1], [0, 0, 1] * 2)
    assert values["L"]["pads1"] == [0, 0, 2, 0, 0, 1] and "pads2" not in values["L"]


def test_pads_computed_from_a_dynamic_length_pin_and_stay_exact() -> None:
    model = computed_pads(length="L")
    result = compress(model, Calibration({"x": _series(40, 1)}, None))
    assert result.verified and _kept(result.model) == [4, 3]
    (blocked,) = {g.blocked_by for g in result.plan.analysis.groups if g.blocked_by}
    assert blocked.endswith("pads are not constant")  # they follow L, which is no number
    for length in (20, 32, 57):
        _assert_exact(model, result.model, length)


def test_reshape_shape_from_static_dims_folds_and_prunes() -> None:
    model = computed_reshape()
    assert find_groups(model).groups[0].blocked_by is None
    result = compress(model, Calibration({"x": _series(40, 1)}, None))
    assert result.verified and _kept(result.model) == [3]
    reshape = next(n for n in result.model.graph.node if n.op_type == "Reshape")
    shape = next(t for t in result.model.graph.initializer if t.name == reshape.input[1])
    assert numpy_helper.to_array(shape).tolist() == [-1, 3]
    _assert_exact(model, result.model)


def test_fold_keeps_the_model_contract_and_leaves_its_input() -> None:
    model = computed_pads()
    model.metadata_props.add(key="dsp.arch", value="test")
    before = model.SerializeToString()
    folded = fold_constants(model)
    assert model.SerializeToString() == before
    out = folded.model
    assert (out.doc_string, out.ir_version, list(out.opset_import)) == (
        model.doc_string,
        model.ir_version,
        list(model.opset_import),
    )
    assert list(out.metadata_props) == list(model.metadata_props)
    assert list(out.graph.input) == list(model.graph.input)  # N stays dynamic
    assert list(out.graph.output) == list(model.graph.output)
    assert set(folded.folded) == {
        *("Shape", "Gather", "Sub", "Add", "Div", "Unsqueeze", "Concat"),
        *("Constant", "ConstantOfShape", "Reshape", "Slice", "Transpose", "Cast"),
    }


def test_a_dynamic_dim_and_quantization_are_not_folded() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[N, 4] x) => (float[N, 4] y)
    {
        shp = Shape (x)
        i0 = Constant <value = int64 {0}> ()
        batch = Gather <axis = 0> (shp, i0)
        ax0 = Constant <value = int64[1] {0}> ()
        bu = Unsqueeze (batch, ax0)
        four = Constant <value = int64[1] {4}> ()
        shape = Concat <axis = 0> (bu, four)
        q_w = DequantizeLinear (w, scale, zero)
        v = Reshape (x, shape)
        y = Add (v, q_w)
    }
    """
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.arange(4, dtype=np.int8), "w"),
            numpy_helper.from_array(np.float32(0.5), "scale"),
            numpy_helper.from_array(np.int8(0), "zero"),
        ]
    )
    folded = fold_constants(model)
    assert folded.folded == ()
    assert folded.model.SerializeToString() == model.SerializeToString()

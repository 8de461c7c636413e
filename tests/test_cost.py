"""MACs and params of small graphs, against counts done by hand (and by torch)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from dsp_deploy import metadata
from dsp_deploy.cost import InputShape, ModelCost, NodeCost, input_shapes, model_cost
from dsp_deploy.errors import InputError

HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'


def build(text: str, *weights: str) -> onnx.ModelProto:
    """Parse ONNX text; the graph inputs named in ``weights`` become float initializers."""
    model = onnx.parser.parse_model(HEADER + text)
    rng = np.random.default_rng(0)
    kept = []
    for value in model.graph.input:
        if value.name in weights:
            shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
            array = rng.standard_normal(shape).astype(np.float32)
            model.graph.initializer.append(numpy_helper.from_array(array, value.name))
        else:
            kept.append(value)
    del model.graph.input[:]
    model.graph.input.extend(kept)
    onnx.checker.check_model(model, full_check=True)
    return model


def macs_by_op(cost: ModelCost) -> list[tuple[str, int]]:
    return [(n.op_type, n.macs) for n in cost.per_node]


def test_conv1d_chain_counts_by_hand() -> None:
    model = build(
        """
        chain (float[N,1,100] x, float[8,1,5] W1, float[8] B1, float[4,8,3] W2)
            => (float[N,4,49] y) {
          h = Conv <pads = [2, 2]> (x, W1, B1)
          r = Relu (h)
          y = Conv <strides = [2]> (r, W2)
        }
        """,
        "W1",
        "B1",
        "W2",
    )
    cost = model_cost(model)
    # conv1: out 8×100, each output reads 1·5 inputs; conv2: out 4×49 ((100-3)//2+1), 8·3 each
    assert macs_by_op(cost) == [("Conv", 8 * 100 * 5), ("Relu", 0), ("Conv", 4 * 49 * 8 * 3)]
    assert cost.macs == 4000 + 4704
    assert cost.params == 8 * 5 + 8 + 4 * 8 * 3
    assert [n.params for n in cost.per_node] == [48, 0, 96]


def test_depthwise_and_grouped_conv() -> None:
    model = build(
        """
        grouped (float[N,8,50] x, float[8,1,3] Wd, float[4,4,1] Wg) => (float[N,4,50] y) {
          d = Conv <group = 8, pads = [1, 1]> (x, Wd)
          y = Conv <group = 2> (d, Wg)
        }
        """,
        "Wd",
        "Wg",
    )
    cost = model_cost(model)
    # depthwise: each of 8×50 outputs reads 1 channel × 3 taps; grouped: 8/2 = 4 channels × 1
    assert macs_by_op(cost) == [("Conv", 8 * 50 * 3), ("Conv", 4 * 50 * 4)]


def test_dilated_conv_reads_as_many_taps_over_a_shorter_output() -> None:
    model = build(
        """
        dilated (float[N,2,30] x, float[3,2,4] W) => (float[N,3,21] y) {
          y = Conv <dilations = [3]> (x, W)
        }
        """,
        "W",
    )
    # effective kernel 3·(4-1)+1 = 10 → out length 30-10+1 = 21; 2·4 taps per output
    assert model_cost(model).macs == 3 * 21 * 2 * 4


@pytest.mark.parametrize(
    ("trans_b", "w_shape"),
    [(0, "[16,5]"), (1, "[5,16]")],
)
def test_gemm_with_and_without_transposed_weight(trans_b: int, w_shape: str) -> None:
    model = build(
        f"""
        head (float[N,16] x, float{w_shape} W, float[5] B) => (float[N,5] y) {{
          y = Gemm <transB = {trans_b}> (x, W, B)
        }}
        """,
        "W",
        "B",
    )
    cost = model_cost(model)
    assert cost.macs == 16 * 5
    assert cost.params == 16 * 5 + 5


def test_batched_matmul_broadcasts() -> None:
    model = build(
        """
        mm (float[N,3,7,6] a, float[6,4] W) => (float[N,3,7,4] y) {
          y = MatMul (a, W)
        }
        """,
        "W",
    )
    assert model_cost(model).macs == 3 * 7 * 4 * 6


def test_shared_initializer_counts_once_and_is_shared_out_among_its_readers() -> None:
    model = build(
        """
        shared (float[N,4] x, float[4,4] W) => (float[N,4] y) {
          h = MatMul (x, W)
          y = MatMul (h, W)
        }
        """,
        "W",
    )
    cost = model_cost(model)
    assert cost.params == 16
    assert cost.per_node == (
        NodeCost("MatMul_0", "MatMul", 8, 16),
        NodeCost("MatMul_1", "MatMul", 8, 16),
    )


def test_fixed_batch_is_divided_out() -> None:
    model = build(
        """
        fixed (float[4,1,10] x, float[2,1,3] W) => (float[4,2,8] y) {
          y = Conv (x, W)
        }
        """,
        "W",
    )
    assert model_cost(model).macs == 2 * 8 * 3


DYNAMIC = """
dyn (float[batch,1,L] x, float[2,1,3] W) => (float[batch,2,L] y) {
  y = Conv <pads = [1, 1]> (x, W)
}
"""


def test_dynamic_length_from_argument_or_metadata() -> None:
    model = build(DYNAMIC, "W")
    assert model_cost(model, length=40).macs == 2 * 40 * 3
    metadata.write_metadata(model, {metadata.INPUT_LENGTH: 25})
    assert model_cost(model).macs == 2 * 25 * 3
    assert model_cost(model, length=10).macs == 2 * 10 * 3  # the argument wins


def test_dynamic_length_without_a_hint_leaves_the_macs_unknown() -> None:
    cost = model_cost(build(DYNAMIC, "W"))
    assert (cost.macs, cost.unknown, cost.params) == (0, ("Conv_0",), 6)
    assert model_cost(build(DYNAMIC, "W"), sample={"x": np.ones((3, 1, 7))}).macs == 2 * 7 * 3


# A pad computed at run time: one zero at the end of odd lengths. Neither onnx's data
# propagation nor onnxruntime's inference follows Mod: with the length known, constant
# folding computes the pads; with a dynamic length, only a run sizes the Conv.
PAD_TO_EVEN = """
pad_to_even (float[N,1,L] x, float[4,1,3] W) => (float[N,4,M] y) {
  s = Shape <start = 2> (x)
  two = Constant <value = int64[1] {2}> ()
  odd = Mod (s, two)
  zeros = Constant <value = int64[5] {0, 0, 0, 0, 0}> ()
  pads = Concat <axis = 0> (zeros, odd)
  p = Pad (x, pads)
  y = Conv (p, W)
}
"""


def test_a_run_time_shape_is_unknown_without_a_sample() -> None:
    model = build(PAD_TO_EVEN, "W")
    cost = model_cost(model)
    assert (cost.macs, cost.unknown) == (0, ("Conv_6",))
    assert cost.per_node[-1] == NodeCost("Conv_6", "Conv", 12, 0)
    assert model_cost(model, length=33).macs == 4 * 32 * 3  # folded: pads [.., 1]


@pytest.mark.parametrize(("length", "padded"), [(33, 34), (32, 32)])
def test_a_run_time_shape_is_counted_from_a_sample(length: int, padded: int) -> None:
    model = build(PAD_TO_EVEN, "W")
    sample = {"x": np.random.default_rng(0).standard_normal((5, 1, length))}
    cost = model_cost(model, length=length, sample=sample)
    assert (cost.macs, cost.unknown) == (4 * (padded - 2) * 3, ())  # out × C_in·k


def test_inspect_shows_unknown_macs_and_counts_them_with_calibration(run_cli, tmp_path) -> None:
    model, path, calib = build(PAD_TO_EVEN, "W"), tmp_path / "pad.onnx", tmp_path / "c.npz"
    onnx.save(model, path)  # no dsp.input_length: the length is known only from data
    np.savez(calib, x=np.random.default_rng(0).standard_normal((6, 1, 33)).astype(np.float32))
    plain = run_cli("inspect", path)
    assert plain.code == 0, plain.stderr
    text = " ".join(plain.stdout.split())  # rich wraps lines at the terminal width
    assert "≥ 0 MACs/sample" in text
    assert "MACs unknown (no static shape; --calib counts them from a sample) for: Conv_6" in text
    doc = json.loads(run_cli("inspect", path, "--json").stdout)
    assert (doc["macs"], doc["macs_unknown"], doc["params"], doc["weight_bytes"]) == (
        0,
        ["Conv_6"],
        12,
        48,
    )
    doc = json.loads(run_cli("inspect", path, "--calib", calib, "--json").stdout)
    assert (doc["macs"], doc["macs_unknown"], doc["layers"][0]["macs"]) == (384, [], 384)
    compressed = run_cli("compress", path, "--calib", calib, "-o", tmp_path / "out.onnx", "--json")
    assert compressed.code == 0, compressed.stderr
    assert json.loads(compressed.stdout)["macs"] == [384, 384]


def test_a_fixed_batch_is_fed_by_repeating_the_sample() -> None:
    model = build(PAD_TO_EVEN.replace("[N,1,L]", "[4,1,L]").replace("[N,4,M]", "[4,4,M]"), "W")
    cost = model_cost(model, length=9, sample={"x": np.ones((1, 1, 9))})
    assert cost.macs == 4 * 8 * 3  # per sample: the batch of 4 divided out


def test_model_is_not_modified() -> None:
    model = build(DYNAMIC, "W")
    before = model.SerializeToString()
    model_cost(model, length=12)
    assert model.SerializeToString() == before


@pytest.mark.torch
def test_torch_export_matches_a_torch_side_count(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    net = torch.nn.Sequential(
        torch.nn.Conv1d(1, 6, 9, padding=4, bias=False),
        torch.nn.BatchNorm1d(6),
        torch.nn.ReLU(),
        torch.nn.Conv1d(6, 6, 5, padding=4, dilation=2, groups=6),
        torch.nn.Conv1d(6, 8, 1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool1d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 3),
    ).eval()
    torch_macs = count_torch_macs(torch, net, torch.zeros(1, 1, 64))
    path = tmp_path / "net.onnx"
    torch.onnx.export(
        net,
        (torch.zeros(2, 1, 64),),
        str(path),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    cost = model_cost(onnx.load(str(path)))
    assert cost.macs == torch_macs
    # BN folded into the first conv by the exporter adds its bias (6) and drops 4×6 BN stats
    torch_params = sum(p.numel() for p in net.parameters()) - 2 * 6 + 6
    assert cost.params == torch_params


def count_torch_macs(torch, net, x) -> int:
    """Conv: out elements × in/groups × k; Linear: in × out per sample."""
    total = 0

    def hook(module, _inputs, output) -> None:
        nonlocal total
        if isinstance(module, torch.nn.Conv1d):
            total += output.numel() * module.in_channels // module.groups * module.kernel_size[0]
        elif isinstance(module, torch.nn.Linear):
            total += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in net.modules()]
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    return total


def test_input_shapes_resolve_batch_and_length() -> None:
    model = build(DYNAMIC, "W")
    assert input_shapes(model, batch=64, length=30) == (InputShape("x", "float32", (64, 1, 30)),)
    with pytest.raises(InputError, match="positive"):
        input_shapes(model, length=0)


def test_a_fixed_batch_cannot_run_at_another_batch() -> None:
    model = build(
        """
        fixed (float[4,1,10] x, float[2,1,3] W) => (float[4,2,8] y) {
          y = Conv (x, W)
        }
        """,
        "W",
    )
    assert input_shapes(model, batch=4)[0].shape == (4, 1, 10)
    with pytest.raises(InputError, match="fixed batch of 4; cannot run it at batch 1"):
        input_shapes(model, batch=1)


# --- quantized and fused ops: MACs as their float op, params and bytes by dtype ---------


def build_q(text: str, **weights: np.ndarray) -> onnx.ModelProto:
    """Parse ONNX text (onnx and com.microsoft opsets); the graph inputs named in
    ``weights`` become initializers of those arrays' dtypes. Checked and run once."""
    header = '<ir_version: 8, opset_import: ["" : 17, "com.microsoft" : 1]>\n'
    model = onnx.parser.parse_model(header + text)
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in weights.items())
    kept = [v for v in model.graph.input if v.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: _draw(i.type, 2) for i in model.graph.input}
    (y,) = session.run(None, feeds)  # the declared output shape is what onnxruntime makes
    declared = model.graph.output[0].type.tensor_type.shape.dim
    assert y.shape[1:] == tuple(d.dim_value for d in declared[1:])
    return model


def _draw(type_: onnx.TypeProto, batch: int) -> np.ndarray:
    dtype = onnx.helper.tensor_dtype_to_np_dtype(type_.tensor_type.elem_type)
    shape = [batch, *(d.dim_value for d in type_.tensor_type.shape.dim[1:])]
    return np.random.default_rng(0).integers(0, 100, shape).astype(dtype)


def scalars(**values: np.generic) -> dict[str, np.ndarray]:
    """Scalar quantization parameters (scales, zero points) as 0-d arrays of their dtype."""
    return {k: np.array(v) for k, v in values.items()}


I8 = {"W": np.ones((4, 2, 3), np.int8)}
QPARAMS = {"xs": np.float32(0.1), "xz": np.uint8(3), "ws": np.float32(0.2), "wz": np.int8(0)}


def test_qlinearconv_counts_as_conv_with_int8_weights_as_params() -> None:
    model = build_q(
        """
        qconv (uint8[N,2,20] x, float xs, uint8 xz, int8[4,2,3] W, float ws, int8 wz,
               float ys, uint8 yz) => (uint8[N,4,18] y) {
          y = QLinearConv (x, xs, xz, W, ws, wz, ys, yz)
        }
        """,
        **I8, **scalars(**QPARAMS, ys=np.float32(0.3), yz=np.uint8(1)),
    )  # fmt: skip
    cost = model_cost(model)
    assert cost.per_node == (NodeCost("QLinearConv_0", "QLinearConv", 24 + 6, 4 * 18 * 2 * 3),)
    assert cost.bytes == 24 + 3 * 4 + 3  # int8 weights, three float scales, 3 zero points


def test_convinteger_counts_as_conv() -> None:
    model = build_q(
        """
        convint (uint8[N,2,20] x, int8[4,2,3] W, uint8 xz, int8 wz) => (int32[N,4,10] y) {
          y = ConvInteger <strides = [2], pads = [1, 0]> (x, W, xz, wz)
        }
        """,
        **I8, **scalars(xz=np.uint8(3), wz=np.int8(0)),
    )  # fmt: skip
    assert macs_by_op(model_cost(model)) == [("ConvInteger", 4 * 10 * 2 * 3)]


def test_fusedconv_counts_as_conv_from_onnxruntime_shapes() -> None:
    # onnx knows no com.microsoft schema: its output shape comes from onnxruntime
    model = build_q(
        """
        fused (float[N,2,20] x, float[4,2,3] W, float[4] B) => (float[N,4,20] y) {
          y = com.microsoft.FusedConv <activation = "Relu", pads = [1, 1]> (x, W, B)
        }
        """,
        W=np.ones((4, 2, 3), np.float32), B=np.zeros(4, np.float32),
    )  # fmt: skip
    cost = model_cost(model)
    assert (macs_by_op(cost), cost.unknown, cost.bytes) == ([("FusedConv", 4 * 20 * 6)], (), 112)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_qgemm_counts_as_gemm(trans_b: int) -> None:
    shape = (5, 16) if trans_b else (16, 5)
    model = build_q(
        f"""
        qgemm (uint8[N,16] a, float xs, uint8 xz, int8{list(shape)} W, float ws, int8 wz)
            => (float[N,5] y) {{
          y = com.microsoft.QGemm <transB = {trans_b}> (a, xs, xz, W, ws, wz)
        }}
        """,
        W=np.ones(shape, np.int8), **scalars(**QPARAMS),
    )  # fmt: skip
    assert macs_by_op(model_cost(model)) == [("QGemm", 16 * 5)]


def test_qlinearmatmul_counts_as_matmul() -> None:
    model = build_q(
        """
        qmm (uint8[N,3,6] a, float xs, uint8 xz, uint8[6,4] W, float ws, uint8 wz,
             float ys, uint8 yz) => (uint8[N,3,4] y) {
          y = QLinearMatMul (a, xs, xz, W, ws, wz, ys, yz)
        }
        """,
        W=np.ones((6, 4), np.uint8),
        **scalars(**{**QPARAMS, "wz": np.uint8(0)}, ys=np.float32(0.3), yz=np.uint8(1)),
    )  # fmt: skip
    assert macs_by_op(model_cost(model)) == [("QLinearMatMul", 3 * 4 * 6)]


def test_matmulinteger_counts_as_matmul() -> None:
    model = build_q(
        """
        mmint (uint8[N,3,6] a, int8[6,4] W, uint8 xz, int8 wz) => (int32[N,3,4] y) {
          y = MatMulInteger (a, W, xz, wz)
        }
        """,
        W=np.ones((6, 4), np.int8), **scalars(xz=np.uint8(3), wz=np.int8(0)),
    )  # fmt: skip
    assert macs_by_op(model_cost(model)) == [("MatMulInteger", 3 * 4 * 6)]


def test_int64_initializers_are_not_params() -> None:
    model = build(
        """
        view (float[N,2,3] x, float[6,4] W) => (float[N,4] y) {
          shape = Constant <value = int64[2] {-1, 6}> ()
          f = Reshape (x, shape)
          y = MatMul (f, W)
        }
        """,
        "W",
    )
    model.graph.initializer.append(numpy_helper.from_array(np.array([-1, 6]), "unused"))
    cost = model_cost(model)
    assert (cost.params, cost.bytes) == (24, 96)


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (onnx.TensorProto.INT64, 80),  # counted as 5 bytes once: "4" in its name
        (onnx.TensorProto.FLOAT8E4M3FN, 10),  # likewise
        (onnx.TensorProto.INT4, 5),  # packed two per byte
        (onnx.TensorProto.FLOAT16, 20),
        (onnx.TensorProto.STRING, None),
    ],
)
def test_tensor_bytes_by_bit_width(dtype: int, expected: int | None) -> None:
    from dsp_deploy.modelcheck import tensor_bytes

    assert tensor_bytes(dtype, (2, 5)) == expected

"""compress.layout (1-D convs as 2-D for onnxruntime's blocked kernels) and --align."""

from __future__ import annotations

import hashlib
import platform
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from dsp_deploy.compress.layout import LayoutReport, conv1d_as_conv2d, qualifies

sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


def run(model: onnx.ModelProto, x: np.ndarray, optimized: Path | None = None) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    s = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def conv_model(c_in: int, c_out: int, group: int = 1, k: int = 5, opset: int = 17):
    w = np.random.default_rng(0).standard_normal((c_out, c_in // group, k)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal(c_out).astype(np.float32)
    conv = helper.make_node(
        "Conv", ["x", "w", "b"], ["y"], name="conv", group=group, pads=[2, 2], dilations=[1]
    )
    graph = helper.make_graph(
        [conv, helper.make_node("Relu", ["y"], ["z"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c_in, 30])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", c_out, 30])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _wrap(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """The rewritten model and how many Convs it wrapped (``modified`` iff any)."""
    result = conv1d_as_conv2d(model)
    assert result.modified == bool(result.report.wrapped)
    return result.model, len(result.report.wrapped)


@pytest.mark.parametrize("name", ["lite_gunpoint", "inception_gunpoint.pruned"])
def test_shipped_models_keep_their_outputs(name: str) -> None:
    model = onnx.load(MODELS / f"{name}.onnx")
    before = hashlib.sha256(model.SerializeToString()).hexdigest()
    wrapped, count = _wrap(model)
    assert hashlib.sha256(model.SerializeToString()).hexdigest() == before  # input untouched
    assert count > 0
    onnx.checker.check_model(wrapped, full_check=True)
    x = np.random.default_rng(3).standard_normal((4, 1, 150)).astype(np.float32)
    np.testing.assert_allclose(run(wrapped, x), run(model, x), rtol=1e-5, atol=1e-6)
    convs = [n for n in wrapped.graph.node if n.op_type == "Conv"]
    four_d = [n for n in convs if len(next(a.ints for a in n.attribute if a.name == "pads")) == 4]
    assert len(four_d) == count


def test_which_convs_qualify() -> None:
    assert qualifies(1, 32, 1) and qualifies(112, 32, 1) and qualifies(12, 8, 1)
    assert not qualifies(111, 32, 1)  # input channels off the block
    assert not qualifies(32, 1, 1)  # one output channel would be padded to a block
    assert qualifies(112, 112, 112) and not qualifies(111, 111, 111) and not qualifies(26, 26, 26)


def test_other_convs_stay_one_dimensional() -> None:
    model = conv_model(111, 32)
    wrapped, count = _wrap(model)
    assert count == 0
    assert [n.op_type for n in wrapped.graph.node] == ["Conv", "Relu"]


def test_opset_11_uses_the_axes_attribute() -> None:
    model = conv_model(8, 8, group=8, opset=11)
    wrapped, count = _wrap(model)
    assert count == 1
    onnx.checker.check_model(wrapped, full_check=True)
    assert [n.op_type for n in wrapped.graph.node] == ["Unsqueeze", "Conv", "Relu", "Squeeze"]
    x = np.random.default_rng(4).standard_normal((2, 8, 30)).astype(np.float32)
    np.testing.assert_allclose(run(wrapped, x), run(model, x), rtol=1e-5, atol=1e-6)


def _any(c_in: int, c_out: int, group: int) -> bool:
    return True


def _blocks_depthwise(channels: int, tmp_path: Path) -> bool:
    model = conv1d_as_conv2d(conv_model(channels, channels, group=channels), select=_any).model
    out = tmp_path / "optimized.onnx"
    run(model, np.zeros((1, channels, 30), np.float32), optimized=out)
    return any(n.domain == "com.microsoft.nchwc" for n in onnx.load(out).graph.node)


@pytest.mark.parametrize(
    ("c_in", "c_out", "group", "ort_blocks"),
    [(1, 32, 1, True), (12, 32, 1, True), (16, 24, 1, True), (17, 32, 1, False),
     (111, 32, 1, False), (32, 1, 1, True), (32, 26, 1, True), (112, 112, 112, True),
     (111, 111, 111, False), (24, 24, 24, True), (26, 26, 26, False)],
)  # fmt: skip
def test_the_rule_matches_onnxruntime(
    c_in: int, c_out: int, group: int, ort_blocks: bool, tmp_path: Path
) -> None:
    """onnxruntime blocks a wrapped conv as the docstring says, and all that qualify."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("onnxruntime blocks channels (NCHWc) on x86 only")
    if not _blocks_depthwise(8, tmp_path):
        pytest.skip("this CPU's onnxruntime block is not 8 (AVX-512 uses 16)")
    forced = conv1d_as_conv2d(conv_model(c_in, c_out, group=group), select=_any).model
    out = tmp_path / "optimized.onnx"
    run(forced, np.zeros((1, c_in, 30), np.float32), optimized=out)
    blocked = any(n.domain == "com.microsoft.nchwc" for n in onnx.load(out).graph.node)
    assert blocked == ort_blocks
    if qualifies(c_in, c_out, group):  # never wrap what onnxruntime leaves on the 1-D path
        assert blocked


def test_a_relu_after_a_wrapped_conv_moves_inside_and_onnxruntime_fuses_it(tmp_path) -> None:
    model = conv_model(16, 32)
    assert conv1d_as_conv2d(model).report == LayoutReport(("conv",), ("Relu#1",))
    wrapped, count = _wrap(model)
    assert count == 1
    ops = [n.op_type for n in wrapped.graph.node]
    assert ops == ["Unsqueeze", "Conv", "Relu", "Squeeze"]
    assert wrapped.graph.node[-1].output[0] == "z"  # the Relu's output, as before
    onnx.checker.check_model(wrapped, full_check=True)
    x = np.random.default_rng(3).standard_normal((4, 16, 30)).astype(np.float32)
    np.testing.assert_allclose(run(wrapped, x), run(model, x), rtol=1e-5, atol=1e-5)
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return  # the fusion checked below is into x86's blocked Conv
    out = tmp_path / "optimized.onnx"
    run(wrapped, x, optimized=out)
    optimized = onnx.load(out).graph.node
    assert "Relu" not in [n.op_type for n in optimized]
    (conv,) = [n for n in optimized if n.op_type == "Conv"]
    assert {a.name: a.s for a in conv.attribute}.get("activation") == b"Relu"


def test_a_relu_that_is_not_the_convs_only_reader_stays_outside() -> None:
    model = conv_model(16, 32)
    model.graph.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, None))
    wrapped, count = _wrap(model)
    assert count == 1
    assert [n.op_type for n in wrapped.graph.node] == ["Unsqueeze", "Conv", "Squeeze", "Relu"]
    x = np.random.default_rng(3).standard_normal((2, 16, 30)).astype(np.float32)
    np.testing.assert_allclose(run(wrapped, x), run(model, x), rtol=1e-5, atol=1e-5)


def test_a_relu_stays_outside_when_a_subgraph_also_reads_the_conv() -> None:
    model = conv_model(16, 32)
    then = helper.make_graph(
        [helper.make_node("Identity", ["y"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N", 32, 30])],
    )
    cond = numpy_helper.from_array(np.array(True), "cond")
    model.graph.initializer.append(cond)
    model.graph.node.append(
        helper.make_node("If", ["cond"], ["u"], then_branch=then, else_branch=then)
    )
    model.graph.output.append(helper.make_tensor_value_info("u", TensorProto.FLOAT, ["N", 32, 30]))
    wrapped, count = _wrap(model)
    assert count == 1
    ops = [n.op_type for n in wrapped.graph.node]
    assert ops == ["Unsqueeze", "Conv", "Squeeze", "Relu", "If"]  # "y" still exists
    onnx.checker.check_model(wrapped, full_check=True)


# --- --align -----------------------------------------------------------------------------


def _conv_channels(model: onnx.ModelProto) -> dict[str, int]:
    weights = {t.name: t.dims for t in model.graph.initializer}
    return {n.name: int(weights[n.input[1]][0]) for n in model.graph.node if n.op_type == "Conv"}


def test_align_keeps_back_the_fewest_units_for_multiples() -> None:
    import onnx_graphs as G

    from dsp_deploy.compress.pipeline import compress
    from dsp_deploy.io import Calibration

    model = G.chain(dead1=(1,), dead2=(0, 2))  # c1: 4 channels, 1 dead; c2: 3, 2 dead
    calibration = Calibration({"x": G.inputs(64)}, None)
    plain = compress(model, calibration, holdout=0.0)
    aligned = compress(model, calibration, holdout=0.0, align=2)
    assert list(_conv_channels(plain.model).values()) == [3, 1]
    assert list(_conv_channels(aligned.model).values()) == [4, 2]  # 3 → 4, 1 → 2
    reasons = set(dict(aligned.plan.held).values())
    assert reasons == {"keeps its conv's channels a multiple of 2"}
    assert aligned.verified and aligned.decision.max_abs_diff <= 1e-5


def test_align_8_on_the_shipped_inception_gives_blocked_channel_counts() -> None:
    from dsp_deploy.compress.pipeline import compress
    from dsp_deploy.io import load_calibration, load_model

    model = load_model(MODELS / "inception_gunpoint.onnx")
    calibration = load_calibration(ROOT / "calibration" / "inception_gunpoint.npz", model)
    result = compress(model, calibration, align=8, conv2d=True)
    assert result.verified
    before, after = _conv_channels(model), _conv_channels(result.model)
    assert all(after[name] % 8 == 0 for name in after)
    assert sum(after.values()) < sum(before.values())  # still pruned
    wrapped = sum(n.op_type == "Squeeze" for n in result.model.graph.node)
    assert wrapped == len(after)  # every conv now takes the blocked kernels


def test_align_8_on_the_shipped_lite_gives_its_depthwise_convs_blocked_widths() -> None:
    """LITE's concat (17 one-channel filters + 3 branches) cannot have every source and the
    depthwise width aligned at once: the depthwise width wins, and the loop ends."""
    from dsp_deploy.compress.pipeline import compress
    from dsp_deploy.io import load_calibration, load_model

    model = load_model(MODELS / "lite_gunpoint.onnx")
    calibration = load_calibration(ROOT / "calibration" / "lite_gunpoint.npz", model)
    result = compress(model, calibration, align=8, conv2d=True)
    assert result.verified
    after = _conv_channels(result.model)
    depthwise = [n for n in result.model.graph.node if n.op_type == "Conv" and "dw" in n.name]
    assert len(depthwise) == 2
    assert all(after[n.name] % 8 == 0 for n in depthwise)
    assert all(n.input[0].endswith("_4d_in") for n in depthwise)  # blocked form
    assert sum(after.values()) < sum(_conv_channels(model).values())

"""ONNX export: parity with PyTorch on onnxruntime, graph contract, metadata, passes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

torch = pytest.importorskip("torch")

from dsp_deploy import metadata  # noqa: E402
from dsp_deploy.nets.ensemble import probability_model  # noqa: E402
from dsp_deploy.nets.inception import Inception, InceptionConfig  # noqa: E402
from dsp_deploy.nets.lite import Lite, LiteConfig  # noqa: E402
from dsp_deploy.train.export import model_metadata, to_onnx  # noqa: E402
from dsp_deploy.train.onnx_passes import (  # noqa: E402
    FoldReport,
    PadReport,
    fold_constants,
    fold_pads_into_convs,
)

pytestmark = pytest.mark.torch
LENGTH = 48


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _member(family: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = Lite(LiteConfig(3)) if family == "lite" else Inception(InceptionConfig(3))
    # Non-trivial BN statistics, so that outputs are far from uniform probabilities.
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            with torch.no_grad():
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.2, 2.0)
                m.weight.uniform_(0.5, 2.0)
                m.bias.normal_(0, 0.5)
    with torch.no_grad():
        net.fc.weight.mul_(20.0)
    return net


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


@pytest.mark.parametrize(
    ("family", "members"), [("lite", 1), ("inception", 1), ("lite", 5), ("inception", 5)]
)
def test_onnxruntime_matches_torch(family: str, members: int) -> None:
    model = probability_model([_member(family, s) for s in range(members)])
    proto = to_onnx(model, length=LENGTH)
    session = _session(proto)
    rng = np.random.default_rng(0)
    for batch in (1, 7):
        x = rng.normal(size=(batch, 1, LENGTH)).astype(np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        (got,) = session.run(["probabilities"], {"x": x})
        assert got.shape == (batch, 3)
        assert np.abs(got - expected).max() <= 1e-5
        assert expected.max() > 0.4  # not two uniform (1/3) outputs


def test_graph_contract() -> None:
    proto = to_onnx(probability_model([_member("lite", 0)]), length=LENGTH)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    (x,) = proto.graph.input
    assert x.name == "x"
    assert [d.dim_param or d.dim_value for d in x.type.tensor_type.shape.dim] == [
        "batch",
        1,
        LENGTH,
    ]
    assert [o.name for o in proto.graph.output] == ["probabilities"]
    ops = {n.op_type for n in proto.graph.node}
    assert not ops & {"Pad", "Constant", "Identity"}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert len(convs) == 3 + 17 + 2 + 2  # branches, hand-crafted, 2 × (depthwise, pointwise)
    for conv in convs:
        attrs = {a.name: a for a in conv.attribute}
        assert attrs["auto_pad"].s == b"NOTSET" if "auto_pad" in attrs else True
    # the k=40 branch: Keras "same" = 19 left, 20 right
    pads = {tuple(a.ints) for c in convs for a in c.attribute if a.name == "pads"}
    assert (19, 20) in pads
    onnx.checker.check_model(proto, full_check=True)


def test_metadata_round_trip() -> None:
    meta = model_metadata(
        classes=("a", "b", "c"), length=LENGTH, channels=1, arch="lite", dataset="Toy",
        training={"epochs": 3, "sparsity": 1e-5},
    )  # fmt: skip
    proto = to_onnx(probability_model([_member("lite", 0)]), length=LENGTH, meta=meta)
    read = metadata.read_metadata(proto)
    assert metadata.class_names(read) == ("a", "b", "c")
    assert read[metadata.INPUT_LENGTH] == str(LENGTH)
    assert read[metadata.OUTPUT] == "probabilities"
    assert read[metadata.NORMALISATION] == metadata.ZNORM
    assert json.loads(read[metadata.TRAINING]) == {"epochs": 3, "sparsity": 1e-5}
    assert {metadata.ARCH, metadata.DATASET, metadata.VERSION, metadata.INPUT_CHANNELS} <= set(read)


PAD_CONV = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 2, 10] x) => (float[N, 3, 10] y) <float[3, 2, 4] w = {WEIGHTS}> {
    p = Constant <value = int64[6] {0, 0, 1, 0, 0, 2}> ()
    pads = Identity (p)
    xp = Pad <mode = "constant"> (x, pads)
    y = Conv <pads = [0, 0]> (xp, w)
}
"""


def _parse(text: str) -> onnx.ModelProto:
    weights = ", ".join(str(float(v)) for v in np.linspace(-1, 1, 24))
    return onnx.parser.parse_model(text.replace("{WEIGHTS}", "{" + weights + "}"))


def test_fold_pad_into_conv() -> None:
    model = _parse(PAD_CONV)
    constants = fold_constants(model)
    assert constants.modified and constants.report == FoldReport(1, ("Identity",), 0)
    pads = fold_pads_into_convs(constants.model)
    assert pads.modified and pads.report == PadReport(("Pad#0",))
    folded = pads.model
    assert [n.op_type for n in folded.graph.node] == ["Conv"]
    (pads,) = [a.ints for a in folded.graph.node[0].attribute if a.name == "pads"]
    assert list(pads) == [1, 2]
    assert len(model.graph.node) == 4  # the input model is untouched
    x = np.random.default_rng(0).normal(size=(2, 2, 10)).astype(np.float32)
    (expected,) = ReferenceEvaluator(model).run(None, {"x": x})
    (got,) = ReferenceEvaluator(folded).run(None, {"x": x})
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "change",
    [
        ('<mode = "constant">', '<mode = "reflect">'),  # not zero padding
        ("{0, 0, 1, 0, 0, 2}", "{0, 1, 1, 0, 0, 2}"),  # pads the channel axis
        ("y = Conv <pads = [0, 0]> (xp, w)", "c = Conv <pads = [0, 0]> (xp, w)\n y = Add (xp, xp)"),
    ],
)
def test_pad_that_cannot_fold_stays(change: tuple[str, str]) -> None:
    text = PAD_CONV.replace(*change)
    if "Add" in change[1]:
        text = text.replace("float[N, 3, 10] y", "float[N, 2, 13] y")
    result = fold_pads_into_convs(fold_constants(_parse(text)).model)
    assert "Pad" in [n.op_type for n in result.model.graph.node]
    assert not result.modified and result.report.folded == ()


@pytest.mark.parametrize("family", ["lite", "inception"])
def test_export_traces_the_plain_path(family: str) -> None:
    """The fast training kernels step aside while exporting: same graph with them on or off."""
    from dsp_deploy.nets.layers import use_fast_kernels

    net = _member(family, 0)
    fast = to_onnx(probability_model([use_fast_kernels(net, True)]), length=LENGTH)
    plain = to_onnx(probability_model([use_fast_kernels(net, False)]), length=LENGTH)
    assert fast.graph.node == plain.graph.node
    assert fast.graph.initializer == plain.graph.initializer
    convs = [n for n in fast.graph.node if n.op_type == "Conv"]
    # LITE: branches, hand-crafted, 2 × (depthwise, pointwise); Inception: 6 × 3 branches,
    # 5 bottlenecks, 6 pool convs, 2 shortcuts
    assert len(convs) == (3 + 17 + 2 + 2 if family == "lite" else 6 * 3 + 5 + 6 + 2)

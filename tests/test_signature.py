"""signature: one model contract for runtime, eval and ensemble, one default without metadata.

The default is tested on a tiny torch Conv1d net exported with logits out and no metadata:
every reader must call it raw-input/logits, ``predict_proba`` must be its softmax, and eval
on a raw (not z-normalised) file must count what the runtime predicts.
"""

from __future__ import annotations

import glob
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dsp_deploy import ensemble, metadata
from dsp_deploy import signature as sig
from dsp_deploy.errors import ModelError
from dsp_deploy.evaluate import evaluate
from dsp_deploy.runtime import Classifier

ROOT = Path(__file__).resolve().parent.parent
L, CLASSES = 24, 3


def torch_logits_net(seed: int = 1) -> tuple[onnx.ModelProto, object]:
    """Conv1d(1→4, k5) → ReLU → GAP → Flatten → Linear(4→3), exported with no metadata."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv1d(1, 4, 5),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool1d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, CLASSES),
    ).eval()
    buffer = io.BytesIO()
    torch.onnx.export(
        net,
        (torch.zeros(1, 1, L),),
        buffer,
        dynamo=False,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}},
    )
    model = onnx.load_from_string(buffer.getvalue())
    assert not model.metadata_props and model.graph.node[-1].op_type == "Gemm"
    return model, net


def raw_series(n: int, seed: int = 1) -> np.ndarray:
    """Offset, scaled series: z-normalising them changes what the net sees."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, 1, L)) * rng.uniform(0.2, 3, (n, 1, 1)) + rng.normal(0, 3, (n, 1, 1))
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def logits_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    model, net = torch_logits_net()
    path = tmp_path_factory.mktemp("sig") / "logits.onnx"
    onnx.save(model, path)
    return path, net


@pytest.mark.torch
def test_every_reader_takes_a_bare_logits_model_as_raw_input_and_logits(logits_file) -> None:
    path, _ = logits_file
    model = onnx.load(path)
    read = sig.from_model(model, "m")
    assert (read.normalisation, read.output_kind) == (sig.NO_NORMALISATION, sig.LOGITS)
    assert (read.channels, read.length, read.batch, read.classes, read.class_count) == (
        1, L, None, None, CLASSES,
    )  # fmt: skip
    assert read.origin("output_kind") == "default"  # no final Softmax: a probe decides
    session = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    detected = sig.detect_output(read, lambda x: session.run(None, {"x": x})[0])
    assert detected.output_kind == sig.LOGITS and detected.origin("output_kind") == "detected"
    assert Classifier(path).signature == detected  # the session front end reads the same
    member = ensemble.signature(model, "m")
    assert member.shared == detected
    assert (member.normalisation, member.output_kind) == (read.normalisation, read.output_kind)


@pytest.mark.torch
def test_predict_proba_of_a_logits_model_is_its_softmax(logits_file) -> None:
    torch = pytest.importorskip("torch")
    path, net = logits_file
    x = raw_series(8)
    proba = Classifier(path).predict_proba(x)
    with torch.no_grad():
        z = net(torch.from_numpy(x)).double().numpy()
    expected = np.exp(z - z.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(proba, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.torch
def test_eval_on_a_raw_file_counts_what_the_runtime_predicts(logits_file, tmp_path: Path) -> None:
    path, _ = logits_file
    x = raw_series(60)
    clf = Classifier(path)
    raw_pred = clf.predict(x)
    znorm_pred = clf.predict_proba(sig_znorm(x)).argmax(axis=1)
    assert len(set(raw_pred)) == CLASSES and (raw_pred != znorm_pred).sum() > 10
    y = np.arange(60) % CLASSES
    data = tmp_path / "raw.npz"
    np.savez(data, X=x, y=y)
    result = evaluate(path, data, "test")
    assert result.correct == int((raw_pred == y).sum())
    expected = np.zeros((CLASSES, CLASSES), dtype=np.int64)
    np.add.at(expected, (y, raw_pred), 1)
    assert np.array_equal(result.confusion, expected)


def sig_znorm(x: np.ndarray) -> np.ndarray:
    from dsp_deploy.data import znormalise

    return znormalise(x).astype(np.float32)


@pytest.mark.torch
def test_metadata_overrides_the_graph() -> None:
    model, _ = torch_logits_net()
    metadata.write_metadata(
        model, {metadata.OUTPUT: "probabilities", metadata.NORMALISATION: metadata.ZNORM}
    )
    read = sig.from_model(model)
    assert (read.output_kind, read.normalisation, read.normalises) == (
        "probabilities", metadata.ZNORM, True,
    )  # fmt: skip


def softmax_text_model() -> onnx.ModelProto:
    return onnx.parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        net (float[N, 1, 4] x) => (float[N, 4] p)
        {
            f = Flatten <axis = 1> (x)
            p = Softmax <axis = 1> (f)
        }
        """
    )


def test_a_final_softmax_means_probabilities() -> None:
    read = sig.from_model(softmax_text_model())
    assert (read.output_kind, read.class_count, read.length) == (sig.PROBABILITIES, 4, 4)


@pytest.mark.parametrize(
    "path", [*sorted(glob.glob(str(ROOT / "models" / "*.onnx"))), "softmax", "logits"]
)
def test_the_byte_reader_finds_the_softmax_onnx_finds(path: str) -> None:
    if path == "softmax":
        model = softmax_text_model()
    elif path == "logits":
        model = torch_logits_net()[0]
    else:
        model = onnx.load(path, load_external_data=False)
    data = model.SerializeToString()
    assert sig.file_ends_in_softmax(data) == sig.graph_ends_in_softmax(model.graph)


def test_session_and_model_front_ends_agree() -> None:
    model = softmax_text_model()
    metadata.write_metadata(model, {metadata.CLASSES: '["a", "b", "c", "d"]'})
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    from_session = sig.from_session(session, ends_in_softmax=True)
    assert from_session == sig.from_model(model)
    assert from_session.classes == ("a", "b", "c", "d")


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({metadata.OUTPUT: "scores"}, "m: dsp.output is 'scores'; expected 'probabilities' or"),
        ({metadata.NORMALISATION: "minmax"}, "m: dsp.normalisation is 'minmax'"),
        ({metadata.INPUT_LENGTH: "5"}, "m: dsp.input_length says 5; the input's dim is 4"),
        ({metadata.CLASSES: '["a"]'}, "m: dsp.classes names 1 classes; output p has 4 columns"),
        ({metadata.CLASSES: "[1,"}, "m: dsp.classes must be a JSON list"),
    ],
)
def test_bad_metadata_is_one_model_error(meta: dict[str, str], message: str) -> None:
    model = softmax_text_model()
    metadata.write_metadata(model, meta)
    with pytest.raises(ModelError) as info:
        sig.from_model(model, "m")
    assert str(info.value).startswith(message)


def test_runtime_without_onnx_reads_the_graph_from_the_bytes(tmp_path: Path) -> None:
    # A vendored runtime beside onnxruntime alone: ``import onnx`` fails, the default holds.
    model = softmax_text_model()
    model.graph.node[-1].op_type = "Identity"  # the same net, its output now logits
    del model.graph.node[-1].attribute[:]
    onnx.save(model, tmp_path / "logits.onnx")
    onnx.save(softmax_text_model(), tmp_path / "probs.onnx")
    code = (
        "import sys, json; sys.modules['onnx'] = None\n"
        "from dsp_deploy.runtime import Classifier\n"
        "out = {}\n"
        f"for name in ('logits', 'probs'):\n"
        f"    clf = Classifier(r'{tmp_path}/' + name + '.onnx')\n"
        "    p = clf.predict_proba([[0.0, 1.0, 2.0, 3.0]])\n"
        "    out[name] = [clf.signature.output_kind, round(float(p.sum()), 6)]\n"
        "print(json.dumps([out, 'onnx' in sys.modules and sys.modules['onnx'] is not None]))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    kinds, onnx_loaded = json.loads(run.stdout)
    assert kinds == {"logits": ["logits", 1.0], "probs": ["probabilities", 1.0]}
    assert onnx_loaded is False


# --- where each value came from; detection; overrides; the one warning ------------------


def text_model(body: str, out: str = "float[N, 4] p", dims: str = "N, 1, 4") -> onnx.ModelProto:
    return onnx.parser.parse_model(
        f"""
        <ir_version: 8, opset_import: ["" : 17]>
        net (float[{dims}] x) => ({out})
        {{
            f = Flatten <axis = 1> (x)
            {body}
        }}
        """
    )


def probed(model: onnx.ModelProto) -> sig.ModelSignature:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sig.detect_output(sig.from_model(model), lambda x: session.run(None, {"x": x})[0])


def test_origins_name_metadata_graph_and_default() -> None:
    model = softmax_text_model()
    metadata.write_metadata(model, {metadata.CLASSES: '["a", "b", "c", "d"]'})
    read = sig.from_model(model)
    assert dict(read.origins) == {
        "channels": "graph", "length": "graph", "classes": "metadata",
        "normalisation": "default", "output_kind": "graph",
    }  # fmt: skip
    assert sig.undeclared(read) == (metadata.NORMALISATION,)


@pytest.mark.parametrize(
    ("body", "kind", "origin"),
    [
        ("s = Softmax <axis = 1> (f)\n p = Identity (s)", sig.PROBABILITIES, "detected"),
        ("p = LogSoftmax <axis = 1> (f)", sig.LOGITS, "detected"),
        ("p = Relu (f)", sig.LOGITS, "detected"),  # ≥ 0 but rows do not sum to 1
        ("p = Softmax <axis = 1> (f)", sig.PROBABILITIES, "graph"),  # no probe needed
    ],
)
def test_the_output_kind_is_detected_from_a_probe(body: str, kind: str, origin: str) -> None:
    read = probed(text_model(body))
    assert (read.output_kind, read.origin("output_kind")) == (kind, origin)


def test_no_probe_when_the_length_is_unknown() -> None:
    model = text_model("p = Identity (f)", out="float[N, K] p", dims="N, 1, T")
    calls: list[np.ndarray] = []
    read = sig.detect_output(sig.from_model(model), calls.append)
    assert (read.output_kind, read.origin("output_kind"), calls) == (sig.LOGITS, "default", [])


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float32, st.tuples(st.integers(1, 6), st.integers(2, 8)),
        elements=st.floats(-30, 30, width=32),
    )
)  # fmt: skip
def test_softmax_rows_look_like_probabilities_and_shifted_rows_do_not(z: np.ndarray) -> None:
    assert sig.looks_like_probabilities(sig.softmax(z))
    shifted = sig.softmax(z) - 0.01
    assert not sig.looks_like_probabilities(shifted)
    assert not sig.looks_like_probabilities(sig.softmax(z) * 1.01)


def test_overrides_replace_the_metadata_and_say_so() -> None:
    model = softmax_text_model()
    metadata.write_metadata(model, {metadata.NORMALISATION: "none"})
    read = sig.override(
        sig.from_model(model), classes=["w", "x", "y", "z"], normalisation="znorm", output="logits"
    )
    assert (read.classes, read.class_count, read.normalisation, read.output_kind) == (
        ("w", "x", "y", "z"), 4, metadata.ZNORM, sig.LOGITS,
    )  # fmt: skip
    assert {read.origin(f) for f in ("classes", "normalisation", "output_kind")} == {"argument"}
    assert sig.undeclared(read) == () and sig.default_warning(read, "m.onnx") is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": ["a", "b"]}, "m: 2 class names given; its output p has 4 columns"),
        ({"normalisation": "minmax"}, "normalisation must be znorm or none; got 'minmax'"),
        ({"output": "scores"}, "output must be probabilities or logits; got 'scores'"),
        ({"classes": "abcd"}, "classes must be a list of names; got the string 'abcd'"),
    ],
)
def test_bad_overrides_are_option_errors(kwargs: dict, message: str) -> None:
    from dsp_deploy.errors import OptionError

    with pytest.raises(OptionError) as info:
        sig.override(sig.from_model(softmax_text_model()), label="m", **kwargs)
    assert str(info.value) == message


def test_the_warning_names_what_was_assumed_and_the_command() -> None:
    read = probed(text_model("p = Identity (f)"))
    text = sig.default_warning(read, "mine.onnx")
    assert text == (
        "model mine.onnx has no dsp.normalisation, dsp.output, dsp.classes metadata: its "
        "input goes in raw; its output reads as logits (detected); classes are column "
        "indices. Declare them: dsp-deploy metadata mine.onnx --normalisation znorm|none "
        "--output logits --classes NAME,NAME,... -o OUT.onnx"
    )


def test_members_share_one_warning_grouped_by_what_was_assumed() -> None:
    logits = probed(text_model("p = Identity (f)"))  # no metadata at all; logits detected
    softmaxed = sig.from_model(softmax_text_model())  # a final Softmax: probabilities
    declared = sig.override(softmaxed, normalisation="none", classes=list("abcd"))
    members = [(logits, "a.onnx"), (softmaxed, "b.onnx"), (logits, "c.onnx"), (declared, "d")]
    assert sig.members_warning(members) == (
        "3 of 4 members have no metadata for what was assumed: a.onnx, c.onnx: no "
        "dsp.normalisation, dsp.output, dsp.classes (its input goes in raw; its output reads "
        "as logits (detected); classes are column indices); b.onnx: no dsp.normalisation, "
        "dsp.classes (its input goes in raw; classes are column indices). Declare it on each: "
        "dsp-deploy metadata MEMBER --normalisation znorm|none --output logits "
        "--classes NAME,NAME,... -o OUT.onnx"
    )
    hidden = probed(text_model("s = Softmax <axis = 1> (f)\n p = Identity (s)"))
    assert hidden.output_kind == "probabilities" and hidden.origin("output_kind") == "detected"
    mixed = sig.members_warning([(logits, "a"), (hidden, "b")])
    assert mixed is not None and "--output probabilities|logits --classes" in mixed
    assert mixed.startswith("2 of 2 members") and "b: no dsp.normalisation, dsp.output" in mixed
    assert sig.members_warning([(declared, "d")]) is None


def test_a_classifier_logs_one_warning_and_none_once_declared(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = text_model("p = Identity (f)")
    onnx.save(model, tmp_path / "bare.onnx")
    with caplog.at_level("WARNING", logger="dsp_deploy"):
        clf = Classifier(tmp_path / "bare.onnx")
        clf.predict_proba(np.ones((3, 4)))
        clf.predict(np.ones((5, 4)))
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "dsp.normalisation, dsp.output, dsp.classes" in caplog.records[0].getMessage()
    caplog.clear()
    with caplog.at_level("WARNING", logger="dsp_deploy"):
        clf = Classifier(
            tmp_path / "bare.onnx", normalisation="none", output="logits", classes=list("abcd")
        )
    assert caplog.records == [] and list(clf.predict([[0.0, 0.0, 0.0, 9.0]])) == ["d"]

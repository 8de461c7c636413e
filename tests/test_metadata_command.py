"""dsp-deploy metadata: show what every tool does with a model; write a copy declaring it.

Models from ONNX text: ``p = Identity(Flatten(x))`` returns what the runtime fed it, so
a declared normalisation is checked value by value (z-normalised input, then softmax).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from dsp_deploy import declare, metadata
from dsp_deploy.data import znormalise
from dsp_deploy.errors import ModelError, OptionError
from dsp_deploy.runtime import Classifier
from dsp_deploy.signature import softmax


def bare(path: Path, body: str = "p = Identity (f)", dims: str = "N, 1, 4") -> Path:
    model = onnx.parser.parse_model(
        f"""
        <ir_version: 8, opset_import: ["" : 17]>
        net (float[{dims}] x) => (float[N, 4] p)
        {{
            f = Flatten <axis = 1> (x)
            {body}
        }}
        """
    )
    onnx.save(model, path)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_show_names_each_value_and_where_it_came_from(run_cli, tmp_path: Path) -> None:
    model = bare(tmp_path / "mine.onnx")
    result = run_cli("metadata", str(model), "--json")
    assert result.code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["input"] == {"name": "x", "dtype": "tensor(float)", "shape": ["N", 1, 4]}
    assert (shown["channels"], shown["length"], shown["classes"], shown["class_count"]) == (
        1, 4, None, 4,
    )  # fmt: skip
    assert (shown["normalisation"], shown["output_kind"]) == ("none", "logits")
    assert shown["from"] == {
        "channels": "graph", "length": "graph", "classes": "default",
        "normalisation": "default", "output_kind": "detected",
    }  # fmt: skip
    assert shown["undeclared"] == ["dsp.normalisation", "dsp.output", "dsp.classes"]
    table = run_cli("metadata", str(model))
    assert "detected" in table.stdout and "dsp-deploy metadata" in table.stdout


def test_writing_a_copy_that_declares_it(run_cli, tmp_path: Path) -> None:
    model = bare(tmp_path / "mine.onnx")
    before = digest(model)
    out = tmp_path / "mine.meta.onnx"
    args = ("--classes", "a,b,c,d", "--normalisation", "znorm", "--output", "logits")
    result = run_cli("metadata", str(model), *args, "-o", str(out), "--json")
    assert result.code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["written"] and shown["undeclared"] == [] and shown["classes"] == list("abcd")
    assert set(shown["from"].values()) == {"graph", "metadata"}
    assert digest(model) == before  # the input untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.meta.onnx", "mine.onnx"]
    props = metadata.read_metadata(onnx.load(out))
    assert props == {
        "dsp.classes": '["a", "b", "c", "d"]',
        "dsp.normalisation": "znorm-per-series",
        "dsp.output": "logits",
    }
    x = np.random.default_rng(3).normal(5, 2, (6, 1, 4)).astype(np.float32)
    clf = Classifier(out)
    expected = softmax(znormalise(x).reshape(6, 4).astype(np.float64))
    np.testing.assert_allclose(clf.predict_proba(x), expected, rtol=1e-5)
    assert list(clf.predict(x)) == list(np.array(list("abcd"))[expected.argmax(axis=1)])


def test_the_python_functions_match_the_command(tmp_path: Path) -> None:
    model = bare(tmp_path / "mine.onnx", dims="N, 1, T")
    assert declare.describe(model).origin("length") == "default"
    sig = declare.declare(model, tmp_path / "out.onnx", length=4, normalisation="none")
    assert (sig.length, sig.origin("length"), sig.output_kind) == (4, "metadata", "logits")
    assert sig.origin("output_kind") == "detected"  # a probe with L known at last
    assert declare.describe(tmp_path / "out.onnx") == sig


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--classes", "a,b"), "2 classes; output p has 4 columns"),
        (("--classes", "a,a,b,c"), "class names must be distinct and non-empty"),
        (("--normalisation", "minmax"), "normalisation must be znorm or none; got 'minmax'"),
        (("--output", "probabilities"), "declared --output probabilities, but on a probe"),
        (("--length", "7"), "dsp.input_length says 7; the input's dim is 4"),
        (("--length", "0"), "length must be a whole number ≥ 1; got 0"),
    ],
)
def test_bad_declarations_write_nothing(run_cli, tmp_path: Path, args, message: str) -> None:
    model = bare(tmp_path / "mine.onnx")
    result = run_cli("metadata", str(model), *args, "-o", str(tmp_path / "out.onnx"))
    assert result.code == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["mine.onnx"]


def test_a_final_softmax_declared_as_logits_is_refused(tmp_path: Path) -> None:
    model = bare(tmp_path / "p.onnx", body="p = Softmax <axis = 1> (f)")
    with pytest.raises(OptionError, match="declared --output logits, but on a probe input"):
        declare.declare(model, tmp_path / "out.onnx", output="logits")


@pytest.mark.parametrize(
    ("out", "extra", "message"),
    [
        ("mine.onnx", (), "is the input file"),
        ("out.txt", (), "must end in .onnx"),
        (None, (), "need -o OUT.onnx"),
        ("out.onnx", ("--json",), "nothing to declare"),
    ],
)
def test_bad_outputs_are_refused(run_cli, tmp_path: Path, out, extra, message: str) -> None:
    model = bare(tmp_path / "mine.onnx")
    before = digest(model)
    declare = () if extra else ("--output", "logits")
    where = () if out is None else ("-o", str(tmp_path / out))
    result = run_cli("metadata", str(model), *declare, *where, *extra)
    assert result.code == 2 and message in result.stderr, result.stderr
    assert digest(model) == before


def test_a_model_that_cannot_load_is_one_model_error(tmp_path: Path) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError):
        declare.describe(tmp_path / "bad.onnx")

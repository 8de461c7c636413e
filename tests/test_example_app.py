"""The example app (examples/classify_csv.py), its sample data, and the README snippet.

The model is the shipped ``models/lite_gunpoint.onnx`` when it exists, else a LITE model
trained here for 200 epochs (about a minute, so the module is ``slow`` until the shipped
model lands). With a real trained model the labels mean something: they must agree with
the known labels for ≥ 80% of the samples and exactly with a plain onnxruntime session
fed the training normalisation (``dsp_deploy.data.znormalise``).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import onnxruntime as ort
import pytest

from dsp_deploy import data, metadata
from dsp_deploy.errors import DatasetError

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "models" / "lite_gunpoint.onnx"
APP = ROOT / "examples" / "classify_csv.py"
SAMPLE = ROOT / "examples" / "data" / "gunpoint_sample.csv"
LABELS = ROOT / "examples" / "data" / "gunpoint_sample_labels.csv"
SNIPPET_HEADING = "Embed a model in an app"

pytestmark = [] if SHIPPED.exists() else [pytest.mark.slow, pytest.mark.torch]


@pytest.fixture(scope="session")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if SHIPPED.exists():
        return SHIPPED
    pytest.importorskip("torch")
    from dsp_deploy.cli import main

    out = tmp_path_factory.mktemp("lite") / "lite_gunpoint.onnx"
    args = ["train", "--arch", "lite", "--dataset", "GunPoint", "--epochs", "200"]
    assert main([*args, "--seed", "1", "--threads", "1", "-q", "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def sample() -> tuple[list[str], np.ndarray, list[str]]:
    """Ids, raw series (n, 150) and known labels of the sample file."""
    with open(SAMPLE, newline="") as f:
        rows = list(csv.reader(f))[1:]
    with open(LABELS, newline="") as f:
        labels = dict(list(csv.reader(f))[1:])
    ids = [r[0] for r in rows]
    return ids, np.array([r[1:] for r in rows], dtype=np.float32), [labels[i] for i in ids]


def plain_onnxruntime(model: Path, raw: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The oracle: a bare session fed the training normalisation; labels and top scores."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    classes = json.loads(session.get_modelmeta().custom_metadata_map[metadata.CLASSES])
    x = data.znormalise(raw[:, None, :])
    proba = session.run(None, {session.get_inputs()[0].name: x})[0]
    return [classes[k] for k in proba.argmax(axis=1)], proba.max(axis=1)


def run_app(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(APP), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def parse_output(stdout: str) -> list[tuple[str, str, float]]:
    rows = list(csv.reader(io.StringIO(stdout)))
    assert rows[0] == ["id", "label", "probability"]
    return [(i, label, float(p)) for i, label, p in rows[1:]]


def test_app_classifies_the_sample_file(model: Path, sample) -> None:
    ids, raw, known = sample
    result = run_app("--model", str(model), "--id-column", "--threads", "1", str(SAMPLE))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    rows = parse_output(result.stdout)
    assert [r[0] for r in rows] == ids
    labels = [r[1] for r in rows]
    agreement = np.mean([a == b for a, b in zip(labels, known, strict=True)])
    assert agreement >= 0.8, (labels, known)
    oracle, top = plain_onnxruntime(model, raw)
    assert labels == oracle
    np.testing.assert_allclose([r[2] for r in rows], top, atol=5.1e-5)


def test_app_reads_stdin_without_ids_or_header(model: Path, sample) -> None:
    _, raw, _ = sample
    text = "\n".join(",".join(f"{v!r}" for v in row.tolist()) for row in raw) + "\n"
    result = run_app("--model", str(model), "--batch-size", "5", "-", stdin=text)
    assert result.returncode == 0, result.stderr
    rows = parse_output(result.stdout)
    assert [r[0] for r in rows] == [str(i) for i in range(1, len(raw) + 1)]
    assert [r[1] for r in rows] == plain_onnxruntime(model, raw)[0]


# --- bad input, in process (the app's main) -------------------------------------------


@pytest.fixture(scope="module")
def app() -> ModuleType:
    spec = importlib.util.spec_from_file_location("classify_csv", APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("t0,t1\n" + "1," * 149 + "1\n" + "2," * 149 + "abc\n", r"line 3: 'abc' is not a finite"),
        ("1," * 149 + "nan\n", r"line 1: 'nan' is not a finite number"),
        ("1," * 149 + "1\n" + "1," * 148 + "1\n", r"line 2: 149 values; the rows above have 150"),
        ("1,2,3\n4,5,6\n", r"input.csv: series have length 3; the model expects 150"),
    ],
    ids=["not-a-number", "nan", "ragged", "wrong-length"],
)
def test_app_reports_bad_rows(app, model, tmp_path, capsys, text: str, message: str) -> None:
    path = tmp_path / "input.csv"
    path.write_text(text)
    assert app.main(["--model", str(model), str(path)]) == 2
    out, err = capsys.readouterr()
    assert re.search(message, err) and err.startswith("error: ") and err.count("\n") == 1
    assert out == ""  # checked before anything is written: not even the header


def test_app_writes_the_rows_before_a_later_bad_batch(app, tmp_path, capsys) -> None:
    (tmp_path / "in.csv").write_text("0,1,2\n3,-1,0\n1,x,2\n")
    args = ["--model", str(bare_model(tmp_path)), "--batch-size", "2", str(tmp_path / "in.csv")]
    assert app.main(args) == 2
    out, err = capsys.readouterr()
    assert [r[:2] for r in parse_output(out)] == [("1", "2"), ("2", "0")]
    assert "line 3: 'x' is not a finite number" in err


def test_app_stops_quietly_when_its_reader_goes(tmp_path: Path) -> None:
    # `classify_csv.py ... | head -n 2`: ~300 kB of output, more than a pipe holds, so the
    # app is still writing when the reader closes its end.
    rows = "".join(f"{i % 7},{i % 5},{i % 3}\n" for i in range(20_000))
    (tmp_path / "in.csv").write_text(rows)
    args = [str(APP), "--model", str(bare_model(tmp_path, True)), "--batch-size", "100"]
    command = [sys.executable, *args, str(tmp_path / "in.csv")]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "cwd": ROOT}
    with subprocess.Popen(command, **pipes) as app:
        assert app.stdout is not None and app.stderr is not None
        assert app.stdout.readline() == "id,label,probability\n"
        assert app.stdout.readline().startswith("1,")
        app.stdout.close()
        assert app.wait(timeout=120) == 141
        assert app.stderr.read() == ""


def test_app_header_yes_skips_a_numeric_header(app, model, sample, tmp_path, capsys) -> None:
    raw = sample[1][:2]
    path = tmp_path / "numeric_header.csv"
    lines = [",".join(map(str, range(150)))] + [",".join(map(repr, r.tolist())) for r in raw]
    path.write_text("\n".join(lines))
    assert app.main(["--model", str(model), "--header", "yes", str(path)]) == 0
    rows = parse_output(capsys.readouterr().out)
    expected = plain_onnxruntime(model, raw)[0]
    assert [r[:2] for r in rows] == list(zip(["2", "3"], expected, strict=True))


def test_app_reports_a_missing_model(app, tmp_path, capsys) -> None:
    assert app.main(["--model", str(tmp_path / "none.onnx"), str(SAMPLE)]) == 2
    assert "none.onnx: expected an ONNX file, found nothing" in capsys.readouterr().err


# --- sample data and the README snippet ------------------------------------------------


def test_sample_is_the_ucr_test_split_as_recorded(sample) -> None:
    ids, raw, known = sample
    try:
        test = data.load_dataset("GunPoint", "test", normalise=False)
    except DatasetError as e:
        pytest.skip(f"GunPoint not available here: {e}")
    index = [int(i.removeprefix("gunpoint-test-")) for i in ids]
    assert np.array_equal(raw, test.X[index, 0])
    assert known == [test.classes[k] for k in test.y[index]]
    assert sorted(set(known)) == ["1", "2"]


def snippet() -> str:
    """The python block under the snippet heading in README.md."""
    text = (ROOT / "README.md").read_text()
    found = re.search(rf"^#+ {SNIPPET_HEADING}\n.*?```python\n(.*?)```", text, re.M | re.S)
    if not found:
        raise AssertionError(f"no ```python block under '{SNIPPET_HEADING}' in README.md")
    return found.group(1)


def test_readme_snippet_runs_and_prints_what_it_says(model: Path, sample, tmp_path) -> None:
    # The snippet's relative paths, laid out in a scratch folder.
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "lite_gunpoint.onnx").symlink_to(model)
    (tmp_path / "examples" / "data").mkdir(parents=True)
    (tmp_path / "examples" / "data" / SAMPLE.name).symlink_to(SAMPLE)
    result = subprocess.run(
        [sys.executable, "-c", snippet()],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "('1', '2') 150"
    assert lines[1] == str(np.array(plain_onnxruntime(model, sample[1])[0]))
    assert lines[2] == "(1, 2)"
    assert lines[3] == (
        "series have length 100; the model expects 150 (resample or crop them to that length first)"
    )


BARE = """
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[N, 1, 3] x) => (float[N, 3] p) { p = Flatten <axis = 1> (x) }
"""


def bare_model(folder: Path, declared: bool = False) -> Path:
    """A 3-class "model" whose logits are its input; without metadata unless ``declared``
    (classes a, b, c; logits of raw series: no missing-metadata warning is due)."""
    import onnx

    model = onnx.parser.parse_model(BARE)
    if declared:
        keys = {metadata.OUTPUT: "logits", metadata.NORMALISATION: "none"}
        metadata.write_metadata(model, {**keys, metadata.CLASSES: ["a", "b", "c"]})
    onnx.save(model, folder / "bare.onnx")
    return folder / "bare.onnx"


def test_app_prints_probabilities_for_a_bare_logits_model(app, tmp_path, capsys) -> None:
    # A user's export: no metadata, logits out. The column is a probability, not a logit.
    bare_model(tmp_path)
    (tmp_path / "in.csv").write_text("0,1,2\n3,-1,0\n")
    assert app.main(["--model", str(tmp_path / "bare.onnx"), str(tmp_path / "in.csv")]) == 0
    rows = parse_output(capsys.readouterr().out)
    logits = np.array([[0, 1, 2], [3, -1, 0]], dtype=np.float64)
    top = np.exp(logits).max(axis=1) / np.exp(logits).sum(axis=1)
    assert [(r[1], r[2]) for r in rows] == [("2", round(top[0], 4)), ("0", round(top[1], 4))]

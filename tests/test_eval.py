"""dsp_deploy.evaluate and ``dsp-deploy eval``: a hand-built linear ONNX classifier against
the same model computed in numpy, class mapping by name, and one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dsp_deploy import metadata as meta
from dsp_deploy.data import load_dataset
from dsp_deploy.evaluate import EvalResult, evaluate


def linear_classifier(
    W: np.ndarray,
    b: np.ndarray,
    *,
    channels: int = 1,
    batch: int | str = "batch",
    softmax: bool = True,
    metadata: dict[str, object] | None = None,
) -> onnx.ModelProto:
    """x (N, C, L) -> Flatten -> Gemm(W: (K, C*L), transB) -> [Softmax]: scores (N, K)."""
    classes, features = W.shape
    length = features // channels
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W", "b"], ["logits"], transB=1),
    ]
    out = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1))
        out = "probabilities"
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, channels, length])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, classes])],
        [
            numpy_helper.from_array(W.astype(np.float32), "W"),
            numpy_helper.from_array(b.astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta.write_metadata(model, metadata or {})
    onnx.checker.check_model(model, full_check=True)
    return model


def ridge_fit(source: str) -> tuple[np.ndarray, np.ndarray]:
    """A least-squares linear classifier on the training split: useful, not perfect."""
    train = load_dataset(source, "train")
    X = train.X.reshape(len(train.X), -1).astype(np.float64)
    Y = np.eye(len(train.classes))[train.y]
    W = np.linalg.solve(X.T @ X + 10.0 * np.eye(X.shape[1]), X.T @ Y).T
    return W, np.zeros(len(train.classes))


def numpy_predictions(source: str, split: str, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    data = load_dataset(source, split)
    return (data.X.reshape(len(data.X), -1).astype(np.float64) @ W.T + b).argmax(axis=1)


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def gunpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    W, b = ridge_fit("GunPoint")
    path = tmp_path_factory.mktemp("models") / "gunpoint.onnx"
    model = linear_classifier(
        W,
        b,
        metadata={
            meta.CLASSES: ["1", "2"],
            meta.INPUT_LENGTH: "150",
            meta.DATASET: "GunPoint",
            meta.NORMALISATION: meta.ZNORM,  # ridge_fit's data; absent would mean raw input
        },
    )
    return save(model, path), W, b


def _expected_confusion(source: str, split: str, predicted: np.ndarray) -> np.ndarray:
    data = load_dataset(source, split)
    confusion = np.zeros((len(data.classes),) * 2, dtype=np.int64)
    np.add.at(confusion, (data.y, predicted), 1)
    return confusion


@pytest.mark.parametrize("split", ["test", "train"])
@pytest.mark.parametrize("batch_size", [1, 7, 256])
def test_accuracy_matches_numpy(gunpoint, split: str, batch_size: int) -> None:
    path, W, b = gunpoint
    result = evaluate(path, "GunPoint", split, batch_size=batch_size, threads=1)
    expected = _expected_confusion("GunPoint", split, numpy_predictions("GunPoint", split, W, b))
    assert isinstance(result, EvalResult)
    assert np.array_equal(result.confusion, expected)
    assert result.correct == int(np.trace(expected)) and result.n == expected.sum()
    assert result.accuracy == pytest.approx(np.trace(expected) / expected.sum())
    assert 0.6 < result.accuracy < 1.0  # a real classifier, and not a trivially perfect one
    assert (result.dataset, result.split, result.classes) == ("GunPoint", split, ("1", "2"))


def test_classes_are_mapped_by_name(gunpoint, tmp_path: Path) -> None:
    path, W, b = gunpoint
    swapped = linear_classifier(W[::-1], b[::-1], metadata={meta.CLASSES: ["2.0", "1"]})
    result = evaluate(save(swapped, tmp_path / "swapped.onnx"), "GunPoint")
    assert result.confusion == evaluate(path, "GunPoint").confusion


def test_logits_without_metadata_use_index_order(gunpoint, tmp_path: Path) -> None:
    path, W, b = gunpoint
    bare = linear_classifier(W, b, softmax=False)
    result = evaluate(save(bare, tmp_path / "bare.onnx"), "GunPoint")
    assert result.confusion == evaluate(path, "GunPoint").confusion


def test_fixed_batch_dim_is_honoured(gunpoint, tmp_path: Path) -> None:
    path, W, b = gunpoint
    fixed = save(linear_classifier(W, b, batch=4), tmp_path / "fixed.onnx")  # 150 = 37*4 + 2
    assert evaluate(fixed, "GunPoint").confusion == evaluate(path, "GunPoint").confusion


def test_normalisation_none_feeds_raw_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    W, b = rng.normal(size=(2, 24)), rng.normal(size=2)
    model = linear_classifier(W, b, metadata={meta.NORMALISATION: "none"})
    result = evaluate(save(model, tmp_path / "raw.onnx"), "UnitTest")
    raw = load_dataset("UnitTest", "test", normalise=False)
    predicted = (raw.X.reshape(len(raw.X), -1) @ W.T + b).argmax(axis=1)
    assert result.correct == int((predicted == raw.y).sum())


def test_per_class_accuracy_and_dict() -> None:
    result = EvalResult(
        0.75, 4, 3, "d", "test", "m.onnx", 0.1, ("a", "b", "c"), ((2, 0, 0), (1, 1, 0), (0, 0, 0))
    )
    recall = result.per_class_accuracy()
    assert recall[:2] == (1.0, 0.5) and np.isnan(recall[2])
    assert list(result.to_dict())[0] == "accuracy"


# --- the command ------------------------------------------------------------------------


def test_cli_json(run_cli, gunpoint) -> None:
    path, W, b = gunpoint
    result = run_cli("eval", path, "--dataset", "GunPoint", "--json", "--batch-size", "32")
    assert result.code == 0, result.stderr
    assert result.stdout.startswith('{"accuracy": ')
    report = json.loads(result.stdout)
    predicted = numpy_predictions("GunPoint", "test", W, b)
    assert report["correct"] == int((predicted == load_dataset("GunPoint", "test").y).sum())
    assert report["n"] == 150 and report["split"] == "test" and report["classes"] == ["1", "2"]


def test_cli_table(run_cli, gunpoint) -> None:
    path, _, _ = gunpoint
    result = run_cli("eval", path, "--dataset", "GunPoint", "--split", "train")
    assert result.code == 0, result.stderr
    assert "GunPoint (train)" in result.stdout and "accuracy" in result.stdout
    accuracy = evaluate(path, "GunPoint", "train").accuracy
    assert f"{accuracy:.4f}" in result.stdout


def _garbage(tmp_path: Path) -> Path:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\x00not an onnx model\xff" * 10)
    return path


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["{model}", "--dataset", "NoSuchDataset"], "NoSuchDataset"),
        (["{missing}", "--dataset", "GunPoint"], "does not exist"),
        (["{garbage}", "--dataset", "GunPoint"], "garbage.onnx"),
        (["{model}", "--dataset", "GunPoint", "--split", "valid"], "split must be one of"),
        (["{model}", "--dataset", "GunPoint", "--batch-size", "0"], "batch size"),
        (["{model}", "--dataset", "UnitTest"], r"expects \(N, 1, 150\); dataset UnitTest"),
        (["{other}", "--dataset", "GunPoint"], r"predicts classes \['a', 'b'\]"),
        (["{wide}", "--dataset", "GunPoint"], "outputs 3 scores per series"),
        (["{model}", "--dataset", "{tmp}/nowhere.npz"], "does not exist"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(
    run_cli, gunpoint, tmp_path: Path, args: list[str], expected: str
) -> None:
    path, W, b = gunpoint
    other = linear_classifier(W, b, metadata={meta.CLASSES: ["a", "b"]})
    wide = linear_classifier(np.vstack([W, W[:1]]), np.zeros(3))
    names = {
        "model": path,
        "missing": tmp_path / "missing.onnx",
        "garbage": _garbage(tmp_path),
        "other": save(other, tmp_path / "other.onnx"),
        "wide": save(wide, tmp_path / "wide.onnx"),
        "tmp": tmp_path,
    }
    result = run_cli("eval", *(a.format(**names) for a in args))
    assert result.code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert re.search(expected, result.stderr), result.stderr


def test_eval_imports_no_torch(gunpoint) -> None:
    path, _, _ = gunpoint
    code = (
        "import sys, json\n"
        "from dsp_deploy.cli import main\n"
        f"assert main(['eval', {str(path)!r}, '--dataset', 'GunPoint', '--json']) == 0\n"
        "print(json.dumps(sorted(m for m in ('torch', 'aeon', 'pandas') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.splitlines()[-1]) == []

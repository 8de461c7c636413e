"""CompressOptions: one frozen, validated settings object for the CLI, library and sweep."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from types import MappingProxyType

import numpy as np
import onnx
import pytest

from dsp_deploy import metadata
from dsp_deploy.compress import compress
from dsp_deploy.compress.policy import default_min_count, run_batch_size
from dsp_deploy.errors import ModelError, OptionError
from dsp_deploy.inference import run_model
from dsp_deploy.io import Calibration
from dsp_deploy.options import COMPENSATIONS, CRITERIA, CompressOptions, with_changes

sys.path.insert(0, str(Path(__file__).parent))
import onnx_graphs as G  # noqa: E402


def calibration(model: onnx.ModelProto, n: int = 40) -> Calibration:
    x = G.inputs(n)
    y = run_model(model, {"x": x})[0].argmax(axis=1)
    return Calibration(MappingProxyType({"x": x}), y)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("criterion", "best", "--criterion 'best': expected one of dead, dsp, auto"),
        (
            "compensation",
            "ridge",
            "--compensation 'ridge': expected one of none, mean, lstsq, reconstruct",
        ),
        ("holdout", 1.0, "--holdout 1.0: expected a fraction in [0, 1)"),
        ("min_agreement", float("nan"), "--min-agreement nan: expected a fraction in [0, 1]"),
        ("max_accuracy_drop", -0.1, "--max-accuracy-drop -0.1: expected a fraction in [0, 1]"),
        ("batch_size", 0, "--batch-size 0: expected an integer >= 1"),
        ("threads", 0, "--threads 0: expected an integer >= 1"),
        ("align", 0, "--align 0: expected an integer >= 1"),
        ("min_count", -1, "--min-count -1: expected an integer >= 0"),
        ("folds", -2, "--folds -2: expected an integer >= 0"),
        ("threshold", float("inf"), "--threshold inf: expected a finite number >= 0"),
        ("atol", -1e-5, "--atol -1e-05: expected a finite number >= 0"),
    ],
)
def test_a_bad_value_is_one_option_error_naming_the_cli_option(field, value, message) -> None:
    with pytest.raises(OptionError) as info:
        CompressOptions(**{field: value})
    assert str(info.value) == message
    with pytest.raises(OptionError, match=message.split(":")[0]):  # replace validates too
        dataclasses.replace(CompressOptions(), **{field: value})


def test_options_are_frozen_and_keep_todays_defaults() -> None:
    options = CompressOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.holdout = 0.5  # type: ignore[misc]
    assert dataclasses.asdict(options) == {
        "criterion": "dead", "threshold": 0.0, "min_count": None, "compensation": "lstsq",
        "holdout": 0.2, "folds": 5, "atol": None, "rtol": None, "min_agreement": None,
        "max_accuracy_drop": 0.02, "confidence": 0.95, "batch_size": 64, "threads": None,
        "seed": 0, "align": 1, "conv2d": False, "fuse": False,
    }  # fmt: skip
    assert options.lossless and not CompressOptions(threshold=0.1).lossless


def test_reconstruct_is_a_deprecated_alias_that_cannot_contradict() -> None:
    with pytest.warns(DeprecationWarning, match="compensation='lstsq'"):
        assert with_changes(None, {"reconstruct": True}).compensation == "lstsq"
    with pytest.raises(OptionError, match="^--reconstruct means --compensation lstsq; it cont"):
        with_changes(None, {"reconstruct": True, "compensation": "mean"})
    base = CompressOptions(compensation="none")
    with pytest.raises(OptionError, match="contradicts --compensation none"):
        with_changes(base, {"reconstruct": True})
    assert with_changes(base, {"reconstruct": False}) is base


def test_unknown_keyword_is_an_option_error() -> None:
    with pytest.raises(OptionError, match="unknown compress option 'holdut'; expected one of"):
        with_changes(None, {"holdut": 0.1})


def test_keywords_and_options_object_compress_the_same() -> None:
    model = G.lite_like()
    calib = calibration(model)
    by_keywords = compress(model, calib, criterion="dsp", holdout=0.25, folds=0)
    options = CompressOptions(criterion="dsp", holdout=0.25, folds=0)
    by_object = compress(model, calib, options)
    assert by_keywords.plan.remove == by_object.plan.remove
    assert by_keywords.params == by_object.params and by_keywords.params[1] < by_keywords.params[0]
    # 40 series are few (compress.holdout): every one is held out once, over 1/0.25 folds
    assert by_keywords.holdout.samples == by_object.holdout.samples == 40
    assert by_keywords.gate.judged == by_object.gate.judged == "kfold"
    assert by_keywords.gate.folds == 4
    x = G.inputs(8, seed=3)
    np.testing.assert_array_equal(
        run_model(by_keywords.model, {"x": x})[0], run_model(by_object.model, {"x": x})[0]
    )
    # keyword changes apply on top of an options object
    assert compress(model, calib, options, folds=0, criterion="dead").holdout is None


def test_compress_refuses_bad_options_before_any_work() -> None:
    with pytest.raises(OptionError, match="--holdout 2"):
        compress(onnx.ModelProto(), Calibration(MappingProxyType({}), None), holdout=2)


def test_cli_refuses_reconstruct_with_another_compensation(tmp_path: Path, run_cli) -> None:
    model, calib = tmp_path / "m.onnx", tmp_path / "c.npz"
    onnx.save(G.chain(), model)
    np.savez(calib, x=G.inputs(8))
    args = ["--criterion", "dsp", "--reconstruct", "--compensation", "mean"]
    result = run_cli("compress", model, "--calib", calib, *args)
    assert result.code == 2
    assert "--reconstruct means --compensation lstsq" in result.stderr
    assert not model.with_name("m.pruned.onnx").exists()


def test_cli_help_lists_the_librarys_choices(run_cli) -> None:
    result = run_cli("compress", "--help")
    text = " ".join(result.stdout.replace("│", " ").split())  # rich's box may wrap a list
    assert " | ".join(CRITERIA) in text and " | ".join(COMPENSATIONS) in text


@pytest.mark.parametrize(
    ("arch", "count"),
    [("lite", 1), ("litetime", 1), ("inception", 0), ("inceptiontime", 0), ("x", 0), (None, 0)],
)
def test_default_min_count_follows_the_registry(arch: str | None, count: int) -> None:
    model = G.chain()
    if arch is not None:
        metadata.write_metadata(model, {metadata.ARCH: arch})
    assert default_min_count(model) == count


def test_batch_policy() -> None:
    model = G.chain()
    assert run_batch_size(model, 64) == 64
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    assert run_batch_size(model, 64) == 1
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    with pytest.raises(ModelError, match="fixed at 4; compress needs a dynamic"):
        run_batch_size(model, 64)


def test_options_import_neither_onnx_nor_torch() -> None:
    code = (
        "import sys, json, dsp_deploy.compress.policy as p; "
        "print(json.dumps([p.ARCHS['lite'].min_count, 'torch' in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [1, False]
    light = "import sys, dsp_deploy.options; print('onnx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", light], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

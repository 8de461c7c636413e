"""README "Bring your own model", run as written, is the end-to-end test of a user's model.

The section's ```python blocks run in order in one namespace and its ```bash lines in
this process (``dsp-deploy`` → ``dsp_deploy.cli.main``, ``python SCRIPT`` → its
``main``, ``> FILE`` honoured), all in an empty folder: an own Conv1d net trained
briefly (DSP loss) on z-normalised series, exported the common way (logits out, no
metadata), then ``metadata`` → ``compress`` → ``bench`` → the example app and the
runtime on raw series. Then the checks: the bare export reads as raw-input logits; the
declared, compressed model's probabilities are torch's softmax of the net on the
z-normalised raw series, its labels the class names, and the example app prints the
same labels and probabilities. About 10 s of CPU (torch on one thread).
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import os
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Bring your own model"


def guide_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced block in the README's guide section, in order."""
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start : end if end != -1 else len(text)]
    return re.findall(r"^```(\w+)\n(.*?)^```", section, flags=re.M | re.S)


def run_line(line: str) -> None:
    """One shell line, in this process: ``dsp-deploy ARGS`` or ``python SCRIPT ARGS``,
    with an optional ``> FILE``; fails the test on a non-zero exit."""
    words = shlex.split(line)
    target = None
    if ">" in words:
        words, target = words[: words.index(">")], words[words.index(">") + 1]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        if words[0] == "dsp-deploy":
            from dsp_deploy.cli import main

            code = main(words[1:])
        else:
            assert words[0] == "python", line
            code = _script(words[1]).main(words[2:])
    assert code == 0, f"{line} exited {code}:\n{out.getvalue()}"
    if target is not None:
        Path(target).write_text(out.getvalue(), encoding="utf-8")


def _script(path: str):
    spec = importlib.util.spec_from_file_location("guide_script", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def guide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    torch = pytest.importorskip("torch")
    work = tmp_path_factory.mktemp("guide")
    (work / "examples").symlink_to(ROOT / "examples")
    namespace: dict = {"__name__": "__guide__"}
    printed = io.StringIO()
    blocks = guide_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert [lang for lang, _ in blocks] == ["python", "bash", "bash", "bash", "python"]
    cwd, threads = Path.cwd(), torch.get_num_threads()
    try:
        os.chdir(work)
        torch.set_num_threads(1)  # 2 threads on a small shared CPU: 6x the CPU time
        for lang, code in blocks:
            if lang == "python":
                with contextlib.redirect_stdout(printed):
                    exec(compile(code, "README.md", "exec"), namespace)
            else:
                for line in filter(None, map(str.strip, code.splitlines())):
                    run_line(line)
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    return work, namespace, printed.getvalue()


@pytest.mark.torch
def test_the_bare_export_reads_as_raw_input_logits(guide) -> None:
    from dsp_deploy import declare, metadata

    work, _, _ = guide
    bare = onnx.load(work / "mine.onnx")
    assert not bare.metadata_props and bare.graph.node[-1].op_type == "Gemm"
    sig = declare.describe(work / "mine.onnx")
    assert (sig.normalisation, sig.output_kind, sig.origin("output_kind")) == (
        "none", "logits", "detected",
    )  # fmt: skip
    assert metadata.read_metadata(onnx.load(work / "mine.meta.pruned.onnx")) == {
        **metadata.read_metadata(onnx.load(work / "mine.meta.onnx")),
        "dsp.compress": metadata.read_metadata(onnx.load(work / "mine.meta.pruned.onnx"))[
            "dsp.compress"
        ],
    }


@pytest.mark.torch
def test_the_compressed_model_gives_torchs_probabilities_on_raw_series(guide) -> None:
    import torch

    from dsp_deploy.runtime import Classifier

    work, ns, printed = guide
    x_raw, y_raw, classes = ns["x_raw"], ns["y_raw"], np.array(ns["CLASSES"])
    with torch.no_grad():
        z = ns["net"](torch.tensor(ns["znorm"](x_raw), dtype=torch.float32)).double()
    expected = torch.softmax(z, dim=1).numpy()
    clf = Classifier(work / "mine.meta.pruned.onnx")
    proba = clf.predict_proba(x_raw)
    np.testing.assert_allclose(proba, expected, atol=2e-5)
    labels = clf.predict(x_raw)
    assert list(labels) == list(classes[expected.argmax(axis=1)])
    assert np.mean(labels == classes[y_raw]) >= 0.9
    assert "accuracy on raw series:" in printed


@pytest.mark.torch
def test_the_example_app_prints_the_same_labels_and_probabilities(guide) -> None:
    from dsp_deploy.runtime import Classifier

    work, ns, _ = guide
    with (work / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    clf = Classifier(work / "mine.meta.pruned.onnx")
    proba = clf.predict_proba(ns["x_raw"])
    assert [r["id"] for r in rows] == [str(i) for i in range(1, len(proba) + 1)]
    assert [r["label"] for r in rows] == list(clf.predict(ns["x_raw"]))
    np.testing.assert_allclose(
        [float(r["probability"]) for r in rows], proba.max(axis=1), atol=6e-5
    )

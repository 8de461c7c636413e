"""``scripts/sweep_without_ray.py`` (:mod:`dsp_experiments.local`): the same plan and
folder as ``dsp-deploy sweep``, run in local processes (for a machine without Ray);
1-epoch LITE on a tiny dataset. And :mod:`dsp_experiments.merge`, and its script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dsp_experiments.results import ResultsStore, row_key

pytest.importorskip("torch")

SCRIPT = Path(__file__).parents[1] / "scripts" / "sweep_without_ray.py"


def _run(out: Path, variants: str) -> subprocess.CompletedProcess[str]:
    args = [
        sys.executable, str(SCRIPT), "--datasets", "UnitTest", "--archs", "lite",
        "--seeds", "1", "--epochs", "1", "--workers", "2", "--variants", variants, "-o", str(out),
    ]  # fmt: skip
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


def test_script_runs_the_chain_and_a_rerun_adds_nothing(tmp_path) -> None:
    out = tmp_path / "sweep"
    first = _run(out, "dense,dsp-onnx,dsp-retrain,narrow")
    assert first.returncode == 0, first.stderr
    rows = ResultsStore(out).rows()
    assert sorted(row_key(r)[2] for r in rows) == ["dense", "dsp-onnx", "dsp-retrain", "narrow"]
    assert {r["device"] for r in rows} == {"cpu"}
    narrow = next(r for r in rows if r["variant"] == "narrow")
    retrain = next(r for r in rows if r["variant"] == "dsp-retrain")
    assert narrow["width"] and int(narrow["params"]) <= int(retrain["params_dense"])
    again = _run(out, "dense,dsp-onnx,dsp-retrain,narrow")
    assert again.returncode == 0 and "0 tasks pending of 4" in again.stdout
    assert ResultsStore(out).rows() == rows


def test_merge_adds_only_new_rows_with_their_artefacts(tmp_path) -> None:
    from dsp_experiments.merge import merge_folders as merge

    assert _run(tmp_path / "a", "dense,dsp-onnx").returncode == 0
    target = tmp_path / "b"
    target.mkdir()
    (target / "sweep.json").write_bytes((tmp_path / "a" / "sweep.json").read_bytes())
    a = ResultsStore(tmp_path / "a")
    b = ResultsStore(target)
    (dense,) = [r for r in a.rows() if r["variant"] == "dense"]
    probs, labels = a.load_probs(row_key(dense))
    assert b.commit(dense, probabilities=probs + 1, labels=labels)  # "its own" dense row
    assert merge(a, b) == (1, 1)
    assert sorted(r["variant"] for r in b.rows()) == ["dense", "dsp-onnx"]
    assert (b.load_probs(row_key(dense))[0] == probs + 1).all()  # the target's row stays
    onnx_key = next(row_key(r) for r in a.rows() if r["variant"] == "dsp-onnx")
    assert (
        b.model_path(onnx_key, "sparse").read_bytes()
        == a.model_path(onnx_key, "sparse").read_bytes()
    )
    assert merge(a, b) == (0, 2)
    script = SCRIPT.parent / "merge_sweep.py"
    again = subprocess.run([sys.executable, str(script), str(a.root), str(b.root)],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert again.returncode == 0 and again.stdout == f"0 rows added to {b.root}, 2 already there\n"

"""The sweep's variant table: registration behind compress's criteria, what each task saves,
and the post-training (``-auto``) plumbing, on tiny ONNX graphs with no training."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from dsp_deploy.data import Dataset
from dsp_deploy.errors import InputError
from dsp_deploy.options import CRITERIA
from dsp_experiments import tasks
import onnx_graphs

BASE = ("dense", "dsp-onnx", "dsp-onnx-rule", "dsp-retrain", "dsp-exact", "narrow")
AUTO = ("dsp-onnx-auto", "dense-onnx-auto")


def _table(criteria) -> dict[str, tuple]:
    return {
        v.name: (v.penalty, v.upstream, v.reads, v.checked)
        for v in tasks.register(criteria).values()
    }


def test_the_auto_variants_are_registered_only_with_the_auto_criterion() -> None:
    assert tuple(_table(("dead", "dsp"))) == BASE
    assert _table(("dead", "dsp", "auto")) == {
        "dense": ("none", None, (), False),
        "dsp-onnx": ("paper", None, (), True),
        "dsp-onnx-rule": ("paper", "dsp-onnx", ("sparse",), True),
        "dsp-retrain": ("paper", "dsp-onnx", ("state",), True),
        "dsp-exact": ("exact", None, (), True),
        "narrow": ("none", "dsp-retrain", (), False),
        "dsp-onnx-auto": ("paper", "dsp-onnx", ("sparse",), True),
        "dense-onnx-auto": ("none", "dense", ("final",), True),
    }
    assert tuple(tasks.register(CRITERIA)) == tasks.VARIANTS  # what this install registers


_IMPORT = """
import dsp_deploy.options as options
{patch}
from dsp_experiments import tasks
print(",".join(tasks.VARIANTS))
try:
    tasks.Task("A", "lite", "dense-onnx-auto", 1, "cpu-small", 1, 64, 0.0)
    print("accepted")
except Exception as e:
    print(type(e).__name__)
"""


@pytest.mark.parametrize(
    ("patch", "variants", "task"),
    [
        (
            "options.CRITERIA = tuple(c for c in options.CRITERIA if c != 'auto')",
            BASE,
            "InputError",
        ),
        ('options.CRITERIA = (*options.CRITERIA, "auto")', BASE + AUTO, "accepted"),
    ],
)
def test_the_guard_reads_compress_criteria_at_import(patch, variants, task) -> None:
    code = _IMPORT.format(patch=patch)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    assert out == [",".join(variants), task]


def test_each_task_saves_what_a_defined_downstream_reads() -> None:
    saved = {v.name: tasks.saved_kinds(v.name) for v in tasks.DEFINED}
    assert saved == {
        "dense": ("final",),  # dense-onnx-auto, even before it is registered
        "dsp-onnx": ("sparse", "state"),
        "dsp-onnx-rule": (),
        "dsp-retrain": (),  # narrow reads its row only
        "dsp-exact": (),
        "narrow": (),
        "dsp-onnx-auto": (),
        "dense-onnx-auto": (),
    }


def _task(variant: str, **kw) -> tasks.Task:
    return tasks.Task("Chain", "lite", variant, 1, "cpu-small", 1, 64, 0.0, **kw)


def test_a_task_saves_its_kinds_without_making_the_others() -> None:
    def never() -> bytes:
        raise AssertionError("made bytes nobody reads")

    assert tasks._saving(_task("dsp-exact"), sparse=never, state=never) == {}
    assert tasks._saving(_task("dsp-onnx"), sparse=lambda: b"s", state=lambda: b"t") == {
        "sparse": b"s",
        "state": b"t",
    }
    model = onnx_graphs.chain()
    built = tasks._Built(model, {})
    assert tasks._models(_task("dense"), built) == {"final": model.SerializeToString()}
    assert tasks._models(_task("narrow"), built) == {}
    assert tasks._models(_task("narrow", keep_models=True), built) == {
        "final": model.SerializeToString()
    }


def _data(n: int = 16) -> Dataset:
    x = np.random.default_rng(0).standard_normal((n, 1, onnx_graphs.L)).astype(np.float32)
    return Dataset(x, np.arange(n) % 2, ("a", "b"), "Chain", "train")


@pytest.fixture
def auto_as_dead(monkeypatch) -> None:
    """The -auto variants registered, their criterion swapped for ``dead``: the plumbing
    runs on the real compress before ``auto`` exists."""
    table = dict(tasks.register((*CRITERIA, "auto")))
    for name in AUTO:
        table[name] = dataclasses.replace(table[name], criterion="dead")
    monkeypatch.setattr(tasks, "REGISTERED", table)
    monkeypatch.setattr(tasks, "VARIANTS", tuple(table))
    monkeypatch.setattr(tasks, "UPSTREAM", {v.name: v.upstream for v in table.values()})


def test_dense_onnx_auto_compresses_the_dense_tasks_saved_model(auto_as_dead) -> None:
    dense = onnx_graphs.chain(dead1=(1, 3), dead2=(2,))
    row = {"train_accuracy": 0.75, "dead_channels": "2/4", "params_torch": 99, "epochs": 1}
    upstream = tasks.TaskOutput(
        row, np.zeros((0, 0)), np.zeros(0), {"final": dense.SerializeToString()}
    )
    task = _task("dense-onnx-auto")
    assert task.upstream_key == ("Chain", "lite", "dense", "1")
    built = tasks._post_training(task, _data(), upstream)
    assert built.scored["unpruned"] == dense  # the upstream's model, as saved
    kept = [int(k.split("/")[0]) for k in built.fields["kept_channels"].split(";")]
    assert kept == [2, 2] and built.fields["verified"] is True
    assert {k: built.fields[k] for k in ("train_accuracy", "dead_channels", "params_torch")} == {
        k: row[k] for k in ("train_accuracy", "dead_channels", "params_torch")
    }
    assert built.fields["train_seconds"] == 0.0  # trained by the dense task
    x = _data().X
    from dsp_deploy.inference import run_model

    (before,), (after,) = (run_model(m, {"x": x}) for m in (dense, built.model))
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)


def test_without_its_upstreams_model_an_auto_task_trains_its_own(auto_as_dead, monkeypatch):
    calls = []

    def fake_fit(task, train, **kw):
        calls.append((task.key, task.sparsity))
        return SimpleNamespace(model="net")

    monkeypatch.setattr(tasks, "fit", fake_fit)
    monkeypatch.setattr(tasks, "export", lambda outcome, task, train: onnx_graphs.chain())
    monkeypatch.setattr(tasks, "trained_fields", lambda outcome: {"train_seconds": 3.0})
    row_only = tasks.TaskOutput({}, np.zeros((0, 0)), np.zeros(0), {})  # from before it saved
    built = tasks._post_training(_task("dsp-onnx-auto"), _data(), row_only)
    assert calls == [(("Chain", "lite", "dsp-onnx-auto", "1"), 0.0)]
    assert built.fields["train_seconds"] == 3.0


def test_an_unregistered_variant_is_refused() -> None:
    with pytest.raises(InputError, match="unknown variant 'fancy'"):
        _task("fancy")


def test_a_resumed_run_reads_each_upstreams_saved_kinds_from_the_folder(tmp_path) -> None:
    from dsp_experiments.results import ResultsStore, row_key
    from dsp_experiments.runner import upstream_from_disk

    store = ResultsStore(tmp_path)
    saved = {"dense": {"final": b"dense onnx"}, "dsp-onnx": {"sparse": b"s", "state": b"t"}}
    for variant in ("dense", "dsp-onnx", "dsp-exact"):
        row = {"dataset": "A", "arch": "lite", "variant": variant, "seed": 1, "accuracy": 1}
        probs = np.eye(2, dtype=np.float32)
        store.commit(row, probabilities=probs, labels=np.arange(2), models=saved.get(variant, {}))
    rows = {row_key(r): r for r in store.rows()}
    for variant in ("dense", "dsp-onnx", "dsp-exact"):
        key = ("A", "lite", variant, "1")
        assert upstream_from_disk(store, rows, key).models == saved.get(variant, {})
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
        "A__lite__dense__1.final.onnx",
        "A__lite__dsp-onnx__1.sparse.onnx",
        "A__lite__dsp-onnx__1.state.pt",
    ]

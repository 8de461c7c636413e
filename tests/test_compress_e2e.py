"""End to end on real exports: ``train`` (DSP) → ``compress`` (dead) → ``eval``.

Short trainings with a strong λ and small batches (many optimiser steps) so that channels
die quickly: ItalyPowerDemand (67 series, L = 24), batch 8, λ = 1e-3. Models are trained
once per test session. The torch side's own analysis (``train --json``: channels exactly
zero after their ReLU on the training set) is an independent oracle: with the training
set as calibration, ``dead`` removes at least those channels, and the accuracy on the
training split is unchanged. On the test split channels dead on training data may wake,
so a small difference is allowed there (DESIGN.md: lossless holds on the data seen).

The DSP-trained ensembles take minutes and are marked slow; a 1-epoch LITETime checks
in the default run that an ensemble is analysed as independent members.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("torch")

from dsp_deploy.cli import main  # noqa: E402
from dsp_deploy.compress.groups import find_groups  # noqa: E402
from dsp_deploy.io import load_model  # noqa: E402

pytestmark = pytest.mark.torch

DATASET = "ItalyPowerDemand"
# name -> (arch, epochs, λ); all batch 8
RECIPES = {
    "lite": ("lite", 60, 1e-3),
    "inception": ("inception", 30, 1e-3),
    "litetime": ("litetime", 60, 1e-3),
    "inceptiontime": ("inceptiontime", 30, 1e-3),
    "litetime-1epoch": ("litetime", 1, 1e-3),
}


@dataclass(frozen=True)
class Trained:
    model: Path
    calib: Path
    dead: int  # channels the torch analysis found exactly zero, over all taps and members


def _cli_json(*args: str) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([str(a) for a in args])
    assert code == 0, out.getvalue()[-2000:]
    return json.loads(out.getvalue())


def _dead(report: dict) -> int:
    members = report.get("members") or [report]
    return sum(d for m in members for d, _ in m["dead_channels"].values())


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Trained]:
    cache: dict[str, Trained] = {}

    def get(name: str) -> Trained:
        if name not in cache:
            arch, epochs, sparsity = RECIPES[name]
            folder = tmp_path_factory.mktemp(name)
            model, calib = folder / f"{name}.onnx", folder / "train.npz"
            report = _cli_json(
                *("train", "--arch", arch, "--dataset", DATASET, "-o", model),
                *("--epochs", epochs, "--sparsity", sparsity, "--batch-size", 8),
                *("--threads", 1, "--calib-out", calib, "--json", "--quiet"),
            )
            cache[name] = Trained(model, calib, _dead(report))
        return cache[name]

    return get


def _accuracy(model: Path, split: str) -> float:
    return _cli_json("eval", model, "--dataset", DATASET, "--split", split, "--json")["accuracy"]


def _train_compress_eval(net: Trained) -> dict:
    out = net.model.with_name("pruned.onnx")
    report = _cli_json(
        "compress", net.model, "--calib", net.calib, "-o", out, "--holdout", "0", "--json"
    )
    assert report["verified"] and report["decision"]["within_tolerance"]
    removed = sum(before - after for before, after in report["channels"].values())
    assert removed >= net.dead
    if net.dead:
        assert report["params"][1] < report["params"][0]
        assert report["macs"][1] < report["macs"][0]
    assert _accuracy(out, "train") == _accuracy(net.model, "train")
    assert abs(_accuracy(out, "test") - _accuracy(net.model, "test")) <= 0.01
    return report


@pytest.mark.parametrize("name", ["lite", "inception"])
def test_dsp_trained_single_model(trained, name: str) -> None:
    net = trained(name)
    assert net.dead > 0, "the recipe should kill channels; retune RECIPES"
    _train_compress_eval(net)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["litetime", "inceptiontime"])
def test_dsp_trained_ensemble(trained, name: str) -> None:
    net = trained(name)
    assert net.dead > 0, "the recipe should kill channels; retune RECIPES"
    _train_compress_eval(net)


def _member(name: str) -> str | None:
    match = re.search(r"members\.(\d+)/", name)
    return match and match.group(1)


def test_ensemble_members_are_analysed_independently(trained) -> None:
    net = trained("litetime-1epoch")
    groups = find_groups(load_model(net.model)).groups
    members = set()
    for g in groups:
        owners = {_member(n) for n in (*g.sources, *g.consumers)}
        assert len(owners) == 1 and None not in owners, g
        members |= owners
        assert g.blocked_by is None, g
    assert members == {"0", "1", "2", "3", "4"}
    assert len(groups) == 5 * (3 + 17 + 2)  # per member: 3 branches, 17 filters, 2 pointwise
    _train_compress_eval(net)

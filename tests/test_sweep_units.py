"""Sweep building blocks without Ray or training: protocols, the results folder, stats."""

from __future__ import annotations

import csv
import math
import sys

import numpy as np
import pytest

from dsp_deploy.errors import InputError
from dsp_experiments import stats
from dsp_experiments.protocols import CPU_SMALL, PAPER, Protocol, get_protocol
from dsp_experiments.results import COLUMNS, ResultsStore


def test_paper_trains_1500_epochs_whatever_the_size() -> None:
    assert {PAPER.epochs_for(n) for n in (20, 64, 65, 8926)} == {1500}
    assert PAPER.admits("inception", 8926, 2709)


@pytest.mark.parametrize(
    ("n_train", "epochs"),
    [(20, 1500), (64, 1500), (65, 750), (1000, 100), (8926, 100)],
)
def test_cpu_small_budgets_steps_with_floor_and_cap(n_train: int, epochs: int) -> None:
    # 1500 steps: one step per epoch up to 64 series; 2 steps at 65; the floor at 1000.
    assert CPU_SMALL.epochs_for(n_train) == epochs


def test_cpu_small_admits_by_step_cost_per_family() -> None:
    assert CPU_SMALL.admits("lite", 50, 150) and CPU_SMALL.admits("inception", 50, 150)
    assert CPU_SMALL.admits("lite", 1000, 512) and not CPU_SMALL.admits("lite", 1000, 513)
    assert not CPU_SMALL.admits("inception", 64, 151)
    assert CPU_SMALL.admits("inception", 20, 480)  # 20 · 480 = 9600: a small batch


def test_overrides_and_json_round_trip() -> None:
    p = CPU_SMALL.with_overrides(epochs=3, seeds=(1, 2), exact_sparsity=5e-5)
    assert (p.epochs_for(10), p.epochs_for(10_000), p.seeds) == (3, 3, (1, 2))
    assert p.exact_lambda("lite") == p.exact_lambda("inception") == 5e-5
    assert Protocol.from_dict(p.to_dict()) == p
    with pytest.raises(InputError, match="unknown protocol 'fast'"):
        get_protocol("fast")


def _row(dataset: str, variant: str, seed: int, accuracy: float, params: int = 100) -> dict:
    return {
        "dataset": dataset,
        "arch": "lite",
        "variant": variant,
        "seed": seed,
        "protocol": "cpu-small",
        "epochs": 1,
        "accuracy": accuracy,
        "params": params,
        "macs": 10 * params,
        "params_dense": 100,
        "macs_dense": 1000,
        "latency_ms": params / 100,
        "latency_ratio": params / 100,
        "verified": True,
        "dead_channels": "0/96;1/32;2/32",
    }


def _commit(store: ResultsStore, row: dict, probs: np.ndarray | None = None) -> bool:
    labels = np.array([0, 1, 1], np.int64)
    if probs is None:
        probs = np.eye(2, dtype=np.float32)[[0, 1, 0]]
    return store.commit(row, probabilities=probs, labels=labels)


def test_commit_is_idempotent_per_key(tmp_path) -> None:
    store = ResultsStore(tmp_path)
    assert _commit(store, _row("A", "dense", 1, 0.5))
    assert not _commit(store, _row("A", "dense", 1, 0.9))  # a retried task: no second row
    assert _commit(store, _row("A", "dense", 2, 0.7))
    rows = store.rows()
    assert [(r["seed"], r["accuracy"]) for r in rows] == [("1", "0.5"), ("2", "0.7")]
    assert rows[0]["verified"] == "true" and rows[0]["dead_channels"] == "0/96;1/32;2/32"
    with store.csv.open() as f:
        assert tuple(next(csv.reader(f))) == COLUMNS
    probs, labels = store.load_probs(("A", "lite", "dense", "1"))
    assert probs.dtype == np.float32 and labels.tolist() == [0, 1, 1]


def test_a_torn_last_line_is_ignored_then_cut(tmp_path) -> None:
    store = ResultsStore(tmp_path)
    _commit(store, _row("A", "dense", 1, 0.5))
    with store.csv.open("a") as f:
        f.write("A,lite,dsp-onnx,1,cpu-sm")  # a driver killed mid-write
    assert [r["variant"] for r in store.rows()] == ["dense"]
    assert _commit(store, _row("A", "dsp-onnx", 1, 0.6))
    assert [r["variant"] for r in store.rows()] == ["dense", "dsp-onnx"]
    assert store.csv.read_text().count("\n") == 3  # header + two whole rows


def test_a_torn_header_is_rewritten(tmp_path) -> None:
    store = ResultsStore(tmp_path)
    store.csv.write_text("dataset,arch,vari")
    assert _commit(store, _row("A", "dense", 1, 0.5))
    assert [r["dataset"] for r in store.rows()] == ["A"]


OLD_COLUMNS = tuple(c for c in COLUMNS if c != "accuracy_unpruned")  # the header before it


def _old_file(store: ResultsStore, header: tuple[str, ...], lines: list[dict], tail: str) -> None:
    store.root.mkdir(parents=True, exist_ok=True)
    with store.csv.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows({c: r.get(c, "") for c in header} for r in lines)
        f.write(tail)


def test_an_older_header_is_rewritten_once_with_the_new_columns_empty(tmp_path, caplog) -> None:
    store = ResultsStore(tmp_path)
    old = [
        {**_row("A", "dense", 1, 0.5), "failures": "a, b | c"},  # a quoted cell
        {**_row("A", "dsp-onnx", 1, 0.6), "verified": "true"},
    ]
    _old_file(store, OLD_COLUMNS, old, tail="A,lite,narrow,1,cpu-sm")  # a torn last line
    before = store.rows()
    assert [r["variant"] for r in before] == ["dense", "dsp-onnx"]
    assert before[0]["failures"] == "a, b | c" and before[1]["accuracy_unpruned"] == ""

    caplog.set_level("INFO", logger="dsp_experiments.results")
    assert _commit(store, {**_row("A", "dsp-exact", 1, 0.7), "accuracy_unpruned": 0.75})
    assert _commit(store, _row("B", "dense", 1, 0.8))
    rewrites = [r for r in caplog.records if "rewrote its header" in r.getMessage()]
    assert len(rewrites) == 1 and "accuracy_unpruned" in rewrites[0].getMessage()

    with store.csv.open() as f:
        assert tuple(next(csv.reader(f))) == COLUMNS
    rows = store.rows()
    assert rows[:2] == before  # every old value kept
    assert [(r["variant"], r["accuracy_unpruned"]) for r in rows[2:]] == [
        ("dsp-exact", "0.75"),
        ("dense", ""),
    ]
    assert store.csv.read_text().count("\n") == 5  # header + four rows: the torn line cut
    assert "narrow" not in store.csv.read_text()


def test_bind_brings_an_older_header_up_to_date(tmp_path) -> None:
    store = ResultsStore(tmp_path)
    _old_file(store, OLD_COLUMNS, [_row("A", "dense", 1, 0.5)], tail="")
    before = store.rows()
    store.bind(CPU_SMALL)
    with store.csv.open() as f:
        assert tuple(next(csv.reader(f))) == COLUMNS
    assert store.rows() == before


@pytest.mark.parametrize(
    "header",
    [
        (*OLD_COLUMNS, "bogus"),  # a column this code does not know
        (*OLD_COLUMNS[:5], OLD_COLUMNS[6], OLD_COLUMNS[5], *OLD_COLUMNS[7:]),  # reordered
        COLUMNS[4:],  # no key columns
    ],
    ids=["unknown", "reordered", "keyless"],
)
def test_a_foreign_header_is_refused_and_left_alone(tmp_path, header) -> None:
    store = ResultsStore(tmp_path)
    _old_file(store, header, [_row("A", "dense", 1, 0.5)], tail="")
    text = store.csv.read_text()
    with pytest.raises(InputError, match="has the columns .* or an older version"):
        store.bind(CPU_SMALL)
    with pytest.raises(InputError, match="has the columns .* or an older version"):
        _commit(store, _row("B", "dense", 1, 0.5))
    assert store.csv.read_text() == text


def test_unknown_columns_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="bogus"):
        _commit(ResultsStore(tmp_path), {**_row("A", "dense", 1, 0.5), "bogus": 1})


def test_rerun_under_another_protocol_is_refused(tmp_path) -> None:
    store = ResultsStore(tmp_path)
    store.bind(CPU_SMALL)
    store.bind(CPU_SMALL)  # the same: fine
    assert store.protocol() == CPU_SMALL
    with pytest.raises(InputError, match="max_step_cells, min_epochs, name, target_steps"):
        store.bind(PAPER.with_overrides(seeds=CPU_SMALL.seeds))


def test_a_rerun_may_add_seeds(tmp_path) -> None:
    store = ResultsStore(tmp_path)
    store.bind(CPU_SMALL.with_overrides(seeds=(9409,)))
    store.bind(CPU_SMALL.with_overrides(seeds=(3804, 9409)))  # more members, same budget
    store.bind(CPU_SMALL.with_overrides(seeds=(9409,)))
    assert store.protocol() == CPU_SMALL.with_overrides(seeds=(9409, 3804))
    with pytest.raises(InputError, match="epochs"):
        store.bind(CPU_SMALL.with_overrides(seeds=(1,), epochs=5))
    assert store.protocol().seeds == (9409, 3804)  # a refused rerun changes nothing


def test_wilcoxon_edge_cases() -> None:
    assert stats.wilcoxon_p([0.5], [0.4]) is None
    assert stats.wilcoxon_p([0.5, 0.6], [0.5, 0.6]) == 1.0
    a = np.linspace(0.5, 0.9, 12)
    p = stats.wilcoxon_p(a + 0.05, a)
    assert p is not None and p < 0.01


def test_cells_ensembles_and_comparisons(tmp_path) -> None:
    store = ResultsStore(tmp_path)
    right, wrong = np.eye(2, dtype=np.float32)[[0, 1, 1]], np.eye(2, dtype=np.float32)[[1, 0, 0]]
    # Dataset A: dense seeds agree (1.0); the DSP seeds disagree: one all right (0.9 soft),
    # one all wrong but less confident, so their mean softmax is right everywhere.
    _commit(store, _row("A", "dense", 1, 1.0), right)
    _commit(store, _row("A", "dense", 2, 1.0), right)
    _commit(store, _row("A", "dsp-onnx", 1, 1.0, 40), 0.9 * right + 0.1 * wrong)
    _commit(store, _row("A", "dsp-onnx", 2, 0.0, 60), 0.4 * right + 0.6 * wrong)
    _commit(store, _row("B", "dense", 1, 0.5))
    _commit(store, _row("B", "dsp-onnx", 1, 0.75, 50))
    table = stats.cells(store.rows(), store.load_probs)
    a = next(c for c in table if (c.dataset, c.variant) == ("A", "dsp-onnx"))
    assert (a.accuracy, a.ensemble_accuracy, a.params, a.compression) == (0.5, 1.0, 50, 0.5)
    assert a.latency_ratio == 0.5  # the seeds' mean of the rows' own paired ratios
    (single,) = stats.compare(table, "dsp-onnx", "dense", "single")
    assert (single.n, single.wins, single.ties, single.losses) == (2, 1, 0, 1)
    assert math.isclose(single.mean_delta, ((0.5 - 1.0) + (0.75 - 0.5)) / 2)
    assert math.isclose(single.mean_compression, 0.5)
    (ens,) = stats.compare(table, "dsp-onnx", "dense", "ensemble")
    assert (ens.n, ens.ties, ens.p_value) == (1, 1, None)  # B has one seed: no ensemble
    (row,) = stats.ensemble_rows([a], store.rows())
    assert (row["seed"], row["params"], row["params_dense"]) == ("ensemble", 100, 200)


def test_rows_from_before_the_paired_latency_have_no_ratio(tmp_path) -> None:
    store = ResultsStore(tmp_path)
    for variant, params in (("dense", 100), ("dsp-onnx", 40)):
        _commit(store, {**_row("A", variant, 1, 1.0, params), "latency_ratio": ""})
    table = stats.cells(store.rows(), store.load_probs)
    # not latency_ms / dense latency_ms (0.4): those were timed apart, under other load
    assert [c.latency_ratio for c in table] == [None, None]


def test_targets_check_the_papers_claim_and_the_narrow_control() -> None:
    def comparison(arch, variant, baseline, compression, delta, p) -> stats.Comparison:
        return stats.Comparison(
            arch, variant, baseline, "single", 20, compression, delta, 8, 4, 8, p
        )

    summary = [
        comparison("lite", "dsp-retrain", "dense", 0.60, -0.005, 0.20),  # met
        comparison("lite", "dsp-retrain", "narrow", 0.60, 0.004, 0.30),  # tied
        comparison("lite", "dsp-onnx", "dense", 0.60, -0.005, 0.01),  # significant loss
        comparison("lite", "dsp-onnx", "narrow", 0.60, -0.02, 0.01),  # loses
        comparison("lite", "dsp-exact", "dense", 0.60, -0.0101, 0.40),  # over a point
        comparison("inception", "dsp-retrain", "dense", 0.70, 0.01, 0.01),  # under 75%
        comparison("inception", "dsp-retrain", "narrow", 0.70, 0.02, 0.03),  # wins
        comparison("inception", "dsp-exact", "dense", 0.80, 0.02, 0.01),  # significant gain
        comparison("lite", "narrow", "dense", 0.60, 0.0, 1.0),  # the control: not checked
    ]
    checks = {(t.arch, t.variant): (t.met, t.versus_narrow) for t in stats.targets(summary)}
    assert checks == {
        ("lite", "dsp-retrain"): (True, "tied"),
        ("lite", "dsp-onnx"): (False, "loses"),
        ("lite", "dsp-exact"): (False, "–"),
        ("inception", "dsp-retrain"): (False, "wins"),
        ("inception", "dsp-exact"): (True, "–"),
    }


def test_compensations_pair_each_rule_row_with_its_unpruned_model() -> None:
    def row(dataset: str, seed: str, variant: str, acc: str, **modes: str) -> dict[str, str]:
        extra = {f"accuracy_{m}": v for m, v in modes.items()}
        base = {"arch": "lite", "dataset": dataset, "seed": seed, "variant": variant}
        return {**base, "accuracy": acc, **extra}

    rows = [
        row("A", "1", "dsp-onnx", "0.90"),
        row("A", "1", "dsp-onnx-rule", "0.85", none="0.80", mean="0.85", lstsq="0.95"),
        row("B", "1", "dsp-onnx", "0.70"),
        row("B", "1", "dsp-onnx-rule", "0.70", none="0.60", mean="0.70", lstsq="0.70"),
        row("C", "1", "dsp-onnx-rule", "0.50", none="0.5", mean="0.5", lstsq="0.5"),  # unpaired
    ]
    by_mode = {c.compensation: c for c in stats.compensations(rows)}
    assert set(by_mode) == {"none", "mean", "lstsq"}
    none, mean, lstsq = by_mode["none"], by_mode["mean"], by_mode["lstsq"]
    assert none.n == mean.n == lstsq.n == 2
    assert none.delta == pytest.approx(-0.10) and (none.wins, none.losses) == (0, 2)
    assert mean.delta == pytest.approx(-0.025) and (mean.ties, mean.losses) == (1, 1)
    assert lstsq.delta == pytest.approx(0.025) and (lstsq.wins, lstsq.ties) == (1, 1)
    assert lstsq.mean_accuracy == pytest.approx(0.825)
    assert none.stand_ins == 2  # rows without accuracy_unpruned: dsp-onnx's accuracy


def test_compensations_prefer_the_rule_rows_own_unpruned_accuracy() -> None:
    def row(dataset: str, variant: str, acc: str, unpruned: str = "", lstsq: str = "") -> dict:
        base = {"arch": "lite", "dataset": dataset, "seed": "1", "variant": variant}
        return {**base, "accuracy": acc, "accuracy_unpruned": unpruned, "accuracy_lstsq": lstsq}

    rows = [
        row("A", "dsp-onnx", "0.90", unpruned="0.80"),  # a channel woke on the test set
        row("A", "dsp-onnx-rule", "0.85", unpruned="0.80", lstsq="0.85"),
        row("B", "dsp-onnx", "0.70"),
        row("B", "dsp-onnx-rule", "0.60", lstsq="0.60"),  # an old row: dsp-onnx stands in
        row("C", "dsp-onnx-rule", "0.50", unpruned="0.40", lstsq="0.50"),  # needs no dsp-onnx
        row("D", "dsp-onnx-rule", "0.50", lstsq="0.50"),  # neither: unpaired
    ]
    (lstsq,) = stats.compensations(rows)
    assert (lstsq.compensation, lstsq.n, lstsq.stand_ins) == ("lstsq", 3, 1)
    assert lstsq.delta == pytest.approx((0.05 - 0.10 + 0.10) / 3)
    assert (lstsq.wins, lstsq.ties, lstsq.losses) == (2, 0, 1)


def test_dead_check_compares_dead_compression_with_the_unpruned_model() -> None:
    from dsp_experiments.report_md import _dead_line

    def row(variant: str, acc: str, unpruned: str) -> dict[str, str]:
        return {"variant": variant, "accuracy": acc, "accuracy_unpruned": unpruned}

    assert stats.dead_check([row("dsp-onnx", "0.5", "")]) is None
    assert "no row records" in _dead_line([row("dsp-onnx", "0.5", "")])
    rows = [
        row("dsp-onnx", "0.5", "0.5"),
        row("dsp-exact", "0.75", "0.5"),
        row("dsp-onnx", "0.3", "0.5"),
        row("dsp-onnx-rule", "0.0", "0.5"),  # the rule is lossy by design: not counted
        row("dsp-exact", "0.9", ""),  # an old row
    ]
    assert stats.dead_check(rows) == stats.DeadCheck(n=3, equal=1, worst=0.25)
    assert "kept in 1 of 3 rows; largest change +0.2500" in _dead_line(rows)


def test_upstreams_are_submitted_before_the_tasks_that_read_them() -> None:
    from dsp_experiments.runner import upstreams_first
    from dsp_experiments.tasks import Task

    def task(variant: str, dataset: str = "A") -> Task:
        return Task(dataset, "lite", variant, 1, "cpu-small", 10, 64, 0.0)

    given = [task("narrow"), task("dense"), task("dsp-retrain"), task("dsp-onnx-rule", "B")]
    order = [(t.dataset, t.variant) for t in upstreams_first(given)]
    # narrow's upstream moves before it; a rule task without its upstream stays as is
    assert order == [("A", "dsp-retrain"), ("A", "narrow"), ("A", "dense"), ("B", "dsp-onnx-rule")]


def test_a_chain_of_upstreams_is_submitted_from_its_root() -> None:
    from dsp_experiments.runner import upstreams_first
    from dsp_experiments.tasks import Task

    def task(variant: str, dataset: str = "A") -> Task:
        return Task(dataset, "lite", variant, 1, "cpu-small", 10, 64, 0.0)

    given = [task("narrow"), task("dense"), task("dsp-retrain"), task("dsp-onnx")]
    given.append(task("dsp-retrain", "B"))  # its dsp-onnx is not in the plan: runs alone
    order = [(t.dataset, t.variant) for t in upstreams_first(given)]
    # dsp-onnx → dsp-retrain → narrow: the whole chain moves before narrow, root first
    assert order == [
        ("A", "dsp-onnx"),
        ("A", "dsp-retrain"),
        ("A", "narrow"),
        ("A", "dense"),
        ("B", "dsp-retrain"),
    ]


def test_models_are_stored_by_kind_and_read_back_for_downstreams(tmp_path) -> None:
    from dsp_experiments.runner import upstream_from_disk

    store = ResultsStore(tmp_path)
    row = _row("A", "dsp-onnx", 1, 0.5)
    models = {"sparse": b"onnx bytes", "state": b"torch.save bytes", "final": b"final"}
    assert store.commit(
        row, probabilities=np.eye(2, dtype=np.float32), labels=np.arange(2), models=models
    )
    key = ("A", "lite", "dsp-onnx", "1")
    names = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert names == [
        "A__lite__dsp-onnx__1.final.onnx",
        "A__lite__dsp-onnx__1.sparse.onnx",
        "A__lite__dsp-onnx__1.state.pt",
    ]
    rows = {key: store.rows()[0]}
    # only what downstream tasks read: the rule's sparse model, the retrain's state
    assert upstream_from_disk(store, rows, key).models == {
        "sparse": b"onnx bytes",
        "state": b"torch.save bytes",
    }
    store.model_path(key, "state").unlink()  # a row from before states were kept
    assert upstream_from_disk(store, rows, key).models == {"sparse": b"onnx bytes"}


def test_an_unknown_model_kind_is_refused_before_anything_is_written(tmp_path) -> None:
    store = ResultsStore(tmp_path)
    with pytest.raises(ValueError, match="unknown model kind 'weights'"):
        store.commit(
            _row("A", "dsp-onnx", 1, 0.5),
            probabilities=np.eye(2, dtype=np.float32),
            labels=np.arange(2),
            models={"weights": b"x"},
        )
    assert not any(tmp_path.iterdir())


def test_wall_time_rows_per_arch_and_variant() -> None:
    from dsp_experiments.report_md import wall_rows as _wall_rows

    rows = [
        {"arch": "lite", "variant": "dense", "task_seconds": "10"},
        {"arch": "lite", "variant": "dense", "task_seconds": "30"},
        {"arch": "lite", "variant": "dense", "task_seconds": "3560"},
        {"arch": "lite", "variant": "narrow", "task_seconds": "5"},
        {"arch": "lite", "variant": "narrow", "task_seconds": ""},  # a row without it
        {"arch": "lite", "variant": "dense", "task_seconds": "4", "device": "cuda:H200"},
        {"arch": "lite", "variant": "narrow", "task_seconds": "7", "device": "cpu"},
    ]
    assert _wall_rows(rows) == [
        ("lite", "dense", "cpu", 3, 30.0, 1200.0, 1.0),  # rows without a device: CPU
        ("lite", "dense", "cuda:H200", 1, 4.0, 4.0, 4 / 3600),
        ("lite", "narrow", "cpu", 2, 6.0, 6.0, 12 / 3600),
    ]


def test_cd_diagram_needs_three_variants(tmp_path) -> None:
    # Regression: aeon's Friedman test raised on the first Inception rows (2 variants).
    pytest.importorskip("aeon")
    pytest.importorskip("matplotlib")
    from types import SimpleNamespace

    from dsp_experiments.plots import _critical_difference

    rng = np.random.default_rng(0)
    datasets = [f"D{i}" for i in range(6)]

    def cells(variants):
        return {
            v: {d: SimpleNamespace(accuracy=float(rng.uniform())) for d in datasets}
            for v in variants
        }

    two = cells(["dsp-onnx", "dsp-onnx-rule"])
    assert _critical_difference(two, "inception", tmp_path / "two.png") is None
    three = cells(["dense", "dsp-onnx", "dsp-onnx-rule"])
    assert _critical_difference(three, "inception", tmp_path / "three.png") is not None
    assert (tmp_path / "three.png").stat().st_size > 0


def test_a_figure_with_nothing_to_draw_replaces_an_older_one(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from dsp_experiments.plots import plot_all

    store = ResultsStore(tmp_path)
    for variant, params in (("dense", 100), ("dsp-onnx", 40)):
        _commit(store, {**_row("A", variant, 1, 1.0, params), "latency_ratio": ""})
    stale = tmp_path / "latency_lite.png"
    stale.write_bytes(b"an older report's figure")
    drawn = plot_all(stats.cells(store.rows(), store.load_probs), tmp_path)
    names = [name for name, _ in drawn]
    assert "accuracy_lite.png" in names and "latency_lite.png" not in names
    assert not stale.exists()  # no row has a paired latency ratio: no latency figure


def test_progress_off_a_terminal_prints_one_line_per_task(monkeypatch, capsys) -> None:
    from dsp_deploy.commands.sweep import _Progress
    from dsp_experiments.runner import Event, Plan
    from dsp_experiments.tasks import Task

    tasks = tuple(Task(d, "lite", "dense", 1, "cpu-small", 10, 64, 0.0) for d in "ABC")
    clock = iter([100.0, 130.0, 190.0])  # enter, first task, second task
    monkeypatch.setattr("dsp_deploy.commands.sweep.time.monotonic", lambda: next(clock))
    with _Progress(Plan(tasks, tasks[1:], ()), quiet=False) as update:  # stderr is captured
        update(Event(tasks[1], 1, 0, 2))
        update(Event(tasks[2], 1, 1, 2, error="worker died"))
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "1 of 3 tasks already done",
        "[1/2] B/lite/dense/1 · elapsed 0:00:30 · ETA 0:00:30",
        "[2/2] C/lite/dense/1 FAILED: worker died · elapsed 0:01:30 · ETA 0:00:00",
    ]


def test_plan_gives_each_task_its_gpu_share_and_device(tmp_path) -> None:
    from dsp_deploy.data import load_train_test
    from dsp_experiments.runner import SweepRequest, plan_sweep

    data = {"UnitTest": load_train_test("UnitTest")}
    for gpus, device in ((0.0, "cpu"), (0.25, "cuda")):
        request = SweepRequest(
            ("UnitTest",), ("lite",), ("dense", "dsp-onnx"), CPU_SMALL, gpus_per_task=gpus
        )
        plan = plan_sweep(request, data, ResultsStore(tmp_path / device))
        assert {(t.gpus, t.device) for t in plan.tasks} == {(gpus, device)}
        assert len(plan.pending) == len(CPU_SMALL.seeds) * 2
    with pytest.raises(InputError, match="gpus per task"):
        SweepRequest(("UnitTest",), ("lite",), ("dense",), CPU_SMALL, gpus_per_task=1.5)


def test_a_sweep_without_ray_names_the_extra(monkeypatch, tmp_path) -> None:
    from dsp_deploy.errors import MissingExtraError
    from dsp_experiments.runner import Plan, execute
    from dsp_experiments.tasks import Task

    task = Task("A", "lite", "dense", 1, "cpu-small", 10, 64, 0.0)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'dsp-deploy\[sweep\]'"):
        execute(Plan((task,), (task,), ()), {}, ResultsStore(tmp_path))


def test_the_local_executor_runs_ready_upstreams_first_within_its_slots() -> None:
    from dsp_experiments.local import ready_tasks
    from dsp_experiments.tasks import Task

    def task(dataset: str, variant: str) -> Task:
        return Task(dataset, "lite", variant, 1, "cpu-small", 10, 64, 0.0)

    waiting = [task("A", "dense"), task("A", "dsp-retrain"), task("B", "narrow"),
               task("B", "dsp-onnx"), task("C", "dsp-onnx-rule")]  # fmt: skip
    unfinished = {t.key for t in waiting} | {task("B", "dsp-retrain").key}  # B's: running
    failed = {task("C", "dsp-onnx").key}
    # A's retrain: its dsp-onnx is not in this run (read from the folder, or trains its
    # own); B's narrow waits on B's running retrain; C's rule on a failed upstream.
    # Upstreams of others (dsp-onnx, dsp-retrain; dense too once dense-onnx-auto is
    # registered) first, then plan order.
    from dsp_experiments.tasks import VARIANTS

    ready = ready_tasks(waiting, unfinished, failed, 3)
    upstreams = [("A", "dense")] if "dense-onnx-auto" in VARIANTS else []
    rest = [] if upstreams else [("A", "dense")]
    assert [(t.dataset, t.variant) for t in ready] == [
        *upstreams, ("A", "dsp-retrain"), ("B", "dsp-onnx"), *rest
    ]
    assert ready_tasks(waiting, unfinished, failed, 0) == []


def test_the_local_executor_refuses_no_workers(tmp_path) -> None:
    from dsp_deploy.errors import InputError
    from dsp_experiments.local import execute_locally
    from dsp_experiments.runner import Plan

    with pytest.raises(InputError, match="workers must be >= 1, got 0"):
        execute_locally(Plan((), (), ()), {}, ResultsStore(tmp_path), workers=0)

"""The sweep report at both levels (single networks, ensembles of the sweep's seeds), on a
tiny synthetic sweep folder made with the results store: fake rows and probabilities, no
training."""

from __future__ import annotations

import csv
from dataclasses import replace

import numpy as np
import pytest

from dsp_deploy.errors import InputError
from dsp_experiments import stats
from dsp_experiments.protocols import CPU_SMALL
from dsp_experiments.published import published_accuracies
from dsp_experiments.report import build_report, markdown, write_report
from dsp_experiments.results import ResultsStore

LABELS = np.array([0, 1, 1, 0], np.int64)
SEEDS = (1, 2, 3)
# One cell worked by hand: seeds right on 2, 3 and 2 of 4 series (mean 0.5833); their mean
# softmax [.567 .433], [.55 .45], [.433 .567], [.517 .483] is right on series 0, 2, 3.
HAND = (
    [[0.9, 0.1], [0.4, 0.6], [0.6, 0.4], [0.2, 0.8]],
    [[0.6, 0.4], [0.45, 0.55], [0.3, 0.7], [0.45, 0.55]],
    [[0.2, 0.8], [0.8, 0.2], [0.4, 0.6], [0.9, 0.1]],
)
PARAMS = {"dense": 100, "dsp-onnx": 60, "dsp-retrain": 40, "narrow": 42}


def _commit(store: ResultsStore, dataset: str, variant: str, seed: int, probs) -> None:
    probs = np.asarray(probs, np.float32)
    row = {
        "dataset": dataset,
        "arch": "lite",
        "variant": variant,
        "seed": seed,
        "protocol": "cpu-small",
        "epochs": 10,
        "accuracy": float(np.mean(probs.argmax(1) == LABELS)),
        "params": PARAMS[variant],
        "macs": 10 * PARAMS[variant],
        "params_dense": 100,
        "macs_dense": 1000,
        "task_seconds": 1.0,
    }
    assert store.commit(row, probabilities=probs, labels=LABELS)


@pytest.fixture
def folder(tmp_path):
    """Datasets A, B, C × 4 variants × seeds 1-3, except C/dsp-onnx with seeds 1 and 2 only."""
    store = ResultsStore(tmp_path / "sweep")
    store.bind(replace(CPU_SMALL, seeds=SEEDS))
    rng = np.random.default_rng(0)
    for dataset in ("A", "B", "C"):
        for variant in PARAMS:
            for i, seed in enumerate(SEEDS):
                if (dataset, variant, seed) == ("C", "dsp-onnx", 3):
                    continue
                hand = (dataset, variant) == ("A", "dsp-retrain")
                probs = HAND[i] if hand else rng.dirichlet((1, 1), len(LABELS))
                _commit(store, dataset, variant, seed, probs)
    published = tmp_path / "published.csv"
    published.write_text("arch,dataset,published,delta\nlite,A,0.8,\nlite,B,,\nother,A,0.1,\n")
    return store, published


def _csv(path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_ensembles_need_every_seed_of_the_sweep(folder) -> None:
    store, _ = folder
    cells = {(c.dataset, c.variant): c for c in build_report(store.root).cells}
    hand = cells[("A", "dsp-retrain")]
    assert hand.accuracy == pytest.approx(7 / 12) and hand.ensemble_accuracy == 0.75
    assert (hand.ensemble_params, hand.ensemble_macs) == (120, 1200)  # members' sums
    two_of_three = cells[("C", "dsp-onnx")]
    assert two_of_three.seeds == ("1", "2") and two_of_three.ensemble_accuracy is None
    assert sum(c.ensemble_accuracy is not None for c in cells.values()) == 11


def test_table_has_an_ensemble_row_per_complete_cell_with_the_published_beside(
    folder, tmp_path
) -> None:
    store, published = folder
    write_report(build_report(store.root, published), tmp_path / "report")
    table = _csv(tmp_path / "report" / "table.csv")
    ensembles = {(r["dataset"], r["variant"]): r for r in table if r["seed"] == "ensemble"}
    assert len(table) == 35 + 11 and len(ensembles) == 11
    assert ("C", "dsp-onnx") not in ensembles
    hand = ensembles[("A", "dsp-retrain")]
    assert (hand["accuracy"], hand["params"], hand["params_dense"]) == ("0.7500", "120", "300")
    assert (hand["compression"], hand["published"]) == ("0.6000", "0.8000")
    assert ensembles[("B", "dense")]["published"] == ""  # the file has no value for B
    assert all(r["published"] == "" for r in table if r["seed"] != "ensemble")


def test_per_dataset_and_published_rows_at_both_levels(folder, tmp_path) -> None:
    store, published = folder
    report = build_report(store.root, published)
    write_report(report, tmp_path / "report")
    per = {(r["dataset"], r["variant"]): r for r in _csv(tmp_path / "report" / "per_dataset.csv")}
    dense_a = next(c for c in report.cells if (c.dataset, c.variant) == ("A", "dense"))
    hand = per[("A", "dsp-retrain")]
    assert float(hand["ensemble_delta_vs_dense"]) == pytest.approx(
        0.75 - dense_a.ensemble_accuracy, abs=1e-4
    )
    assert (hand["ensemble_params"], hand["published"]) == ("120", "0.8000")
    assert per[("C", "dsp-onnx")]["ensemble_accuracy"] == ""
    (pub_a,) = [r for r in _csv(tmp_path / "report" / "published.csv") if r["dataset"] == "A"]
    assert float(pub_a["delta_ensemble"]) == pytest.approx(dense_a.ensemble_accuracy - 0.8, 1e-3)
    assert float(pub_a["delta_single"]) == pytest.approx(dense_a.accuracy - 0.8, abs=1e-4)


def test_summary_and_claim_table_at_the_ensemble_level(folder) -> None:
    store, published = folder
    report = build_report(store.root, published)
    levels = {(c.variant, c.baseline, c.level): c.n for c in report.summary}
    assert levels[("dsp-retrain", "dense", "ensemble")] == 3
    assert levels[("dsp-onnx", "dense", "ensemble")] == 2  # C has no dsp-onnx ensemble
    assert levels[("dsp-onnx", "dense", "single")] == 3
    checks = {(t.variant, t.level): t for t in stats.targets(report.summary)}
    ens = checks[("dsp-retrain", "ensemble")]
    assert ens.narrow is not None and ens.narrow.level == "ensemble" and ens.narrow.n == 3
    assert ens.dense.wins + ens.dense.ties + ens.dense.losses == 3
    text = markdown(report)
    claim = text.split("## Against the paper's claim")[1].split("## Per dataset")[0]
    assert "| lite | dsp-retrain | ensemble | 3 | 0.6000 | 0.5800 |" in claim
    assert "## Per dataset, ensembles" in text and "LITETime (lite)" in text
    assert "- lite, ensemble: dense − LITETime" in text


def test_without_a_full_set_of_seeds_the_report_says_so(tmp_path) -> None:
    store = ResultsStore(tmp_path)
    store.bind(replace(CPU_SMALL, seeds=SEEDS))
    for variant in ("dense", "dsp-onnx"):
        _commit(store, "A", variant, 1, HAND[0])
    text = markdown(build_report(tmp_path))
    assert "No ensemble: no (dataset, arch, variant) has every seed (1, 2, 3)." in text


def test_a_one_seed_sweep_has_no_ensemble_and_needs_no_probabilities(tmp_path) -> None:
    store = ResultsStore(tmp_path)
    store.bind(replace(CPU_SMALL, seeds=(1,)))
    for variant in ("dense", "dsp-onnx"):
        _commit(store, "A", variant, 1, HAND[0])
    for path in (tmp_path / "probs").iterdir():  # as in the committed cpu-small folder
        path.unlink()
    report = build_report(tmp_path)
    assert [c.ensemble_accuracy for c in report.cells] == [None, None]
    assert {c.level for c in report.summary} == {"single"}


def test_members_with_different_labels_are_refused() -> None:
    probs = np.eye(2, dtype=np.float32)[[0, 1]]
    with pytest.raises(InputError, match="different test labels"):
        stats.ensemble_accuracy([(probs, np.array([0, 1])), (probs, np.array([1, 1]))])


def test_a_package_value_wins_over_the_files(tmp_path, monkeypatch) -> None:
    from dsp_experiments import published as module

    package = tmp_path / "fakepub"
    (package / "res").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "res" / "acc.csv").write_text("Resamples:,0,1\nA,0.9,0.1\nZ,0.5,0.4\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(module, "PUBLISHED", (("fakepub", "res/acc.csv", "lite"),))
    extra = tmp_path / "extra.csv"
    extra.write_text("arch,dataset,published\nlite,A,0.2\nlite,B,0.3\n")
    assert published_accuracies(extra) == ({"lite": {"A": 0.9, "B": 0.3, "Z": 0.5}}, ())
    monkeypatch.setattr(module, "PUBLISHED", (("no_such_pkg_x", "a.csv", "lite"),))
    values, missing = published_accuracies(None)
    assert values == {} and "no_such_pkg_x is not installed" in missing[0]
    assert published_accuracies(extra)[1] == ()  # the file stands in for lite


@pytest.mark.parametrize(
    ("text", "message"),
    [("arch,dataset\nlite,A\n", "expected a CSV with the columns"),
     ("arch,dataset,published\nlite,A,high\n", "expected accuracies, got 'high'")],
)  # fmt: skip
def test_a_bad_published_file_is_an_input_error(tmp_path, text, message) -> None:
    path = tmp_path / "p.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        published_accuracies(path)

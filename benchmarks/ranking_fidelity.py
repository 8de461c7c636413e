"""Which ranking keeps more of the model at the same depth: ``auto``'s refit-aware losses
against the variance × weight-norm score, at fixed shares of the MACs, on the zoo LITE
models whose test half can certify the default gate.

``posttrain.py`` compares whole ``auto`` runs, whose depth stops at the first rung that
fails: a noisy number (one failure on noise ends the climb; the mean over 13 models moved
by ±5 points between settings that differ only in a ridge of 1e-6 against 1e-4). Here the
depth is fixed instead (``search.climb`` rebound to one rung, as ``ladder_step.py`` does),
both rankings cut every model to the same MACs targets with the same reconstruction,
and the measured test half (``benchmarks/heldout.py``: the other half is the judged
``--eval`` set, unused here but required by ``auto``) gives, per model and target, the
agreement with the input model and the accuracy change: a paired comparison.

* ``refit``    the ranking ``compress`` uses (``selection``: greedy elimination of each
               consumer's inputs, losses after an optimal refit of the kept ones);
* ``variance`` the earlier score var(x_p) · ‖W[:, p]‖², every input alone (the
               selection's fallback where a consumer has no Gram matrix: here, all).

    python benchmarks/ranking_fidelity.py --targets 0.5 0.7 0.85

Writes ``benchmarks/results/ranking_fidelity.{csv,md}``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
from pathlib import Path

import numpy as np
import posttrain

from dsp_deploy.compress import search, selection

RESULTS = Path(__file__).resolve().parent / "results" / "ranking_fidelity"
RANKINGS = ("refit", "variance")


def _fixed_depth(target: float):
    """A ``search.climb`` that asks one depth, the first with cum ≥ target, and keeps it."""

    def climb(passes, cum, *, step: float = search.STEP) -> int:
        n = min(int(np.searchsorted(np.asarray(cum), target - 1e-12)), len(cum) - 2)
        passes(n)
        return n

    return climb


def _variance_only(importance):
    def score(analysis, stats, nodes):
        return importance(analysis, dataclasses.replace(stats, gram={}), nodes)

    return score


def run(path: Path) -> dict[str, object]:
    """One model cut to the depth the current rebinding of ``search.climb`` asks, ranked
    by the current rebinding of ``selection._importance``."""
    result, before, after, labels = posttrain.auto_on_halves(path)
    return {
        "macs_removed": round(1 - result.macs[1] / result.macs[0], 4),
        "agreement": round(float(np.mean(before == after)), 4),
        "delta": round(float(np.mean(after == labels) - np.mean(before == labels)), 4),
    }


def measure(models: list[Path], targets: list[float]) -> list[dict[str, object]]:
    climb, importance = search.climb, selection._importance
    rows = []
    try:
        for target in targets:
            search.climb = _fixed_depth(target)
            for ranking in RANKINGS:
                selection._importance = (
                    importance if ranking == "refit" else _variance_only(importance)
                )
                for path in models:
                    row = {"model": path.name, "target": target, "ranking": ranking}
                    rows.append({**row, **run(path)})
                    print(rows[-1], flush=True)
    finally:
        search.climb, selection._importance = climb, importance
    return rows


def markdown(rows: list[dict[str, object]]) -> str:
    by = {(r["model"], float(r["target"]), r["ranking"]): r for r in rows}  # CSV: strings
    models = sorted({r["model"] for r in rows})
    lines = [
        "# Refit-aware ranking against variance × weight norm, at fixed MACs targets",
        "",
        "`python benchmarks/ranking_fidelity.py` (protocol: its docstring). Agreement and "
        "Δ accuracy on the measured test halves; wins: models where `refit` agrees with the "
        "input model on more measured series than `variance` (ties apart).",
        "",
        "| family | target | models | MACs removed refit | variance | agreement refit "
        "| variance | Δ acc refit | variance | refit wins / ties / losses |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for kind in ("dense", "dsp"):
        for target in sorted({float(r["target"]) for r in rows}):
            pairs = [
                (by[(m, target, "refit")], by[(m, target, "variance")])
                for m in models
                if f"-{kind}-" in m and (m, target, "refit") in by and (m, target, "variance") in by
            ]
            if not pairs:
                continue
            a = np.array([[float(p[k]["agreement"]) for k in (0, 1)] for p in pairs])
            d = np.array([[float(p[k]["delta"]) for k in (0, 1)] for p in pairs])
            macs = np.array([[float(p[k]["macs_removed"]) for k in (0, 1)] for p in pairs])
            wins, losses = int((a[:, 0] > a[:, 1]).sum()), int((a[:, 0] < a[:, 1]).sum())
            lines.append(
                f"| {kind} | {target:.0%} | {len(pairs)} | {macs[:, 0].mean():.1%} "
                f"| {macs[:, 1].mean():.1%} | {a[:, 0].mean():.4f} "
                f"| {a[:, 1].mean():.4f} | {100 * d[:, 0].mean():+.2f} pt "
                f"| {100 * d[:, 1].mean():+.2f} pt | {wins} / {len(pairs) - wins - losses} / "
                f"{losses} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.7, 0.85])
    parser.add_argument("--only", default="lite", help="zoo model-name prefix")
    parser.add_argument("--report", action="store_true", help="rewrite the .md from the .csv")
    args = parser.parse_args(argv)
    if args.report:
        with RESULTS.with_suffix(".csv").open() as handle:
            RESULTS.with_suffix(".md").write_text(markdown(list(csv.DictReader(handle))))
        return 0
    models = [p for p in posttrain.zoo_models(args.only) if posttrain.judged_series(p, True) >= 133]
    rows = measure(models, args.targets)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    RESULTS.with_suffix(".md").write_text(markdown(rows))
    print(f"wrote {RESULTS.with_suffix('.csv')} and {RESULTS.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``dsp-exact``'s λ for Inception: accuracy and compression against the dense net, per λ.

The sweep's ``dsp-exact`` trains with one λ per family (``cpu-small``: 1e-4 for LITE and
Inception, chosen on LITE) and compresses the ONNX model losslessly (``--criterion dead``).
On Inception 1e-4 collapses several nets. This script puts, per dataset, the dense
accuracy beside the ``dsp-exact`` rows of the main sweep (λ = 1e-4), the ``dsp-onnx`` rows
(the paper's λ = 1e-5, the same lossless compression) and the rows of extra sweep folders
run with ``--variants dsp-exact --exact-sparsity λ`` on the same seed and budget, so a
per-family λ can be chosen on numbers. Only CPU rows are compared (the extra folders are
CPU runs); the mean Δ accuracy is over the datasets every λ covers.

    python benchmarks/exact_lambda.py [--arch inception] [--main DIR] [--extra DIR ...]

Result: ``benchmarks/results/exact_lambda_<arch>.md``.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results"


def _rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "results.csv").open(newline="") as f:
        return [r for r in csv.DictReader(f) if (r.get("device") or "cpu") == "cpu"]


def collect(arch: str, main: Path, extras: list[Path]) -> tuple[dict, dict]:
    """({dataset: dense accuracy}, {λ: {dataset: (accuracy, compression)}})."""
    dense: dict[str, float] = {}
    by_lambda: dict[float, dict[str, tuple[float, float]]] = {}
    for folder in [main, *extras]:
        for r in _rows(folder):
            if r["arch"] != arch:
                continue
            if r["variant"] == "dense" and folder == main:
                dense[r["dataset"]] = float(r["accuracy"])
            elif r["variant"] in ("dsp-exact", "dsp-onnx"):
                cell = (float(r["accuracy"]), float(r["compression"]))
                by_lambda.setdefault(float(r["sparsity"]), {})[r["dataset"]] = cell
    return dense, dict(sorted(by_lambda.items()))


def markdown(arch: str, dense: dict, by_lambda: dict) -> str:
    lambdas = list(by_lambda)
    shared = sorted(set(dense).intersection(*(set(v) for v in by_lambda.values())))
    head = ["dataset", "dense"] + [f"λ={lam:g} acc / removed" for lam in lambdas]
    lines = [
        f"# dsp-exact's λ for {arch} (lossless ONNX compression, seed 9409, cpu-small)\n",
        "λ = 1e-5 rows are `dsp-onnx` (the paper's λ), the others `dsp-exact`. Only the "
        f"{len(shared)} datasets every λ covers.\n",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for d in shared:
        cells = [f"{by_lambda[lam][d][0]:.3f} / {by_lambda[lam][d][1]:.0%}" for lam in lambdas]
        lines.append(f"| {d} | {dense[d]:.3f} | " + " | ".join(cells) + " |")
    means = []
    for lam in lambdas:
        deltas = [by_lambda[lam][d][0] - dense[d] for d in shared]
        removed = [by_lambda[lam][d][1] for d in shared]
        worst = min(deltas) if deltas else float("nan")
        means.append(
            f"{statistics.fmean(deltas):+.3f} / {statistics.fmean(removed):.0%} "
            f"(worst {worst:+.3f})"
        )
    lines.append("| **mean Δ acc / removed** | | " + " | ".join(means) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="inception")
    parser.add_argument("--main", type=Path, default=RESULTS / "ucr_cpu-small")
    parser.add_argument("--extra", type=Path, nargs="*", default=None)
    args = parser.parse_args()
    extras = args.extra
    if extras is None:
        extras = sorted(RESULTS.glob(f"exact_{args.arch}_*"))
    dense, by_lambda = collect(args.arch, args.main, extras)
    text = markdown(args.arch, dense, by_lambda)
    out = RESULTS / f"exact_lambda_{args.arch}.md"
    out.write_text(text)
    print(text)
    print(f"written: {out}")


if __name__ == "__main__":
    main()

"""How the ladder's step (``compress.search.STEP``) trades compression for the number of
candidates, on the zoo LITE models whose test half can certify the default gate.

Each rung keeps (1 − step) of the MACs the rung below kept; a smaller step gives a finer
resolution but more rungs, each of which can end the climb by failing on noise. The
protocol is ``posttrain.py --eval-half`` (half of each test split judged, the other half
measured); the step is swapped in for the run by rebinding ``search.climb`` (the search
calls it by name). Which step removes most is decided by the judged halves alone: the
measured halves only report the accuracy that follows.

    python benchmarks/ladder_step.py --steps 0.1 0.2 0.3

Writes ``benchmarks/results/ladder_step.md``.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import numpy as np
import posttrain

from dsp_deploy.compress import search

RESULTS = Path(__file__).resolve().parent / "results" / "ladder_step.md"


def run(path: Path) -> tuple[float, float, int]:
    """(params removed, Δ accuracy on the measured half, candidates) of one auto run."""
    result, before, after, labels = posttrain.auto_on_halves(path)
    removed = 1 - result.params[1] / result.params[0]
    delta = float(np.mean(after == labels) - np.mean(before == labels))
    return removed, delta, len(result.search.candidates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    args = parser.parse_args(argv)
    models = [p for p in posttrain.zoo_models("lite") if posttrain.judged_series(p, True) >= 133]
    climb = search.climb
    lines = [
        "# The ladder's step on the zoo LITE models with ≥ 133 judged series",
        "",
        f"`python benchmarks/ladder_step.py` ({len(models)} models; protocol: its docstring).",
        "",
        "| step | family | params removed (mean) | Δ test (mean) | Δ min | candidates (mean) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for step in args.steps:
        search.climb = functools.partial(climb, step=step)
        rows = {p.stem: run(p) for p in models}
        for kind in ("dense", "dsp"):
            got = [r for stem, r in rows.items() if f"-{kind}-" in stem]
            removed, delta, count = (np.array(c) for c in zip(*got, strict=True))
            lines.append(
                f"| {step:g} | {kind} | {removed.mean():.1%} | {100 * delta.mean():+.2f} pt "
                f"| {100 * delta.min():+.1f} pt | {count.mean():.1f} |"
            )
        print(lines[-2], lines[-1], sep="\n", flush=True)
    search.climb = climb
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

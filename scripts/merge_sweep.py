"""Merge the rows of one sweep folder into another (:mod:`dsp_experiments.merge`).

A thin entry point: exit 0 when merged, 2 when a folder holds no sweep or another budget.

    python scripts/merge_sweep.py SOURCE TARGET
"""

from __future__ import annotations

import argparse
import sys

from dsp_deploy.errors import InputError
from dsp_experiments.merge import merge_folders
from dsp_experiments.results import ResultsStore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("target")
    args = parser.parse_args(argv)
    try:
        added, present = merge_folders(ResultsStore(args.source), ResultsStore(args.target))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{added} rows added to {args.target}, {present} already there")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run a sweep's pending tasks in local worker processes, without Ray.

A thin entry point: it plans exactly as ``dsp-deploy sweep``
(:func:`dsp_experiments.runner.plan_sweep`) and runs the plan with the local executor,
:func:`dsp_experiments.local.execute_locally` (its docstring: scheduling, and what it
lacks against Ray). Exit 0: every pending task committed; 1: some failed.

    python scripts/sweep_without_ray.py --datasets A,B --archs inception --seeds 9409 \\
        --workers 8 --cpus-per-task 2 --gpus-per-task 0.125 -o DIR
"""

from __future__ import annotations

import argparse
import sys
import time

from dsp_experiments.local import execute_locally
from dsp_experiments.protocols import get_protocol
from dsp_experiments.results import ResultsStore
from dsp_experiments.runner import Event, SweepRequest, load_datasets, plan_sweep
from dsp_experiments.tasks import VARIANTS


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    protocol = get_protocol(args.protocol).with_overrides(
        epochs=args.epochs,
        seeds=tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None,
    )
    request = SweepRequest(
        datasets=tuple(args.datasets.split(",")),
        archs=tuple(args.archs.split(",")),
        variants=VARIANTS if args.variants == "all" else tuple(args.variants.split(",")),
        protocol=protocol,
        cpus_per_task=args.cpus_per_task,
        keep_models=args.keep_models,
        gpus_per_task=args.gpus_per_task,
    )
    store = ResultsStore(args.out)
    data = load_datasets(request.datasets)  # before bind() creates the folder
    store.bind(protocol)
    plan = plan_sweep(request, data, store)
    print(f"{len(plan.pending)} tasks pending of {len(plan.tasks)}", flush=True)
    summary = execute_locally(plan, data, store, workers=args.workers, progress=_printer())
    print(f"done: {summary.completed} committed, {len(summary.failed)} failed", flush=True)
    return 1 if summary.failed else 0


def _printer():
    start = time.perf_counter()

    def show(event: Event) -> None:
        outcome = f"failed: {event.error}" if event.error else "committed"
        print(
            f"[{event.done + event.failed}/{event.total}] {'/'.join(event.task.key)}: "
            f"{outcome} ({time.perf_counter() - start:.0f} s elapsed)",
            flush=True,
        )

    return show


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", required=True, help="comma list: names or paths")
    parser.add_argument("--archs", default="lite")
    parser.add_argument("--variants", default="all")
    parser.add_argument("--protocol", default="cpu-small")
    parser.add_argument("--seeds", default=None)
    parser.add_argument("--epochs", type=int, default=None, help="fixed epochs (tests)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cpus-per-task", type=int, default=1)
    parser.add_argument("--gpus-per-task", type=float, default=0.0)
    parser.add_argument("--keep-models", action="store_true")
    parser.add_argument("-o", "--out", required=True)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())

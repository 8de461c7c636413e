"""Run a sweep's pending tasks in local worker processes, without Ray.

For a machine where Ray cannot be installed: the GPU machine lent to our development
sessions has torch, onnx and onnxruntime but no package index. It plans exactly as
``dsp-deploy sweep`` (``runner.plan_sweep``), runs the same ``tasks.run_task`` and commits
through the same ``ResultsStore`` (only this driver writes), so its rows merge into a Ray
sweep's folder like any other run's. What it lacks against Ray: no retries of a worker
that dies (its task simply stays pending for the next run), no cluster.

Scheduling: at most ``--workers`` tasks in flight; among the ready tasks (upstream done)
those that others wait for (dsp-onnx, dsp-retrain) go first, then plan order.

    python scripts/sweep_without_ray.py --datasets A,B --archs inception --seeds 9409 \\
        --workers 8 --cpus-per-task 2 --gpus-per-task 0.125 -o DIR
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

from dsp_deploy.sweep.protocols import get_protocol
from dsp_deploy.sweep.results import Key, ResultsStore, row_key
from dsp_deploy.sweep.runner import (
    SweepRequest,
    _from_disk,
    _log_failure,
    load_datasets,
    plan_sweep,
    upstreams_first,
)
from dsp_deploy.sweep.tasks import UPSTREAM, VARIANTS, Task, TaskOutput, run_task


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
    data = load_datasets(request.datasets)
    store.bind(protocol)
    plan = plan_sweep(request, data, store)
    by_name = {pair[0].name: pair for pair in data.values()}
    rows = {row_key(r): r for r in store.rows()}
    waiting = upstreams_first(plan.pending)
    outputs: dict[Key, TaskOutput] = {}
    failed: set[Key] = set()
    running: dict[Future[TaskOutput], Task] = {}
    start, total = time.perf_counter(), len(waiting)
    print(f"{total} tasks pending of {len(plan.tasks)}", flush=True)
    context = multiprocessing.get_context("spawn")  # CUDA cannot follow a fork
    with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
        while waiting or running:
            unfinished = {t.key for t in waiting} | {t.key for t in running.values()}
            for task in _ready(waiting, unfinished, failed, args.workers - len(running)):
                waiting.remove(task)
                upstream = outputs.get(task.upstream_key) if task.upstream_key else None
                if upstream is None and task.upstream_key in rows:
                    upstream = _from_disk(store, rows, task.upstream_key)
                train, test = by_name[task.dataset]
                running[pool.submit(run_task, task, train, test, upstream)] = task
            if not running:  # every waiting task hangs on a failed upstream
                for task in waiting:
                    _log_failure(store, task, f"upstream {task.upstream_key} failed")
                    failed.add(task.key)
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                task = running.pop(future)
                try:
                    output = future.result()
                except Exception as e:  # the task's own error, or its worker's death
                    _log_failure(store, task, f"{type(e).__name__}: {e}".splitlines()[0])
                    failed.add(task.key)
                    continue
                store.commit(
                    output.row,
                    probabilities=output.probabilities,
                    labels=output.labels,
                    models=output.models,
                )
                outputs[task.key] = output
                done = len(outputs) + len(failed)
                print(
                    f"[{done}/{total}] {'/'.join(task.key)}: accuracy "
                    f"{output.row['accuracy']:.4f}, {output.row['task_seconds']:.0f} s "
                    f"({time.perf_counter() - start:.0f} s elapsed)",
                    flush=True,
                )
    print(f"done: {len(outputs)} committed, {len(failed)} failed", flush=True)
    return 1 if failed else 0


def _ready(waiting: list[Task], unfinished: set[Key], failed: set[Key], slots: int) -> list[Task]:
    """Up to ``slots`` waiting tasks whose upstream is not pending (done, or not part of
    the sweep: the task then trains its own), upstreams of others first."""
    feeds = set(UPSTREAM.values())
    ready = [t for t in waiting if t.upstream_key not in unfinished | failed]
    ready.sort(key=lambda t: t.variant not in feeds)  # stable: plan order within each
    return ready[: max(0, slots)]


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

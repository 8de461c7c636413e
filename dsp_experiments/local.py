"""Run a sweep plan in local worker processes, without Ray: the second executor.

For a machine where Ray cannot be installed (the lent GPU machine has torch, onnx and
onnxruntime but no package index). :func:`execute_locally` takes the same
:class:`~dsp_experiments.runner.Plan` as the Ray executor
(:func:`~dsp_experiments.runner.execute`), runs the same :func:`~dsp_experiments.tasks.run_task`
and commits through the same :class:`~dsp_experiments.results.ResultsStore` (only this
driver writes), so its rows merge into a Ray sweep's folder like any other run's, and
it returns the same :class:`~dsp_experiments.runner.SweepSummary`. What it lacks against
Ray: no retry of a worker that dies (its task is recorded as failed and stays pending for
the next run), no cluster.

Scheduling: at most ``workers`` tasks in flight, in ``spawn``-ed processes (CUDA cannot
follow a fork). Among the ready tasks (upstream done, or not part of this run: the task
then reads it from the folder or trains its own) those that others wait for (dsp-onnx,
dsp-retrain) go first, then plan order. A task whose upstream failed fails too.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

from dsp_deploy.errors import InputError
from dsp_experiments.results import Key, ResultsStore, row_key
from dsp_experiments.runner import (
    DataPairs,
    Event,
    Plan,
    SweepSummary,
    log_failure,
    upstream_from_disk,
    upstreams_first,
)
from dsp_experiments.tasks import UPSTREAM, Task, TaskOutput, run_task

__all__ = ["execute_locally", "ready_tasks"]


def execute_locally(
    plan: Plan,
    data: DataPairs,
    store: ResultsStore,
    *,
    workers: int = 2,
    progress: Callable[[Event], None] | None = None,
) -> SweepSummary:
    """Run ``plan.pending`` in ``workers`` local processes; commit each result as it arrives."""
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    start = time.perf_counter()
    run = _LocalRun(plan, data, store, progress)
    if plan.pending:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            run.drive(pool, workers)
    already = len(plan.tasks) - len(plan.pending)
    seconds = time.perf_counter() - start
    failed = tuple(run.failed.items())
    return SweepSummary(len(plan.tasks), already, run.completed, failed, plan.skipped, seconds)


def ready_tasks(
    waiting: Sequence[Task], unfinished: set[Key], failed: set[Key], slots: int
) -> list[Task]:
    """Up to ``slots`` of ``waiting`` whose upstream is neither unfinished nor failed,
    upstreams of others first (stable: plan order within each)."""
    feeds = set(UPSTREAM.values())
    blocked = unfinished | failed
    ready = [t for t in waiting if t.upstream_key not in blocked]
    ready.sort(key=lambda t: t.variant not in feeds)
    return ready[: max(0, slots)]


class _LocalRun:
    """The driver's state while tasks run: outputs for downstreams, failures, counts."""

    def __init__(
        self,
        plan: Plan,
        data: DataPairs,
        store: ResultsStore,
        progress: Callable[[Event], None] | None,
    ) -> None:
        self.store, self.progress = store, progress
        self.by_name = {pair[0].name: pair for pair in data.values()}
        self.rows: Mapping[Key, Mapping[str, str]] = {row_key(r): r for r in store.rows()}
        self.waiting = upstreams_first(plan.pending)
        self.total = len(self.waiting)
        self.outputs: dict[Key, TaskOutput] = {}
        self.failed: dict[Key, str] = {}
        self.completed = 0

    def drive(self, pool: ProcessPoolExecutor, workers: int) -> None:
        running: dict[Future[TaskOutput], Task] = {}
        while self.waiting or running:
            unfinished = {t.key for t in self.waiting} | {t.key for t in running.values()}
            slots = workers - len(running)
            for task in ready_tasks(self.waiting, unfinished, set(self.failed), slots):
                self.waiting.remove(task)
                running[self._submit(pool, task)] = task
            if not running:  # every waiting task hangs on a failed upstream
                for task in self.waiting:
                    self._fail(task, f"upstream {'/'.join(task.upstream_key)} failed")
                return
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                self._finish(running.pop(future), future)

    def _submit(self, pool: ProcessPoolExecutor, task: Task) -> Future[TaskOutput]:
        upstream = self.outputs.get(task.upstream_key) if task.upstream_key else None
        if upstream is None and task.upstream_key in self.rows:
            upstream = upstream_from_disk(self.store, self.rows, task.upstream_key)
        train, test = self.by_name[task.dataset]
        return pool.submit(run_task, task, train, test, upstream)

    def _finish(self, task: Task, future: Future[TaskOutput]) -> None:
        try:
            output = future.result()
        except Exception as e:  # the task's own error, or its worker's death
            self._fail(task, f"{type(e).__name__}: {e}".splitlines()[0])
            return
        fresh = self.store.commit(
            output.row,
            probabilities=output.probabilities,
            labels=output.labels,
            models=output.models,
        )
        self.outputs[task.key] = output
        self.completed += 1
        self._report(Event(task, self.completed, len(self.failed), self.total, duplicate=not fresh))

    def _fail(self, task: Task, message: str) -> None:
        log_failure(self.store, task, message)
        self.failed[task.key] = message
        self._report(Event(task, self.completed, len(self.failed), self.total, error=message))

    def _report(self, event: Event) -> None:
        if self.progress:
            self.progress(event)

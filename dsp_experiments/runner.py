"""Plan a sweep and run its tasks on Ray, committing each result as it arrives.

Plan. For every requested dataset (loaded once, on the driver) and arch, the protocol
decides whether the dataset is in (``Protocol.admits``) and for how many epochs it trains
(``Protocol.epochs_for``). Tasks are (dataset, arch, variant, seed); those whose key is
already in ``results.csv`` are done and skipped. Order: seed-major (every dataset's
first seed before any second seed), so a partial sweep already covers many datasets.

Dependencies (``tasks.UPSTREAM``, the variant table ``tasks.DEFINED``): a ``dsp-onnx-rule``
task reads its ``dsp-onnx`` task's sparse model, a ``dsp-retrain`` task its trained weights
(``state``), a ``narrow`` task its ``dsp-retrain`` task's parameter count; so dsp-onnx →
dsp-retrain → narrow is a chain. When
the upstream runs in this sweep, its Ray ``ObjectRef`` is the downstream's argument, so Ray
starts the downstream once the upstream has finished; when the upstream finished in an
earlier run, its row and saved models are read back from the folder. A ``required``
upstream (narrow's) missing from both is refused at planning time; any other task without
its upstream trains its own model.

Execution. Local Ray by default (``ray.init(num_cpus=...)``, no dashboard), or an
existing cluster with ``address``; a Ray session that is already initialised in this
process is used as it is and left running. The datasets go into the object store once
(``ray.put``), so workers need the package but not the data. Each task asks for
``cpus_per_task`` CPUs and runs torch and onnxruntime on as many threads, and with
``gpus_per_task`` > 0 that share of a GPU, on which it trains (CUDA; the export,
compression and timing stay on the CPU); a task whose
worker process dies is retried by Ray up to ``retries`` times (``max_retries``), while an
exception raised by the task itself is not retried (it would fail again) but recorded in
``failures.jsonl`` and reported. Only the driver writes to the folder
(:mod:`dsp_experiments.results`), so a retry never duplicates a row.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dsp_deploy.errors import InputError, require
from dsp_experiments.datasets import DatasetShape, shapes_of
from dsp_experiments.protocols import Protocol
from dsp_experiments.results import Key, ResultsStore, row_key
from dsp_experiments.tasks import (
    ARCHS,
    REGISTERED,
    VARIANTS,
    Task,
    TaskOutput,
    run_task,
    saved_kinds,
)

if TYPE_CHECKING:
    from dsp_deploy.data import Dataset

log = logging.getLogger(__name__)

DataPairs = Mapping[str, tuple["Dataset", "Dataset"]]


@dataclass(frozen=True)
class SweepRequest:
    datasets: tuple[str, ...]  # names or paths, as given
    archs: tuple[str, ...]
    variants: tuple[str, ...]
    protocol: Protocol
    cpus_per_task: int = 1
    keep_models: bool = False
    gpus_per_task: float = 0.0  # > 0: tasks train on CUDA, Ray packs 1/this tasks per GPU

    def __post_init__(self) -> None:
        for kind, given, known in (
            ("arch", self.archs, ARCHS),
            ("variant", self.variants, VARIANTS),
        ):
            unknown = [g for g in given if g not in known]
            if unknown or not given:
                raise InputError(f"unknown or no {kind}s {unknown}; expected some of {known}")
        if not self.datasets:
            raise InputError("no datasets given")
        if self.cpus_per_task < 1:
            raise InputError(f"cpus per task must be >= 1, got {self.cpus_per_task}")
        if not 0 <= self.gpus_per_task <= 1:
            raise InputError(f"gpus per task must be in [0, 1], got {self.gpus_per_task}")


@dataclass(frozen=True)
class Plan:
    tasks: tuple[Task, ...]  # every task of the sweep, done or not, in submission order
    pending: tuple[Task, ...]
    skipped: tuple[tuple[str, str, str], ...]  # (dataset, arch, why)


@dataclass(frozen=True)
class Event:
    """Progress: ``done`` and ``failed`` of ``total`` pending tasks after ``task``."""

    task: Task
    done: int
    failed: int
    total: int
    error: str | None = None
    duplicate: bool = False


@dataclass(frozen=True)
class SweepSummary:
    planned: int
    already_done: int
    completed: int
    failed: tuple[tuple[Key, str], ...]
    skipped: tuple[tuple[str, str, str], ...]
    seconds: float


def load_datasets(sources: Sequence[str]) -> dict[str, tuple[Dataset, Dataset]]:
    """Both splits of each source, keyed by the source as given; each must be trainable.

    Every source is read and checked here, on the driver, before any folder is written
    or any worker starts, so a bad dataset costs nothing (``DatasetError``).
    """
    from dsp_deploy.data import load_train_test, require_trainable

    pairs = {s: load_train_test(s) for s in dict.fromkeys(sources)}
    for source, (train, _) in pairs.items():
        require_trainable(train, source)
    return pairs


def plan_sweep(
    request: SweepRequest,
    data: Mapping[str, DatasetShape | tuple[Dataset, Dataset]],
    store: ResultsStore | None,
) -> Plan:
    """Every task of ``request`` and the ones not yet in ``store``; see the module doc.
    ``data``: each source's loaded (train, test) pair, or only its shape (a dry run);
    ``store`` None: nothing is done yet."""
    from dsp_deploy.archs import get_arch

    protocol, tasks, skipped = request.protocol, [], []
    shapes = shapes_of(data)
    for seed in protocol.seeds:
        for source in request.datasets:
            shape = shapes[source]
            n, length = shape.n_train, shape.length
            for arch in request.archs:
                spec = get_arch(arch)
                if not protocol.admits(spec.family, n, length):
                    why = f"step cost {protocol.step_cells(n, length)} over the protocol bound"
                    if seed == protocol.seeds[0]:
                        skipped.append((shape.name, arch, why))
                    continue
                for variant in request.variants:
                    tasks.append(_task(request, shape.name, arch, variant, seed, n, spec))
    done = store.done() if store is not None else frozenset()
    _check_upstreams(tasks, done)
    pending = tuple(t for t in tasks if t.key not in done)
    return Plan(tuple(tasks), pending, tuple(skipped))


def _task(request: SweepRequest, name: str, arch: str, variant: str, seed: int, n: int, spec):
    protocol = request.protocol
    sparsity = REGISTERED[variant].sparsity(spec, protocol)
    return Task(
        dataset=name,
        arch=arch,
        variant=variant,
        seed=seed,
        protocol=protocol.name,
        epochs=protocol.epochs_for(n),
        batch_size=protocol.batch_size,
        sparsity=sparsity,
        threads=request.cpus_per_task,
        latency_runs=protocol.latency_runs,
        keep_models=request.keep_models,
        gpus=request.gpus_per_task,
    )


def _check_upstreams(tasks: Sequence[Task], done: frozenset[Key]) -> None:
    planned = {t.key for t in tasks}
    for t in tasks:
        variant = REGISTERED[t.variant]
        if variant.required and t.upstream_key not in planned | done:
            raise InputError(
                f"variant {t.variant} needs {variant.upstream} for {t.dataset}/{t.arch}/seed "
                f"{t.seed}; add {variant.upstream} to --variants"
            )


def upstream_from_disk(
    store: ResultsStore, rows: Mapping[Key, Mapping[str, str]], key: Key
) -> TaskOutput:
    """A finished upstream's row and the saved models its downstreams read, if present:
    what a task gets for an upstream that finished in an earlier run (any executor)."""
    paths = {kind: store.model_path(key, kind) for kind in saved_kinds(key[2])}
    models = {kind: path.read_bytes() for kind, path in paths.items() if path.exists()}
    empty = np.zeros((0, 0), np.float32)
    return TaskOutput(dict(rows[key]), empty, np.zeros(0, np.int64), models)


def _init_ray(ray: Any, address: str | None, num_cpus: int | None) -> bool:
    """Connect or start Ray; True when this call started it (so it must shut it down).

    ``ray.init`` replaces the SIGTERM handler (its own exits with status 15 and dumps a
    stack); a Python handler the caller installed (the CLI's: SIGTERM unwinds like
    Ctrl-C, so ``execute`` shuts Ray down) is put back.
    """
    if ray.is_initialized():
        return False
    caller = signal.getsignal(signal.SIGTERM)
    try:
        # Ray's own INFO/WARNING lines (instance started, token auth) would break the
        # CLI's stderr contract: progress and one-line errors only.
        quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)
    finally:
        if callable(caller) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, caller)
    return True


def execute(
    plan: Plan,
    data: DataPairs,
    store: ResultsStore,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    retries: int = 3,
    progress: Callable[[Event], None] | None = None,
) -> SweepSummary:
    """Run ``plan.pending`` on Ray and commit each result as it arrives."""
    start = time.perf_counter()
    failed: list[tuple[Key, str]] = []
    completed = 0
    if not plan.pending:
        return SweepSummary(len(plan.tasks), len(plan.tasks), 0, (), plan.skipped, 0.0)
    ray = require("ray", "sweep")
    started = _init_ray(ray, address, num_cpus)
    try:
        # A window of tasks in flight, in plan order (upstreams first): Ray runs ready
        # tasks first, so with everything submitted at once a task that waits for its
        # upstream's result would run only after every independent task of the sweep.
        window = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
        submissions = _submissions(ray, plan, data, store, retries)
        waiting: dict[Any, Task] = {}
        total = len(plan.pending)

        def fill() -> None:
            for ref, task in submissions:
                waiting[ref] = task
                if len(waiting) >= window:
                    return

        fill()
        while waiting:
            (ref,), _ = ray.wait(list(waiting), num_returns=1)
            task = waiting.pop(ref)
            fill()
            try:
                output: TaskOutput = ray.get(ref)
            except ray.exceptions.RayError as e:
                message = _first_line(e)
                failed.append((task.key, message))
                log_failure(store, task, message)
                if progress:
                    progress(Event(task, completed, len(failed), total, error=message))
                continue
            fresh = store.commit(
                output.row,
                probabilities=output.probabilities,
                labels=output.labels,
                models=output.models,
            )
            completed += 1
            if progress:
                progress(Event(task, completed, len(failed), total, duplicate=not fresh))
    finally:
        if started:
            ray.shutdown()
    already = len(plan.tasks) - len(plan.pending)
    seconds = time.perf_counter() - start
    return SweepSummary(len(plan.tasks), already, completed, tuple(failed), plan.skipped, seconds)


def upstreams_first(tasks: Sequence[Task]) -> list[Task]:
    """``tasks`` in order, except that a task's upstreams (those in ``tasks``, up the
    whole chain: dsp-onnx → dsp-retrain → narrow) come first."""
    index = {t.key: t for t in tasks}
    placed: set[Key] = set()
    order: list[Task] = []
    for task in tasks:
        chain: list[Task] = []  # task, its upstream, that one's upstream, ...
        link: Task | None = task
        while link is not None and link.key not in placed:
            placed.add(link.key)
            chain.append(link)
            link = index.get(link.upstream_key)
        order.extend(reversed(chain))
    return order


def _submissions(
    ray: Any, plan: Plan, data: DataPairs, store: ResultsStore, retries: int
) -> Iterator[tuple[Any, Task]]:
    """Submit ``plan.pending`` one task at a time (upstreams first), yielding each ref."""
    remote = ray.remote(run_task)
    rows = {row_key(r): r for r in store.rows()}
    by_name = {pair[0].name: pair for pair in data.values()}
    refs: dict[str, tuple[Any, Any]] = {}
    submitted: dict[Key, Any] = {}
    for task in upstreams_first(plan.pending):
        if task.dataset not in refs:
            train, test = by_name[task.dataset]
            refs[task.dataset] = (ray.put(train), ray.put(test))
        upstream = None
        if task.upstream_key in submitted:
            upstream = submitted[task.upstream_key]
        elif task.upstream_key in rows:
            upstream = upstream_from_disk(store, rows, task.upstream_key)
        ref = remote.options(
            num_cpus=task.threads,
            num_gpus=task.gpus,
            max_retries=retries,
            retry_exceptions=False,
            name=f"sweep:{'/'.join(task.key)}",
        ).remote(task, *refs[task.dataset], upstream)
        submitted[task.key] = ref
        yield ref, task


def _first_line(error: BaseException) -> str:
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    # RayTaskError puts the task's own exception on its last line.
    return lines[-1] if lines else type(error).__name__


def log_failure(store: ResultsStore, task: Task, message: str) -> None:
    """Log ``task``'s failure and append it to ``failures.jsonl`` (any executor's record)."""
    log.error("task %s failed: %s", "/".join(task.key), message)
    store.root.mkdir(parents=True, exist_ok=True)
    entry = {"key": list(task.key), "error": message, "time": time.time()}
    with (store.root / "failures.jsonl").open("a") as f:
        f.write(json.dumps(entry) + "\n")

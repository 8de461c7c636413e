"""Run benchmarks: one fresh worker process per (model, batch, threads, round).

A fresh process per configuration makes its peak RSS belong to that model alone; the
RSS of a process that only imported numpy + onnxruntime is measured once beside it.
Configurations are interleaved so slow drifts of a shared machine hit every model alike:
round r runs every (batch, threads) for every model, the model order rotated by r, and
the timed calls of all rounds are pooled (``results.summarise``).

With several models, one more process per (batch, threads) runs them all in paired
rounds (``worker.measure_paired``): the comparison's latency ratios come from there, as
ratios of adjacent blocks, which a drifting shared host cannot skew as it skews medians
taken in separate processes minutes apart.

The worker (``worker.py``) is started by file path, so the very same file runs natively
(``target="native"``) or under qemu as a Cortex-A72 (``target="pi4-emulated"``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsp_deploy import io
from dsp_deploy.bench import results, worker
from dsp_deploy.cost import input_shapes, model_cost
from dsp_deploy.errors import InputError, ModelError

logger = logging.getLogger(__name__)

TARGETS = ("native", "pi4-emulated")
OPT_LEVELS = ("disable", "basic", "extended", "all")


@dataclass(frozen=True)
class BenchSettings:
    """What to measure; ``runs`` timed calls per configuration, split over ``rounds``."""

    batches: tuple[int, ...] = (1,)
    threads: tuple[int, ...] = (1,)
    runs: int = 100
    warmup: int = 10
    rounds: int = 3
    paired_rounds: int = 20
    paired_block_ms: float = 20.0
    length: int | None = None
    target: str = "native"
    opt_level: str = "all"
    seed: int = 0

    def check(self) -> None:
        """``InputError`` naming the first setting that cannot be used."""
        for name, values in (("batch", self.batches), ("threads", self.threads)):
            if not values or any(v <= 0 for v in values):
                raise InputError(f"{name} must be positive integers, got {list(values)}")
        if self.runs <= 0 or self.warmup < 0 or self.rounds <= 0 or self.paired_rounds <= 0:
            raise InputError(
                f"expected runs > 0, warmup >= 0, rounds > 0, paired rounds > 0; got "
                f"runs={self.runs}, warmup={self.warmup}, rounds={self.rounds}, "
                f"paired rounds={self.paired_rounds}"
            )
        if self.target not in TARGETS:
            raise InputError(
                f"unknown target {self.target!r}; expected one of {', '.join(TARGETS)}"
            )
        if self.opt_level not in OPT_LEVELS:
            raise InputError(
                f"unknown optimisation level {self.opt_level!r}; expected one of "
                f"{', '.join(OPT_LEVELS)}"
            )


@dataclass(frozen=True)
class _Model:
    path: Path
    params: int
    macs: int
    inputs: dict[int, list]  # batch -> worker input spec


Launcher = Callable[[dict[str, Any]], dict[str, Any]]


Progress = Callable[[int, int, str], None]  # (worker processes done, of total, what ran)


def benchmark(
    paths: Sequence[str | os.PathLike],
    settings: BenchSettings,
    progress: Progress | None = None,
) -> results.BenchReport:
    """Measure every model under ``settings``; the first model is the comparison reference.

    ``progress`` is called after each worker process (emulated, one can take minutes).
    """
    settings.check()
    if not paths:
        raise InputError("no model given; expected one or more .onnx files")
    models = [_prepare(Path(p), settings) for p in paths]
    configs = len(settings.batches) * len(settings.threads)
    total = 1 + settings.rounds * configs * len(models) + (configs if len(models) > 1 else 0)
    launch = _counted(_launcher(settings.target), total, progress)
    baseline = launch({"mode": "baseline"})
    per_round = -(-settings.runs // settings.rounds)  # ceil: at least `runs` calls in all
    collected: dict[tuple[int, int, int], list[dict[str, Any]]] = {}
    for r in range(settings.rounds):
        shift = r % len(models)
        order = [*range(shift, len(models)), *range(shift)]
        for batch in settings.batches:
            for threads in settings.threads:
                for i in order:
                    spec = _spec(models[i], batch, threads, per_round, settings)
                    collected.setdefault((i, batch, threads), []).append(launch(spec))
    paired_calls = -(-settings.runs // settings.paired_rounds)
    paired = {}
    if len(models) > 1:
        for batch in settings.batches:
            for threads in settings.threads:
                spec = _paired_spec(models, batch, threads, paired_calls, settings)
                answer = launch(spec)
                paired[(batch, threads)] = results.PairedTimes(
                    answer["clock"],
                    answer["calls"],
                    tuple(tuple(t) for t in answer["ns_per_call"]),
                )
    platform = _platform(baseline["platform"], settings)
    benches = tuple(_model_bench(i, m, collected, platform, settings) for i, m in enumerate(models))
    baseline_mb = baseline["peak_rss_bytes"] / results.MIB
    return results.BenchReport(
        platform=platform,
        baseline_rss_mb=baseline_mb,
        runs=per_round * settings.rounds,
        warmup=settings.warmup,
        rounds=settings.rounds,
        paired_rounds=settings.paired_rounds if paired else 0,
        models=benches,
        comparison=results.compare(benches, baseline_mb, paired),
    )


def _prepare(path: Path, settings: BenchSettings) -> _Model:
    model = io.load_model(path)
    specs = {}
    for batch in settings.batches:
        shapes = input_shapes(model, batch=batch, length=settings.length)
        specs[batch] = [[s.name, s.dtype, list(s.shape)] for s in shapes]
    # shapes static inference lacks (computed pads): those of the inputs the bench times
    sample = worker.draw_inputs(specs[settings.batches[0]], settings.seed)
    cost = model_cost(model, length=settings.length, sample=sample)
    return _Model(path.absolute(), cost.params, cost.macs, specs)


def _spec(m: _Model, batch: int, threads: int, runs: int, s: BenchSettings) -> dict[str, Any]:
    return {
        "mode": "run",
        "model": str(m.path),
        "inputs": m.inputs[batch],
        "threads": threads,
        "runs": runs,
        "warmup": s.warmup,
        "seed": s.seed,
        "opt_level": s.opt_level,
    }


def _paired_spec(
    models: Sequence[_Model], batch: int, threads: int, calls: int, s: BenchSettings
) -> dict[str, Any]:
    return {
        "mode": "paired",
        "models": [{"model": str(m.path), "inputs": m.inputs[batch]} for m in models],
        "threads": threads,
        "calls": calls,
        "block_ms": s.paired_block_ms,
        "rounds": s.paired_rounds,
        "warmup": s.warmup,
        "seed": s.seed,
        "opt_level": s.opt_level,
    }


def _counted(launch: Launcher, total: int, progress: Progress | None) -> Launcher:
    if progress is None:
        return launch
    done = 0
    progress(done, total, "")

    def counted(spec: dict[str, Any]) -> dict[str, Any]:
        nonlocal done
        answer = launch(spec)
        done += 1
        progress(done, total, Path(spec["model"]).name if "model" in spec else _subject(spec))
        return answer

    return counted


def _launcher(target: str) -> Launcher:
    script = str(Path(worker.__file__).absolute())
    if target == "native":
        return _subprocess_launcher([sys.executable, script], None)
    from dsp_deploy import emulator as pi4  # provisioning: only for --target pi4-emulated

    emulator = pi4.ensure_emulator()
    return _subprocess_launcher(emulator.command([script]), emulator.env())


def _subprocess_launcher(prefix: list[str], env: dict[str, str] | None) -> Launcher:
    def launch(spec: dict[str, Any]) -> dict[str, Any]:
        proc = subprocess.run(
            [*prefix, json.dumps(spec)], capture_output=True, text=True, env=env, check=False
        )
        lines = proc.stdout.strip().splitlines()
        try:
            answer = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            tail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            raise ModelError(f"benchmark worker failed on {_subject(spec)}: {tail}") from None
        if "error" in answer:
            raise ModelError(f"onnxruntime cannot run {_subject(spec)}: {answer['error']}")
        logger.debug("worker %s (%s) done", spec["mode"], _subject(spec))
        return answer

    return launch


def _subject(spec: dict[str, Any]) -> str:
    """The model(s) a worker spec runs, for messages."""
    if spec["mode"] == "paired":
        return " + ".join(Path(m["model"]).name for m in spec["models"])
    return spec.get("model", "baseline")


def _platform(seen: dict[str, Any], settings: BenchSettings) -> results.Platform:
    return results.Platform(
        target=settings.target,
        emulated=settings.target == "pi4-emulated",
        graph_optimization_level=settings.opt_level,
        **seen,
    )


def _model_bench(
    index: int,
    m: _Model,
    collected: dict[tuple[int, int, int], list[dict[str, Any]]],
    platform: results.Platform,
    settings: BenchSettings,
) -> results.ModelBench:
    configs = []
    for batch in settings.batches:
        for threads in settings.threads:
            answers = collected[(index, batch, threads)]
            configs.append(
                results.summarise(
                    batch,
                    threads,
                    [a["times_ns"] for a in answers],
                    max(a["peak_rss_bytes"] for a in answers),
                    int(sorted(a["overhead_ns"] for a in answers)[len(answers) // 2]),
                )
            )
    first_input = m.inputs[settings.batches[0]][0][2]
    return results.ModelBench(
        model=str(m.path),
        params=m.params,
        macs=m.macs,
        size_bytes=m.path.stat().st_size,
        input_shape=(1, *first_input[1:]),
        platform=platform,
        results=tuple(configs),
    )

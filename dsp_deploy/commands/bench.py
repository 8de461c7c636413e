"""``dsp-deploy bench``: latency, throughput and memory of ONNX models on onnxruntime."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from dsp_deploy.clihelp import NO_CHECK_EXIT_CODES, add_command

_EMULATED_DEFAULTS = {"runs": 10, "warmup": 2, "rounds": 2, "paired_rounds": 5}  # qemu ~200×
_NATIVE_DEFAULTS = {"runs": 100, "warmup": 10, "rounds": 3, "paired_rounds": 20}


def bench(
    models: Annotated[
        list[Path], typer.Argument(help="ONNX model(s); the first is the reference.")
    ],
    batch: Annotated[
        list[int] | None, typer.Option("--batch", "-b", help="Batch size, repeatable [1].")
    ] = None,
    threads: Annotated[
        list[int] | None, typer.Option("--threads", "-t", help="intra-op threads, repeatable [1].")
    ] = None,
    runs: Annotated[
        int | None, typer.Option(help="Timed calls per configuration [100; emulated 10].")
    ] = None,
    warmup: Annotated[
        int | None, typer.Option(help="Untimed calls first, per process [10; emulated 2].")
    ] = None,
    rounds: Annotated[
        int | None,
        typer.Option(help="Fresh processes per configuration, interleaved [3; emulated 2]."),
    ] = None,
    paired_rounds: Annotated[
        int | None,
        typer.Option(
            help="Rounds of all models back to back in one process, for the ratios "
            "[20; emulated 5]; a round times each model >= 20 ms and >= runs / "
            "paired-rounds calls."
        ),
    ] = None,
    length: Annotated[
        int | None, typer.Option(help="Series length for a dynamic time axis.")
    ] = None,
    target: Annotated[
        str, typer.Option(help="native | pi4-emulated (qemu Cortex-A72).")
    ] = "native",
    opt_level: Annotated[
        str, typer.Option(help="onnxruntime graph optimisation: disable|basic|extended|all.")
    ] = "all",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object on stdout.")
    ] = False,
    plot: Annotated[
        Path | None, typer.Option(help="Write latency vs batch (and ratios) to this PNG.")
    ] = None,
) -> None:
    """Measure p50/p90/p99 latency, throughput and peak RSS; compare models side by side.

    Columns: p50/p90/p99 are latency percentiles in ms over every timed call of all
    rounds; spread is (max - min) of the rounds' medians over p50 (above ~10%: a noisy
    machine, add --rounds); per s is samples per second; RSS the process's peak MiB.

    Ratios to the first model (below 1: faster or smaller): latency is the median, with
    its quartiles, of paired rounds that time every model back to back in one process
    (the fair comparison); p50 is the ratio of the separate processes' p50s; lat/MACs is
    the latency ratio over the MACs ratio, the ideal it would reach (1: as fast as its
    MACs promise); RSS above an empty onnxruntime process. The models table gives the
    params, MACs and size ratios in brackets. A batch or threads column that holds one
    value is said in its table's title.
    """
    from dsp_deploy.bench import report
    from dsp_deploy.bench.results import to_json
    from dsp_deploy.bench.runner import BenchSettings, benchmark
    from dsp_deploy.commands import at_least, check_output
    from dsp_deploy.errors import require
    from dsp_deploy.render import console

    defaults = _EMULATED_DEFAULTS if target == "pi4-emulated" else _NATIVE_DEFAULTS
    settings = BenchSettings(
        batches=tuple(batch or (1,)),
        threads=tuple(threads or (1,)),
        runs=defaults["runs"] if runs is None else runs,
        warmup=defaults["warmup"] if warmup is None else warmup,
        rounds=defaults["rounds"] if rounds is None else rounds,
        paired_rounds=defaults["paired_rounds"] if paired_rounds is None else paired_rounds,
        length=length,
        target=target,
        opt_level=opt_level,
    )
    at_least("--length", length, 1)
    if plot is not None:  # fail before measuring, not after
        check_output(plot, "--plot", inputs=models)
        require("matplotlib", "sweep")
    with _progress() as progress:
        result = benchmark(models, settings, progress)
    if as_json:
        typer.echo(json.dumps(to_json(result), indent=2))
    else:
        report.render(result, console())
    if plot is not None:
        from dsp_deploy.bench.plot import plot_report

        plot_report(result, plot)


@contextmanager
def _progress() -> Iterator[Callable[[int, int, str], None] | None]:
    """A transient bar on stderr when it is a terminal (emulated runs take minutes)."""
    from dsp_deploy.render import console

    err = console(stderr=True)
    if not err.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (
        TextColumn("bench"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("", total=None)

        def update(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=what)

        yield update


def register(app: typer.Typer) -> None:
    add_command(
        app,
        "bench",
        bench,
        panels={
            "What to measure": ("batch", "threads", "length", "target", "opt_level"),
            "How long": ("runs", "warmup", "rounds", "paired_rounds"),
            "Output": ("as_json", "plot"),
        },
        examples=(
            "dsp-deploy bench model.onnx model.pruned.onnx -b 1 -b 64",
            "dsp-deploy bench a.onnx b.onnx --target pi4-emulated --plot bench.png",
        ),
        exits=NO_CHECK_EXIT_CODES,
    )

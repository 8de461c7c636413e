"""``dsp-deploy eval MODEL --dataset NAME|PATH``: accuracy of an ONNX model, no torch."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Annotated

import typer

from dsp_deploy.clihelp import NO_CHECK_EXIT_CODES, add_command

if TYPE_CHECKING:
    from dsp_deploy.evaluate import EvalResult


_MAX_CLASS_ROWS = 20  # more classes: the summary row only


def register(app: typer.Typer) -> None:
    add_command(
        app,
        "eval",
        eval_command,
        examples=("dsp-deploy eval model.onnx -d GunPont", "dsp-deploy eval model.onnx -d t.npz"),
        exits=NO_CHECK_EXIT_CODES,
    )


def eval_command(
    model: Annotated[
        str, typer.Argument(metavar="MODEL", help="ONNX classifier (.onnx).", show_default=False)
    ],
    dataset: Annotated[
        str,
        typer.Option(
            "--dataset",
            "-d",
            metavar="NAME|PATH",
            help="UCR/aeon name, or a path: <Name>_TRAIN.ts/.tsv, a <Name>/ folder, an .npz.",
            show_default=False,
        ),
    ],
    split: Annotated[str, typer.Option("--split", help="test | train.")] = "test",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Series per run.")] = 256,
    threads: Annotated[
        int | None, typer.Option("--threads", help="onnxruntime intra-op threads.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Accuracy of an ONNX classifier on a dataset split (runs on onnxruntime)."""
    # Imported here so `dsp-deploy --help` does not load onnxruntime.
    from dsp_deploy.evaluate import evaluate

    result = evaluate(model, dataset, split, batch_size=batch_size, threads=threads)
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
    else:
        _render(result)


def _render(result: EvalResult) -> None:
    from rich.table import Table

    from dsp_deploy.render import console

    table = Table(title=f"{result.model} on {result.dataset} ({result.split})")
    for column in ("class", "series", "correct", "accuracy"):
        table.add_column(column, justify="left" if column == "class" else "right")
    if len(result.classes) <= _MAX_CLASS_ROWS:
        for i, (name, recall) in enumerate(
            zip(result.classes, result.per_class_accuracy(), strict=True)
        ):
            row = result.confusion[i]
            shown = "-" if math.isnan(recall) else f"{recall:.4f}"
            table.add_row(name, str(sum(row)), str(row[i]), shown)
    table.add_section()
    table.add_row("all", str(result.n), str(result.correct), f"{result.accuracy:.4f}", style="bold")
    out = console()
    out.print(table)
    out.print(f"{result.seconds * 1000:.1f} ms on onnxruntime")

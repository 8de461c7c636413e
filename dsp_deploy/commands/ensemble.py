"""``dsp-deploy ensemble MEMBER.onnx MEMBER.onnx [...] -o OUT.onnx``: one ensemble ONNX.

The output computes the mean of the members' probabilities (``dsp_deploy.ensemble``), is
checked on 32 seeded random inputs against the members run one by one, then written
atomically. Exit 0: written and verified; 1: the check failed, nothing written; 2: bad
input (fewer than 2 members, an unreadable member, members that disagree, a bad output
path), nothing written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dsp_deploy.clihelp import EXIT_CODES, add_command
from dsp_deploy.commands import check_output, naming

if TYPE_CHECKING:
    from dsp_deploy.cost import ModelCost

VERIFY_SAMPLES = 32
VERIFY_ATOL = 1e-6  # float32 mean of M probabilities: measured within 6e-8


def register(app: typer.Typer) -> None:
    add_command(
        app,
        "ensemble",
        ensemble_command,
        examples=("dsp-deploy ensemble a.onnx b.onnx c.onnx -o ensemble.onnx",),
        exits={**EXIT_CODES, 1: "the ensemble's check failed (nothing written)"},
    )


def ensemble_command(
    members: Annotated[
        list[str],
        typer.Argument(metavar="MODEL", help="Member classifiers (2 or more).", show_default=False),
    ],
    output: Annotated[
        str, typer.Option("-o", "--output", help="Ensemble ONNX file to write.", show_default=False)
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Combine member classifiers into one ONNX model: the mean of their probabilities."""
    from dsp_deploy import io
    from dsp_deploy.cost import model_cost
    from dsp_deploy.ensemble import combine, signature, verify
    from dsp_deploy.errors import InputError, VerificationError

    if len(members) < 2:
        raise InputError(f"an ensemble needs at least 2 member models; got {len(members)}")
    # Before loading anything: a bad -o fails in milliseconds.
    out = check_output(output, "--output", inputs=members, suffix=".onnx")
    loaded = []
    costs = []
    for path in members:
        with naming(path):
            model = io.load_model(path)
            costs.append(model_cost(model))
        loaded.append(model)
    ensemble = combine(loaded, labels=members)
    check = verify(loaded, ensemble, samples=VERIFY_SAMPLES, atol=VERIFY_ATOL)
    if check.failure is not None:
        raise VerificationError(check.failure)
    total = model_cost(ensemble)
    io.save_model(ensemble, out, inputs=members)
    classes = signature(ensemble, str(out)).classes
    summary = _summary(members, costs, total, out, check.max_abs_diff, classes)
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        _render(summary)


def _summary(
    paths: list[str],
    costs: list[ModelCost],
    total: ModelCost,
    out: Path,
    diff: float,
    classes: int,
) -> dict[str, Any]:
    return {
        "output": str(out),
        "members": [
            {"path": p, "params": c.params, "macs": c.macs}
            for p, c in zip(paths, costs, strict=True)
        ],
        "classes": classes,
        "params": total.params,
        "macs": total.macs,
        "max_abs_diff": diff,
    }


def _render(summary: dict[str, Any]) -> None:
    from rich.table import Table

    from dsp_deploy.render import console as make_console

    table = Table(title=f"ensemble → {summary['output']}")
    for column in ("member", "params", "MACs", "classes"):
        table.add_column(column, justify="left" if column == "member" else "right")
    for m in summary["members"]:
        table.add_row(m["path"], f"{m['params']:,}", f"{m['macs']:,}", str(summary["classes"]))
    table.add_section()
    table.add_row(
        "total",
        f"{summary['params']:,}",
        f"{summary['macs']:,}",
        str(summary["classes"]),
        style="bold",
    )
    console = make_console()
    console.print(table)
    console.print(
        f"verified on {VERIFY_SAMPLES} random inputs: max |Δ| {summary['max_abs_diff']:.3g} "
        f"against the mean of the members' probabilities; wrote {summary['output']}"
    )

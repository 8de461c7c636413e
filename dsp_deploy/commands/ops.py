"""``dsp-deploy ops [--json]``: the op table ``compress`` and ``inspect`` follow.

One row per ONNX op type the channel analysis understands (``compress.ops.OPS``): what
happens to the channels that flow through it. Any op not listed pins the channels it
touches, and ``inspect`` names it as the reason.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from dsp_deploy.clihelp import add_command


def register(app: typer.Typer) -> None:
    add_command(app, "ops", ops_command, examples=("dsp-deploy ops --json",), exits={0: "done"})


def ops_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """The ops whose channels compress can follow, and what each does to them."""
    from dsp_deploy.compress.ops import table

    rows = table()
    if as_json:
        typer.echo(json.dumps({"ops": [{"op": op, "channels": doc} for op, doc in rows]}))
        return
    from rich.table import Table

    from dsp_deploy.render import console

    view = Table(title="ops compress follows (any other op pins its channels)")
    view.add_column("op")
    view.add_column("channels")
    for op, doc in rows:
        view.add_row(op, doc)
    console().print(view)

"""``dsp-deploy metadata MODEL``: what every tool will do with a model, and how to change it.

Without options it shows the model's signature (``dsp_deploy.declare.describe``): input
name, shape and type, C, L, classes, normalisation and output kind, each with where it
came from (``metadata``, ``graph``, ``detected`` on a probe input, or ``default``). With
``--classes``, ``--normalisation``, ``--output`` or ``--length`` and ``-o OUT.onnx`` it
writes a copy carrying those keys (``dsp_deploy.declare.declare``) and shows the copy's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dsp_deploy.clihelp import NO_CHECK_EXIT_CODES, add_command

if TYPE_CHECKING:
    from dsp_deploy.signature import ModelSignature


def register(app: typer.Typer) -> None:
    add_command(
        app,
        "metadata",
        metadata_command,
        panels={"Declare (writes a copy)": ("classes", "normalisation", "output", "length", "out")},
        examples=(
            "dsp-deploy metadata mine.onnx",
            "dsp-deploy metadata mine.onnx --classes a,b --normalisation znorm -o m.onnx",
        ),
        exits=NO_CHECK_EXIT_CODES,
    )


def metadata_command(
    model: Annotated[
        Path, typer.Argument(metavar="MODEL", help="ONNX classifier (.onnx).", show_default=False)
    ],
    classes: Annotated[
        str | None,
        typer.Option(metavar="A,B,...", help="Class names in output order, comma-separated."),
    ] = None,
    normalisation: Annotated[
        str | None,
        typer.Option(
            metavar="znorm|none",
            help="How the input is prepared: znorm = each series (x - mean) / std; none = raw.",
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(metavar="probabilities|logits", help="What the first output holds."),
    ] = None,
    length: Annotated[
        int | None, typer.Option(metavar="N", help="Series length, for a dynamic time axis.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", metavar="OUT.onnx", help="Where the copy goes."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show the model's inputs, classes, normalisation and output kind; -o writes a copy
    that declares them (the input is never changed).
    """
    from dsp_deploy import declare as meta
    from dsp_deploy.commands import check_output
    from dsp_deploy.errors import OptionError

    settings = {"classes": classes, "normalisation": normalisation, "output": output}
    given = {k: v for k, v in {**settings, "length": length}.items() if v is not None}
    if given and out is None:
        raise OptionError(f"--{', --'.join(given)} need -o OUT.onnx: the input is never changed")
    if out is None:
        sig = meta.describe(model)
    else:
        check_output(out, "-o", inputs=[model])
        names = None if classes is None else classes.split(",")
        sig = meta.declare(
            model, out, classes=names, normalisation=normalisation, output=output, length=length
        )
    shown = out if out is not None else model
    if as_json:
        typer.echo(json.dumps(as_dict(sig, shown, written=out is not None)))
    else:
        _render(sig, shown, written=out is not None)


def as_dict(sig: ModelSignature, path: Path, *, written: bool = False) -> dict[str, Any]:
    """JSON-ready: the values, ``from`` (each one's origin) and ``undeclared`` keys."""
    from dsp_deploy.signature import undeclared

    spec = sig.inputs[0]
    return {
        "model": str(path),
        "written": written,
        "input": {"name": spec.name, "dtype": spec.dtype, "shape": list(spec.shape or ())},
        "output": {"name": sig.output_name, "shape": list(sig.outputs[0].shape or ())},
        "channels": sig.channels,
        "length": sig.length,
        "batch": sig.batch,
        "classes": None if sig.classes is None else list(sig.classes),
        "class_count": sig.class_count,
        "normalisation": sig.normalisation,
        "output_kind": sig.output_kind,
        "from": dict(sig.origins),
        "undeclared": list(undeclared(sig)),
    }


def _render(sig: ModelSignature, path: Path, *, written: bool) -> None:
    from rich.table import Table

    from dsp_deploy.render import console
    from dsp_deploy.signature import default_warning

    table = Table(title=f"{'wrote ' if written else ''}{path}")
    for column in ("", "value", "from"):
        table.add_column(column)
    spec = sig.inputs[0]
    table.add_row("input", f"{spec.name} {_shape(spec.shape)} {spec.dtype}", "graph")
    table.add_row("output", f"{sig.output_name} {_shape(sig.outputs[0].shape)}", "graph")
    for label, field, value in _rows(sig):
        table.add_row(label, value, sig.origin(field))
    out = console()
    out.print(table)
    hint = default_warning(sig, str(path))
    if hint is not None:
        out.print(hint, markup=False, highlight=False)


def _rows(sig: ModelSignature) -> tuple[tuple[str, str, str], ...]:
    classes = (
        ", ".join(sig.classes)
        if sig.classes is not None
        else f"{sig.class_count or '?'} (shown as column indices)"
    )
    normalisation = "none: raw input" if not sig.normalises else f"{sig.normalisation}"
    output = sig.output_kind + (": a softmax is applied" if sig.logits else "")
    return (
        ("channels C", "channels", _unknown(sig.channels)),
        ("length L", "length", _unknown(sig.length)),
        ("classes", "classes", classes),
        ("normalisation", "normalisation", normalisation),
        ("output", "output_kind", output),
    )


def _unknown(value: int | None) -> str:
    return "any (dynamic)" if value is None else str(value)


def _shape(dims: tuple[Any, ...] | None) -> str:
    if dims is None:
        return "(unknown rank)"
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"

"""``dsp-deploy inspect MODEL [--calib NPZ] [--json]``: layers, channel groups, pins.

With calibration: per-unit activation statistics at every channel-mixing consumer that
reads the unit (one row per consumer and input position), and which units the lossless
``dead`` criterion would remove.

MACs come from static shapes; where neither onnx's nor onnxruntime's shape inference
knows one (a Pad or Reshape whose amounts are computed at run time), ``--calib`` counts
them from the shapes seen on its first sample, and without it those nodes' MACs are
shown as unknown ("?"; ``macs_unknown`` in ``--json``) and the total counts the rest.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from dsp_deploy.compress.inspection import Inspection


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect_command)


def inspect_command(
    model: Annotated[str, typer.Argument(help="ONNX model (.onnx).", show_default=False)],
    calib: Annotated[
        str | None,
        typer.Option("--calib", help="Calibration .npz for statistics (as for compress)."),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Samples per run.")] = 64,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Per-layer channels, params, MACs; channel groups and what pins them."""
    from dsp_deploy import io
    from dsp_deploy.commands import naming, positive
    from dsp_deploy.compress.inspection import inspect_model

    positive("--batch-size", batch_size)
    loaded = io.load_model(model)
    calibration = None if calib is None else io.load_calibration(calib, loaded)
    with naming(model):
        result = inspect_model(loaded, calibration, batch_size=batch_size)
    if as_json:
        typer.echo(json.dumps(_as_dict(result, model)))
    else:
        _render(result, model)


def _as_dict(result: Inspection, model: str) -> dict:
    return {
        "model": model,
        "params": result.params,
        "weight_bytes": result.bytes,
        "macs": result.macs,
        "macs_unknown": list(result.unknown_macs),
        "layers": [
            {"name": r.name, "channels": r.channels[0], "params": r.params[0], "macs": r.macs[0]}
            for r in result.layers
        ],
        "other": dict(zip(("params", "macs"), _other(result), strict=True)),
        "groups": [
            {
                "index": g.index,
                "sources": list(g.sources),
                "channels": g.channels,
                "consumers": list(g.consumers),
                "pinned": g.pinned,
                "blocked_by": g.blocked_by,
                "dead": result.dead_units(g.index),
            }
            for g in result.groups
        ],
        "units": [
            {
                "group": u.group,
                "unit": u.unit,
                "consumer": u.consumer,
                "tensor": u.tensor,
                "position": u.position,
                "max_abs": u.max_abs,
                "mean": u.mean,
                "energy": u.energy,
                "active": u.active,
                "dead": u.dead,
                "kept_by": u.kept_by,
            }
            for u in result.units
        ],
    }


def _other(result: Inspection) -> tuple[int, int]:
    """Params and MACs outside the channel-creating layers (depthwise convs, heads, BN), so
    the table adds up to its title."""
    return (
        result.params - sum(r.params[0] for r in result.layers),
        result.macs - sum(r.macs[0] for r in result.layers),
    )


def _render(result: Inspection, model: str) -> None:
    from rich.table import Table

    from dsp_deploy.render import console as make_console

    console = make_console()
    at_least = "≥ " if result.unknown_macs else ""
    layers = Table(
        title=f"{model}: {result.params:,} params ({result.bytes:,} bytes), "
        f"{at_least}{result.macs:,} MACs/sample"
    )
    for column in ("layer", "channels", "params", "MACs"):
        layers.add_column(column, justify="left" if column == "layer" else "right")
    unknown = set(result.unknown_macs)
    for r in result.layers:
        macs_text = "?" if r.name in unknown else f"{r.macs[0]:,}"
        layers.add_row(r.name, str(r.channels[0]), f"{r.params[0]:,}", macs_text)
    params, macs = _other(result)
    layers.add_row("(every other node)", "", f"{params:,}", f"{macs:,}", style="dim")
    console.print(layers)
    if result.unknown_macs:
        console.print(
            f"MACs unknown (no static shape; --calib counts them from a sample) for: "
            f"{', '.join(result.unknown_macs)}"
        )
    groups = Table(title="channel groups")
    for column in ("#", "sources", "channels", "consumers", "dead", "pinned by"):
        groups.add_column(column)
    for g in result.groups:
        dead = result.dead_units(g.index)
        groups.add_row(
            str(g.index),
            ", ".join(g.sources),
            str(g.channels),
            ", ".join(g.consumers),
            str(dead) if result.units else "-",
            f"{g.pinned}: {g.blocked_by}" if g.blocked_by else "",
        )
    console.print(groups)
    kept = sorted({(u.unit, u.kept_by) for u in result.units if u.kept_by})
    for unit, reason in kept:  # dead, but a rule keeps them (never empty a layer, ...)
        console.print(f"unit {unit} is dead but kept: {reason}")

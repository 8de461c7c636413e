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

from dsp_deploy.clihelp import NO_CHECK_EXIT_CODES, add_command
from dsp_deploy.render import Folded, fold_one_channel

if TYPE_CHECKING:
    from dsp_deploy.compress.groups import ChannelGroup
    from dsp_deploy.compress.inspection import Inspection


def register(app: typer.Typer) -> None:
    add_command(
        app,
        "inspect",
        inspect_command,
        examples=("dsp-deploy inspect model.onnx", "dsp-deploy inspect model.onnx --calib c.npz"),
        exits=NO_CHECK_EXIT_CODES,
    )


def inspect_command(
    model: Annotated[str, typer.Argument(help="ONNX model (.onnx).", show_default=False)],
    calib: Annotated[
        str | None,
        typer.Option(
            "--calib",
            help="Calibration .npz (as for compress): count the dead units per group; "
            "--json also gives each unit's activation statistics.",
        ),
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


_LAYERS = ("layer", "channels", "params", "MACs")
_GROUPS = ("#", "sources", "channels", "consumers", "dead", "pinned by")


def _layer_cells(result: Inspection) -> list[list[str]]:
    """Per layer (LITE's one-channel convs folded into one row), then every other node."""
    unknown = set(result.unknown_macs)
    rows = fold_one_channel(result.layers, lambda r: r.channels[0] == 1)
    cells = []
    for r in rows:
        if isinstance(r, Folded):
            macs = r.total(lambda x: x.macs[0])
            cells.append(
                [r.label(lambda x: x.name), f"{len(r.rows)} × 1",
                 f"{r.total(lambda x: x.params[0]):,}", f"{macs:,}"]
            )  # fmt: skip
        else:
            macs_text = "?" if r.name in unknown else f"{r.macs[0]:,}"
            cells.append([r.name, str(r.channels[0]), f"{r.params[0]:,}", macs_text])
    params, macs = _other(result)
    return [*cells, ["(every other node)", "", f"{params:,}", f"{macs:,}"]]


def _names(names: tuple[str, ...] | list[str]) -> str:
    """The first name, and how many more (the table is read across; --json lists all)."""
    return names[0] + (f" +{len(names) - 1}" if len(names) > 1 else "") if names else ""


def _group_cells(result: Inspection) -> list[list[str]]:
    """Per channel group; one-channel groups that nothing pins folded into one row."""

    def plain(g: ChannelGroup) -> bool:
        return g.channels == 1 and not g.blocked_by

    def dead(gs: tuple[ChannelGroup, ...]) -> str:
        return str(sum(result.dead_units(g.index) for g in gs)) if result.units else "-"

    cells = []
    for g in fold_one_channel(result.groups, plain):
        if isinstance(g, Folded):
            first, last = g.rows[0].index, g.rows[-1].index
            sources = g.label(lambda x: ", ".join(x.sources))
            consumers = sorted({c for x in g.rows for c in x.consumers})
            cells.append(
                [f"{first}–{last}", sources, f"{len(g.rows)} × 1", _names(consumers),
                 dead(g.rows), ""]
            )  # fmt: skip
        else:
            pinned = f"{g.pinned}: {g.blocked_by}" if g.blocked_by else ""
            cells.append(
                [str(g.index), _names(g.sources), str(g.channels), _names(g.consumers),
                 dead((g,)), pinned]
            )  # fmt: skip
    return cells


def _table(title: str, header: tuple[str, ...], cells: list[list[str]], dim_last: bool = False):
    from rich.table import Table

    table = Table(title=title)
    for column in header:
        numeric = column in ("channels", "params", "MACs", "dead")
        table.add_column(column, justify="right" if numeric else "left", no_wrap=True)
    for i, row in enumerate(cells):
        table.add_row(*row, style="dim" if dim_last and i == len(cells) - 1 else None)
    return table


def _render(result: Inspection, model: str) -> None:
    from dsp_deploy.render import console as make_console
    from dsp_deploy.render import fit

    console = make_console()
    at_least = "≥ " if result.unknown_macs else ""
    title = (
        f"{model}: {result.params:,} params ({result.bytes:,} bytes), "
        f"{at_least}{result.macs:,} MACs/sample"
    )
    layers = fit(_LAYERS, _layer_cells(result), [0], console.width)
    console.print(_table(title, _LAYERS, layers, dim_last=True))
    if result.unknown_macs:
        console.print(
            f"MACs unknown (no static shape; --calib counts them from a sample) for: "
            f"{', '.join(result.unknown_macs)}"
        )
    header, cells = _GROUPS, _group_cells(result)
    if not any(row[-1] for row in cells):  # nothing pinned: no empty column
        header, cells = header[:-1], [row[:-1] for row in cells]
    groups = fit(header, cells, [1, 3, 5][: len(header) - 3], console.width)
    console.print(_table("channel groups", header, groups))
    kept = sorted({(u.unit, u.kept_by) for u in result.units if u.kept_by})
    for unit, reason in kept:  # dead, but a rule keeps them (never empty a layer, ...)
        console.print(f"unit {unit} is dead but kept: {reason}")
    if result.units:
        console.print('per-unit activation statistics: --json ("units")')

"""``dsp-deploy compress MODEL --calib NPZ``: prune dead or weak channels, verify, write atomically.

Exit 0: written (and verified, or ``--force``); 1: a gate failed, nothing written;
2: bad input (model, calibration file, options, output path). A quantized model
(QLinearConv, ConvInteger, or a Conv of DequantizeLinear weights) is bad input: only
float convs are pruned, so compress the float model, then quantize (exit 2, nothing
written).
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dsp_deploy.commands import check_output, naming
from dsp_deploy.options import AUTO, COMPENSATIONS, CRITERIA, CompressOptions, with_changes
from dsp_deploy.render_auto import auto_progress, render_search

DEFAULTS = CompressOptions()  # the library's defaults, shown and used as the CLI's
OPTION_KEYS = frozenset({*(f.name for f in fields(CompressOptions)), "reconstruct"})

if TYPE_CHECKING:
    from dsp_deploy.compress.pipeline import CompressResult


def register(app: typer.Typer) -> None:
    app.command("compress")(compress_command)


NOTHING_TO_PRUNE = (
    "nothing to prune: no channel is zero (or a foldable constant) on every calibration "
    "sample, so the model is written unchanged. Normally trained models rarely have dead "
    "channels: train with a sparsity loss (dsp-deploy train --sparsity), or try the lossy "
    "--criterion dsp (gated on held-out samples)."
)


def default_output(model: str) -> Path:
    """``<stem>.pruned.onnx`` beside the input model."""
    p = Path(model)
    return p.with_name(f"{p.stem}.pruned.onnx")


def compress_command(
    model: Annotated[str, typer.Argument(help="ONNX model (.onnx).", show_default=False)],
    calib: Annotated[
        str,
        typer.Option(
            "--calib",
            help="Calibration .npz: one array per model input, batch first, optional labels y. "
            "Each array is cast to its input's dtype when no value changes: floats finite and "
            "in range (no overflow to inf); integers into float16/32/64 when exact (|v| <= "
            "2**11/2**24/2**53); floats into integer inputs when whole and in range; bool "
            "inputs take bool or 0/1. Anything else is refused.",
        ),
    ],
    output: Annotated[
        str | None, typer.Option("-o", "--output", help="Output path [<stem>.pruned.onnx].")
    ] = None,
    criterion: Annotated[
        str,
        typer.Option(
            "--criterion",
            help=f"{' | '.join(CRITERIA)}: lossless | paper's rule | the deepest cut of one "
            "global ranking that passes the gates (no ratio; reconstructs every consumer).",
        ),
    ] = DEFAULTS.criterion,
    threshold: Annotated[
        float, typer.Option("--threshold", help="dead: also drop channels with rms <= T·layer rms.")
    ] = DEFAULTS.threshold,
    min_count: Annotated[
        int | None, typer.Option("--min-count", help="dsp: keep n_c > this [1 LITE, else 0].")
    ] = None,
    compensation: Annotated[
        str,
        typer.Option(
            "--compensation",
            help=f"dsp, auto: {' | '.join(COMPENSATIONS)} (auto: lstsq means reconstruct).",
        ),
    ] = DEFAULTS.compensation,
    reconstruct: Annotated[
        bool,
        typer.Option(
            "--reconstruct",
            help="Deprecated alias of --compensation lstsq (the default); an error with "
            "another --compensation.",
        ),
    ] = False,
    holdout: Annotated[
        float,
        typer.Option(
            "--holdout",
            help="Lossy criteria (dsp, --threshold > 0): fraction held out to gate on. "
            "The lossless default decides on, and reproduces, every sample.",
        ),
    ] = DEFAULTS.holdout,
    folds: Annotated[
        int,
        typer.Option(
            "--folds",
            help="Lossless: report channels that wake on a fold left out of the decision, "
            "and max |Δ| there (a report, not a gate; 0: off).",
        ),
    ] = DEFAULTS.folds,
    atol: Annotated[
        float | None,
        typer.Option("--atol", help="Absolute tolerance [1e-5; 1e-3 for float16 outputs]."),
    ] = None,
    rtol: Annotated[
        float | None,
        typer.Option("--rtol", help="Relative tolerance [1e-4; 1e-2 for float16 outputs]."),
    ] = None,
    min_agreement: Annotated[
        float, typer.Option("--min-agreement", help="Held-out argmax agreement gate.")
    ] = DEFAULTS.min_agreement,
    max_accuracy_drop: Annotated[
        float, typer.Option("--max-accuracy-drop", help="Accuracy drop gate (with labels).")
    ] = DEFAULTS.max_accuracy_drop,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Samples per run.")
    ] = DEFAULTS.batch_size,
    threads: Annotated[
        int | None, typer.Option("--threads", help="onnxruntime intra-op threads.")
    ] = None,
    align: Annotated[
        int,
        typer.Option("--align", help="Round kept channels per conv up to a multiple (8: x86)."),
    ] = DEFAULTS.align,
    conv2d: Annotated[
        bool,
        typer.Option("--conv2d", help="Write 1-D convs that x86 blocked kernels take as 2-D."),
    ] = False,
    fuse: Annotated[
        bool,
        typer.Option(
            "--fuse/--no-fuse",
            help="Fold BatchNormalization into, and move Relu before, a Concat of Convs.",
        ),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Write even if a gate fails.")] = False,
    verbose: Annotated[
        bool, typer.Option("-v", "--verbose", help="Print the per-layer table on failure too.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Remove dead (or, with --criterion dsp, weak) channels and prove the outputs.

    Float convs only: a quantized model exits 2 (compress first, then quantize).
    """
    given = dict(locals())  # first: the parameters, named as CompressOptions' fields
    from dsp_deploy import io
    from dsp_deploy.compress.pipeline import compress
    from dsp_deploy.errors import VerificationError

    # Validated before any file is read: a bad value costs no model load.
    options = with_changes(None, {k: v for k, v in given.items() if k in OPTION_KEYS})
    loaded = io.load_model(model)
    # Before the calibration pass, not after it: a bad -o must not cost a whole run.
    out = check_output(output or default_output(model), "--output", inputs=[model, calib])
    calibration = io.load_calibration(calib, loaded)
    with naming(model), auto_progress(options.criterion == AUTO and not as_json) as progress:
        result = compress(loaded, calibration, options, progress=progress)
    write = result.verified or force
    if write:
        io.save_model(result.model, out, inputs=[model, calib])
    if as_json:
        typer.echo(json.dumps(_as_dict(result, model, out, write)))
    elif write or verbose:
        _render(result, model, out, write)
    if not result.verified and not force:
        raise VerificationError(f"{model}: not written ({'; '.join(result.failures)})")


def _as_dict(result: CompressResult, model: str, out: Path, written: bool) -> dict:
    return {
        "input": model,
        "output": str(out) if written else None,
        "verified": result.verified,
        "changed": result.changed,
        "criterion": result.plan.criterion,
        "max_abs_diff": result.decision.max_abs_diff,
        "params": list(result.params),
        "macs": list(result.macs),
        "channels": {r.name: list(r.channels) for r in result.layers},
        "layers": [
            {
                "name": r.name,
                "channels": list(r.channels),
                "params": list(r.params),
                "macs": list(r.macs),
            }
            for r in result.layers
        ],
        "decision": result.decision.as_dict(),
        "holdout": None if result.holdout is None else result.holdout.as_dict(),
        "folds": None if result.folds is None else result.folds.as_dict(),
        "random_inputs": None if result.random is None else result.random.as_dict(),
        "failures": list(result.failures),
        "seconds": result.seconds,
        "search": None if result.search is None else result.search.as_dict(),
    }


def _pct(before: int, after: int) -> str:
    return f"{100 * (after - before) / before:+.1f}%" if before else "-"


def _render(result: CompressResult, model: str, out: Path, written: bool) -> None:
    from rich.table import Table

    from dsp_deploy.render import console as make_console

    table = Table(title=f"compress {model} ({result.plan.criterion})")
    for column in ("layer", "channels", "params", "MACs"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    for r in result.layers:
        style = "bold" if r.channels[1] < r.channels[0] else None
        table.add_row(
            r.name,
            f"{r.channels[0]} → {r.channels[1]}",
            f"{r.params[0]:,} → {r.params[1]:,}",
            f"{r.macs[0]:,} → {r.macs[1]:,}",
            style=style,
        )
    table.add_section()
    (pb, pa), (mb, ma) = result.params, result.macs
    table.add_row(
        "total",
        "",
        f"{pb:,} → {pa:,} ({_pct(pb, pa)})",
        f"{mb:,} → {ma:,} ({_pct(mb, ma)})",
        style="bold",
    )
    console = make_console()
    console.print(table)
    if result.search is not None:
        render_search(result.search, console)
    for label, report in (
        ("calibration" if result.holdout is None else "decision", result.decision),
        ("held-out", result.holdout),
        ("random inputs (report only)", result.random),
    ):
        if report is None:
            continue
        acc = (
            ""
            if report.accuracy is None
            else (f", accuracy {report.accuracy[0]:.4f} → {report.accuracy[1]:.4f}")
        )
        console.print(
            f"{label}: {report.samples} samples, max |Δ| {report.max_abs_diff:.3g}, "
            f"agreement {report.agreement:.4f}{acc}"
        )
        for note in report.skipped:
            console.print(f"  {note}")
    if result.folds is not None:
        console.print(result.folds.summary())
    if not result.changed:
        console.print(NOTHING_TO_PRUNE)
    for failure in result.failures:
        console.print(f"[red]gate failed:[/red] {failure}")
    where = f"wrote {out}" if written else "nothing written"
    console.print(f"{where} in {result.seconds:.2f} s")

"""``dsp-deploy quantize MODEL --calib NPZ``: INT8 that keeps accuracy, gated, written atomically.

Exit 0: written (gates passed, or ``--force``); 1: a gate failed, nothing written;
2: bad input (an already quantized model, no Conv, a calibration file that does not fit,
bad options, output path). Default output: ``<stem>.int8.onnx`` beside MODEL.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dsp_deploy.clihelp import add_command
from dsp_deploy.commands import beside, check_output, naming

if TYPE_CHECKING:
    from dsp_deploy.quantize.pipeline import QuantizeResult


def register(app: typer.Typer) -> None:
    add_command(
        app,
        "quantize",
        quantize_command,
        panels={
            "Files": ("calib", "output"),
            "Checks (gates)": ("holdout", "min_agreement", "max_accuracy_drop", "force"),
            "INT8": ("target", "max_float", "speed_check"),
            "Output": ("as_json",),
        },
        examples=("dsp-deploy quantize model.pruned.onnx --calib calib.npz --target arm64",),
    )


def quantize_command(
    model: Annotated[str, typer.Argument(help="Float ONNX model (.onnx).", show_default=False)],
    calib: Annotated[
        str, typer.Option("--calib", help="Calibration .npz (as for compress; labels y optional).")
    ],
    output: Annotated[
        str | None, typer.Option("-o", "--output", help="Output path [<stem>.int8.onnx].")
    ] = None,
    target: Annotated[str, typer.Option("--target", help="x86 | arm64.")] = "x86",
    holdout: Annotated[
        float,
        typer.Option("--holdout", help="Fraction of calibration samples held out to gate on."),
    ] = 0.2,
    min_agreement: Annotated[
        float, typer.Option("--min-agreement", help="Held-out argmax agreement gate.")
    ] = 0.99,
    max_accuracy_drop: Annotated[
        float, typer.Option("--max-accuracy-drop", help="Accuracy drop gate (with labels).")
    ] = 0.01,
    max_float: Annotated[
        int, typer.Option("--max-float", help="At most this many layers kept in float.")
    ] = 8,
    speed_check: Annotated[
        bool,
        typer.Option(
            "--speed-check/--no-speed-check",
            help="On a host of the target's kind: keep float where INT8 is not faster.",
        ),
    ] = True,
    force: Annotated[bool, typer.Option("--force", help="Write even if a gate fails.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Quantize to INT8 (QDQ, per-channel weights), keeping accuracy; gated like compress."""
    from dsp_deploy import io
    from dsp_deploy.errors import VerificationError
    from dsp_deploy.quantize import QuantizeOptions, quantize

    options = QuantizeOptions(
        target=target, holdout=holdout, min_agreement=min_agreement,
        max_accuracy_drop=max_accuracy_drop, max_float=max_float, speed_check=speed_check,
    )  # fmt: skip
    loaded = io.load_model(model)
    out = check_output(output or beside(model, ".int8.onnx"), "--output", inputs=[model, calib])
    calibration = io.load_calibration(calib, loaded)
    with naming(model):
        result = quantize(loaded, calibration, options)
    write = result.verified or force
    if write:
        io.save_model(result.model, out, inputs=[model, calib])
    if as_json:
        typer.echo(json.dumps(_as_dict(result, model, out, write)))
    else:
        _render(result, model, out, write)
    if not result.verified and not force:
        raise VerificationError(f"{model}: not written ({'; '.join(result.failures)})")


def _as_dict(result: QuantizeResult, model: str, out: Path, written: bool) -> dict:
    return {
        "input": model,
        "output": str(out) if written else None,
        "verified": result.verified,
        "scheme": result.scheme,
        "kept_float": list(result.kept_float),
        "unfused": list(result.unfused),
        "equalised": result.equalised,
        "decision": result.decision.as_dict(),
        "holdout": None if result.holdout is None else result.holdout.as_dict(),
        "latency_ratio": result.latency_ratio,
        "notes": list(result.notes),
        "failures": list(result.failures),
        "configurations_tried": result.tried,
        "seconds": result.seconds,
    }


def _render(result: QuantizeResult, model: str, out: Path, written: bool) -> None:
    from dsp_deploy.render import console as make_console

    console = make_console()
    if result.scheme == "float":
        console.print(f"quantize {model}: the float model is kept (INT8 does not pay here)")
    else:
        kept = len(result.kept_float)
        console.print(f"quantize {model}: {result.scheme}, {kept} layer(s) kept in float")
    pairs = (("INT8 on the decision part", result.decision), ("held-out", result.holdout))
    for label, report in pairs:
        if report is not None:
            acc = "" if report.accuracy is None else (
                f", accuracy {report.accuracy[0]:.4f} → {report.accuracy[1]:.4f}")  # fmt: skip
            console.print(
                f"{label}: {report.samples} samples, agreement {report.agreement:.4f}{acc}"
            )
    if result.latency_ratio:
        ratios = ", ".join(f"batch {b}: {r:.2f}" for b, r in result.latency_ratio.items())
        console.print(f"INT8 / float time, one thread: {ratios}")
    for note in (*result.notes, *(f"[red]gate failed:[/red] {f}" for f in result.failures)):
        console.print(note)
    console.print(
        f"{'wrote ' + str(out) if written else 'nothing written'} in {result.seconds:.1f} s"
    )

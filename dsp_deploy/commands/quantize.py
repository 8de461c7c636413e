"""``dsp-deploy quantize MODEL --calib NPZ``: INT8 that keeps accuracy, gated, written atomically.

Exit 0: written (gates passed, or ``--force``); 1: a gate failed, nothing written;
2: bad input (an already quantized model, no Conv, a calibration or ``--eval`` file that
does not fit, bad options, output path), or series too few for the gates at
``--confidence`` (``compress.holdout``, the same line as ``compress``: it says how many
they need; ``--force`` proceeds and says what cannot be seen). Default output:
``<stem>.int8.onnx`` beside MODEL.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dsp_deploy.clihelp import add_command
from dsp_deploy.commands import EvalOption, beside, check_output, load_eval, naming

if TYPE_CHECKING:
    from dsp_deploy.quantize.pipeline import QuantizeResult


def register(app: typer.Typer) -> None:
    add_command(
        app,
        "quantize",
        quantize_command,
        panels={
            "Files": ("calib", "eval_file", "output"),
            "Checks (gates)": (
                "holdout",
                "min_agreement",
                "max_accuracy_drop",
                "confidence",
                "force",
            ),
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
        typer.Option("--holdout", help="Fraction held out to gate on (few series: 1/this folds)."),
    ] = 0.2,
    min_agreement: Annotated[
        float | None,
        typer.Option(
            "--min-agreement",
            help="The upper confidence bound of the judged disagreement rate must be <= "
            "1 - this. Default: 0.98 without labels; with labels, none (accuracy decides).",
            show_default=False,
        ),
    ] = None,
    max_accuracy_drop: Annotated[
        float,
        typer.Option(
            "--max-accuracy-drop",
            help="With labels: the upper confidence bound of the judged accuracy drop "
            "must be <= this.",
        ),
    ] = 0.02,
    confidence: Annotated[
        float,
        typer.Option(
            "--confidence",
            help="One-sided confidence of the gates' bounds, in [0.5, 1). 0.95 needs >= "
            "133 judged series for the default gates.",
        ),
    ] = 0.95,
    eval_file: EvalOption = None,
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
    from dsp_deploy.errors import CalibrationError, VerificationError
    from dsp_deploy.quantize import QuantizeOptions, quantize
    from dsp_deploy.quantize.pipeline import gate_options, judged_partition

    options = QuantizeOptions(
        target=target, holdout=holdout, min_agreement=min_agreement,
        max_accuracy_drop=max_accuracy_drop, confidence=confidence, max_float=max_float,
        speed_check=speed_check,
    )  # fmt: skip
    loaded = io.load_model(model)
    sources = [s for s in (model, calib, eval_file) if s]
    out = check_output(output or beside(model, ".int8.onnx"), "--output", inputs=sources)
    calibration = io.load_calibration(calib, loaded)
    evaluation = load_eval(eval_file, loaded)
    judged = judged_partition(options, calibration, evaluation).plan
    if not judged.enough and not force:  # before the run: it could pass no candidate
        raise CalibrationError(f"{eval_file or calib}: {judged.shortfall(gate_options(options))}")
    with naming(model):
        result = quantize(loaded, calibration, options, evaluation)
    write = result.verified or force
    if write:
        io.save_model(result.model, out, inputs=sources)
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
        "a16w8": list(result.wide),
        "unfused": list(result.unfused),
        "equalised": result.equalised,
        "decision": result.decision.as_dict(),
        "holdout": None if result.holdout is None else result.holdout.as_dict(),
        "eval": None if result.evaluation is None else result.evaluation.as_dict(),
        "gates": result.gate.as_dict(),
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
        wide = f", {len(result.wide)} with 16-bit activations" if result.wide else ""
        console.print(f"quantize {model}: {result.scheme}, {kept} layer(s) kept in float{wide}")
    pairs = (
        ("INT8 on the decision part", result.decision),
        ("held-out", result.holdout),
        ("eval", result.evaluation),
    )
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

"""``dsp-deploy compress MODEL --calib NPZ``: prune dead or weak channels, verify, write atomically.

Exit 0: written (and verified, or ``--force``); 1: a gate failed, nothing written;
2: bad input (model, calibration or ``--eval`` file, options, output path), or series
too few for the gates at ``--confidence`` (``compress.holdout``; the line says how many
they need; ``--force`` proceeds and says what cannot be seen). A quantized model
(QLinearConv, ConvInteger, or a Conv of DequantizeLinear weights) is bad input: only
float convs are pruned, so compress the float model, then quantize (exit 2, nothing
written).
"""

from __future__ import annotations

import json
from dataclasses import fields
from typing import TYPE_CHECKING, Annotated

import typer

from dsp_deploy.clihelp import add_command
from dsp_deploy.commands import EvalOption, beside, check_output, load_eval, naming
from dsp_deploy.options import AUTO, COMPENSATIONS, CRITERIA, CompressOptions, with_changes
from dsp_deploy.render_auto import auto_progress
from dsp_deploy.render_compress import as_dict, render

DEFAULTS = CompressOptions()  # the library's defaults, shown and used as the CLI's
OPTION_KEYS = frozenset({*(f.name for f in fields(CompressOptions)), "reconstruct"})

if TYPE_CHECKING:
    pass


def register(app: typer.Typer) -> None:
    add_command(app, "compress", compress_command, panels=PANELS, examples=EXAMPLES)


PANELS = {
    "Files": ("calib", "eval_file", "output", "no_overwrite"),
    "What to remove": ("criterion", "threshold", "min_count", "compensation", "reconstruct"),
    "Checks (gates)": (
        "holdout", "folds", "atol", "rtol", "min_agreement", "max_accuracy_drop", "confidence",
        "force",
    ),
    "Rewrites for speed": ("align", "conv2d", "fuse"),
    "Run and output": ("batch_size", "threads", "verbose", "quiet", "as_json"),
}  # fmt: skip
EXAMPLES = (
    "dsp-deploy compress model.onnx --calib calib.npz",
    "dsp-deploy compress model.onnx --calib c.npz --criterion dsp -o small.onnx",
)


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
        str | None,
        typer.Option(
            "-o",
            "--output",
            help="Output .onnx [<stem>.pruned.onnx]; an existing file is replaced "
            "(atomically: a reader sees the old or the new one) unless --no-overwrite.",
        ),
    ] = None,
    no_overwrite: Annotated[
        bool, typer.Option("--no-overwrite", help="Exit 2 if the output exists.")
    ] = False,
    criterion: Annotated[
        str,
        typer.Option(
            "--criterion",
            help=f"{' | '.join(CRITERIA)}: lossless | paper's rule | cuts down one global "
            "ranking, deeper until the gates fail (no ratio; reconstructs every consumer).",
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
        float | None,
        typer.Option(
            "--min-agreement",
            help="Lossy: the upper confidence bound of the held-out disagreement rate must "
            "be <= 1 - this (0: no agreement gate). Default: 0.98 without labels; with "
            "labels, none (the accuracy gate decides).",
            show_default=False,
        ),
    ] = DEFAULTS.min_agreement,
    max_accuracy_drop: Annotated[
        float,
        typer.Option(
            "--max-accuracy-drop",
            help="With labels: the upper confidence bound of the held-out accuracy drop "
            "must be <= this.",
        ),
    ] = DEFAULTS.max_accuracy_drop,
    confidence: Annotated[
        float,
        typer.Option(
            "--confidence",
            help="One-sided confidence of the gates' bounds, in [0.5, 1) (0.5: point "
            "estimates). 0.95 needs >= 133 judged series for the default gates.",
        ),
    ] = DEFAULTS.confidence,
    eval_file: EvalOption = None,
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
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar (none off a terminal).")
    ] = False,
) -> None:
    """Remove dead (or, with --criterion dsp, weak) channels and prove the outputs.

    Float convs only: a quantized model exits 2 (compress first, then quantize).
    """
    given = dict(locals())  # first: the parameters, named as CompressOptions' fields
    from dsp_deploy import io, progress
    from dsp_deploy.compress.holdout import partition
    from dsp_deploy.compress.pipeline import compress
    from dsp_deploy.errors import CalibrationError, VerificationError
    from dsp_deploy.render import progress_bar

    # Validated before any file is read: a bad value costs no model load.
    options = with_changes(None, {k: v for k, v in given.items() if k in OPTION_KEYS})
    loaded = io.load_model(model)
    # Before the calibration pass, not after it: a bad -o must not cost a whole run.
    sources = [model, calib, eval_file]
    out = check_output(
        output or beside(model, ".pruned.onnx"),
        "--output",
        inputs=sources,
        suffix=".onnx",
        overwrite=not no_overwrite,
    )
    calibration = io.load_calibration(calib, loaded)
    evaluation = load_eval(eval_file, loaded)
    judged = partition(options, calibration, evaluation).plan
    if not judged.enough and not force:  # before the run: it could pass no candidate
        raise CalibrationError(f"{eval_file or calib}: {judged.shortfall(options)}")
    shown = not (as_json or quiet)
    # One live display at a time: auto shows its candidates, the others their passes.
    bar = progress_bar("calibration", enabled=shown and options.criterion != AUTO)
    searching = auto_progress(shown and options.criterion == AUTO)
    with naming(model), bar as reporter, progress.reporting(reporter), searching as seen:
        result = compress(loaded, calibration, options, evaluation=evaluation, progress=seen)
    write = result.verified or force
    if write:
        io.save_model(result.model, out, inputs=[s for s in sources if s])
    refusal = None if write else f"{model}: not written ({'; '.join(result.failures)})"
    if as_json:
        _echo_json(as_dict(result, model, out, write), refusal)
    elif write or verbose:
        render(result, model, out, write)
    if refusal is not None:
        raise VerificationError(refusal)


def _echo_json(report: dict, refusal: str | None) -> None:
    """The one JSON object; a refusal goes into it as ``error`` and ``exit_code``, and
    then the exit needs no second object (``typer.Exit``, with the stderr line)."""
    if refusal is None:
        typer.echo(json.dumps(report))
        return
    from dsp_deploy.errors import VerificationError

    code = VerificationError.exit_code
    typer.echo(json.dumps({**report, "error": refusal, "exit_code": code}))
    from dsp_deploy.cli import error_line

    error_line(refusal)
    raise typer.Exit(code)

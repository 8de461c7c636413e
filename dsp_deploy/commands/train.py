"""``dsp-deploy train --arch ARCH --dataset NAME|PATH -o OUT.onnx``: DSP training → ONNX.

Two parameter counts, labelled: ``params`` is the exported ONNX file's count, the one
``compress``, ``inspect`` and ``bench`` report (every weight-like initializer,
``dsp_deploy.cost``); ``trainable_params`` is torch's count of the network's parameters.
They differ by what export does to BatchNorm: a BatchNorm after a conv is folded into
it (its scale and shift, 2 per channel, become the conv's bias, 1 per channel), and one
that is not (LITE's after the Concat) keeps its running mean and variance, 2 values per
channel torch keeps as buffers. LITE on GunPoint: 10,318 trainable, 10,480 in the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from dsp_deploy.clihelp import NO_CHECK_EXIT_CODES, add_command
from dsp_deploy.commands import check_output, finite_at_least, positive

if TYPE_CHECKING:
    from dsp_deploy.train.pipeline import TrainOutcome, TrainRequest


def register(app: typer.Typer) -> None:
    add_command(
        app,
        "train",
        train_command,
        panels={
            "What to train": ("arch", "dataset", "output", "calib_out"),
            "Training": ("epochs", "sparsity", "seed", "batch_size", "protocol", "retrain_epochs"),
            "Run and output": ("threads", "device", "as_json", "quiet"),
        },  # fmt: skip
        examples=(
            "dsp-deploy train --arch lite -d GunPont -o lite.onnx --calib-out calib.npz",
            "dsp-deploy train --arch lite -d GunPont -o d.onnx --sparsity 0 --epochs 300",
        ),
        exits=NO_CHECK_EXIT_CODES,
    )


def train_command(
    arch: Annotated[
        str, typer.Option("--arch", help="lite | litetime | inception | inceptiontime.")
    ],
    dataset: Annotated[
        str, typer.Option("--dataset", "-d", help="UCR/aeon name or a path (.ts, .tsv, .npz).")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="ONNX file to write.")],
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs.")] = 1500,
    sparsity: Annotated[
        float | None, typer.Option("--sparsity", help="DSP λ; 0 = dense. Default: the paper's.")
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option("--seed", help="Seed (ensembles: seed, seed+1, ...). Default: the paper's."),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Series per step.")] = 64,
    protocol: Annotated[
        str, typer.Option("--protocol", help="none | dsp-retrain (the paper's DSP) | dsp-finetune.")
    ] = "none",
    retrain_epochs: Annotated[
        int | None,
        typer.Option("--retrain-epochs", help="Epochs after shrinking (default: --epochs)."),
    ] = None,
    calib_out: Annotated[
        Path | None,
        typer.Option("--calib-out", help="Also write the training inputs as x, y (.npz)."),
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", help="torch intra-op threads.")
    ] = None,
    device: Annotated[
        str,
        typer.Option(
            "--device", help="Where the epochs run: auto (a GPU if seen) | cpu | cuda[:N]."
        ),
    ] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train LITE/InceptionTime (optionally with DSP) and export it to ONNX."""
    from dsp_deploy.errors import require

    positive("--batch-size", batch_size)
    positive("--threads", threads)
    finite_at_least("--sparsity", sparsity)
    _check_outputs(output, calib_out, dataset)
    require("torch", "train")
    from dsp_deploy.archs import get_arch
    from dsp_deploy.data import load_train_test, require_trainable
    from dsp_deploy.io import save_calibration, save_model
    from dsp_deploy.train import pipeline
    from dsp_deploy.train.export import model_metadata, to_onnx
    from dsp_deploy.train.loop import resolve_device

    request = pipeline.TrainRequest(
        get_arch(arch),
        epochs,
        sparsity,
        seed,
        batch_size,
        protocol,
        retrain_epochs,
        device=str(resolve_device(device)),
    )
    train_set, _ = load_train_test(dataset)
    require_trainable(train_set, dataset)
    n_classes = len(train_set.classes)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    with _progress(request, quiet) as progress:
        outcome = pipeline.train(request, train_set.X, train_set.y, n_classes, progress=progress)
    _, channels, length = train_set.X.shape
    meta = model_metadata(
        classes=train_set.classes,
        length=length,
        channels=channels,
        arch=request.spec.name,
        dataset=str(dataset),
        training=_training_settings(request, outcome),
    )
    exported = to_onnx(outcome.model, length=length, channels=channels, meta=meta)
    from dsp_deploy.cost import model_cost

    onnx_params = model_cost(exported).params
    if calib_out is not None:
        # Before the model: once the model exists, its calibration set is complete too.
        # `classes` lets `dsp-deploy eval MODEL --dataset CALIB.npz` map labels by name.
        save_calibration(
            calib_out, x=train_set.X, y=train_set.y, classes=np.array(train_set.classes)
        )
    save_model(exported, output)
    summary = _summary(request, outcome, output, calib_out, train_set.name, onnx_params)
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        _render(summary)


def _check_outputs(output: Path, calib_out: Path | None, dataset: str) -> None:
    """Fail before training, not after: each output is writable and is no input."""
    inputs = [dataset] if Path(dataset).is_file() else []
    check_output(output, "--output", inputs=inputs, suffix=".onnx")
    if calib_out is not None:
        check_output(calib_out, "--calib-out", inputs=[*inputs, output])


def _training_settings(request: TrainRequest, outcome: TrainOutcome) -> dict[str, Any]:
    return {
        "epochs": request.epochs,
        "batch_size": request.batch_size,
        "optimizer": "adam(lr=1e-3)",
        "schedule": "reduce_on_plateau(train_loss, factor=0.5, patience=50, min_lr=1e-4)",
        "checkpoint": "min_train_loss",
        "sparsity": request.lam,
        "layer_weights": list(request.spec.layer_weights),
        "seeds": [m.seed for m in outcome.members],
        "protocol": request.protocol,
        "retrain_epochs": (request.retrain_epochs or request.epochs)
        if request.protocol != "none"
        else None,
        "kept_channels": [list(m.kept) for m in outcome.members if m.kept is not None] or None,
    }


def _summary(
    request: TrainRequest,
    outcome: TrainOutcome,
    output: Path,
    calib: Path | None,
    name: str,
    onnx_params: int,
) -> dict[str, Any]:
    def taps(analysis: Any) -> dict[str, list[int]]:
        return {t.name: [len(t.dead), t.channels] for t in analysis.taps}

    dead: dict[str, list[int]] = {}
    for member in outcome.members:
        for tap, (d, c) in taps(member.analysis).items():
            dead[tap] = [dead.get(tap, [0, 0])[0] + d, dead.get(tap, [0, 0])[1] + c]
    return {
        "output": str(output),
        "calibration": None if calib is None else str(calib),
        "arch": request.spec.name,
        "dataset": name,
        "protocol": request.protocol,
        "epochs": request.epochs,
        "sparsity": request.lam,
        "device": request.device,
        "train_accuracy": outcome.train_accuracy,
        "params": onnx_params,
        "trainable_params": outcome.params,
        "seconds": round(outcome.seconds, 3),
        "dead_channels": dead,
        "members": [
            {
                "seed": m.seed,
                "trainable_params": m.params,
                # None where the DSP training was loaded, not run (pipeline.train)
                "best_epoch": None if m.train is None else m.train.best_epoch,
                "best_loss": None if m.train is None else m.train.best_loss,
                "train_accuracy": m.train_accuracy,
                "dead_channels": taps(m.analysis),
                "sparse_dead_channels": None
                if m.sparse_analysis is None
                else taps(m.sparse_analysis),
                "kept": None if m.kept is None else list(m.kept),
                "retrain_best_epoch": None if m.retrain is None else m.retrain.best_epoch,
            }
            for m in outcome.members
        ],
    }


class _progress:
    """A rich progress bar on stderr (epoch, loss, sparsity term, lr), or nothing."""

    def __init__(self, request: TrainRequest, quiet: bool) -> None:
        self.request, self.quiet = request, quiet
        self.tasks: dict[tuple[int, str], Any] = {}

    def __enter__(self) -> Any:
        if self.quiet:
            return None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        from dsp_deploy.render import console

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("sparsity {task.fields[sp]:.4f}"),
            TextColumn("lr {task.fields[lr]:.1e}"),
            TimeElapsedColumn(),
            console=console(stderr=True),
        )
        self.bar.__enter__()
        return self.update

    def update(self, member: int, phase: str, record: Any) -> None:
        key = (member, phase)
        if key not in self.tasks:
            total = self.request.epochs
            if phase == "retrain":
                total = self.request.retrain_epochs or self.request.epochs
            label = f"{self.request.spec.name}[{member}] {phase}"
            self.tasks[key] = self.bar.add_task(label, total=total, loss=0.0, sp=0.0, lr=0.0)
        self.bar.update(
            self.tasks[key],
            completed=record.epoch,
            loss=record.loss,
            sp=record.sparsity,
            lr=record.lr,
        )

    def __exit__(self, *exc: object) -> None:
        if not self.quiet:
            self.bar.__exit__(*exc)  # type: ignore[arg-type]


def _render(summary: dict[str, Any]) -> None:
    from rich.table import Table

    from dsp_deploy.render import console

    table = Table(title=f"{summary['arch']} on {summary['dataset']} → {summary['output']}")
    table.add_column("member")
    table.add_column("seed", justify="right")
    table.add_column("trainable params", justify="right")
    table.add_column("best epoch", justify="right")
    table.add_column("train acc.", justify="right")
    table.add_column("dead channels per tap (train set)")
    for i, m in enumerate(summary["members"]):
        dead = ", ".join(f"{k} {d}/{c}" for k, (d, c) in m["dead_channels"].items())
        table.add_row(
            str(i),
            str(m["seed"]),
            f"{m['trainable_params']:,}",
            str(m["best_epoch"]),
            f"{m['train_accuracy']:.4f}",
            dead,
        )
    out = console()
    out.print(table)
    out.print(
        f"train accuracy {summary['train_accuracy']:.4f}, {summary['params']:,} params in "
        f"the ONNX file (as compress, inspect and bench count them; "
        f"{summary['trainable_params']:,} trainable in torch), {summary['seconds']:.1f} s"
    )

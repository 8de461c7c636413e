"""The library calls a sweep task makes: train, export, compress, and the row fields of each.

Thin wrappers over ``dsp_deploy.train`` and ``dsp_deploy.compress`` with the sweep's fixed
settings (:data:`SWEEP_COMPRESS`: the whole training set decides, the test set is the
held-out check), so that :mod:`dsp_experiments.tasks` holds only the variants.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from dsp_deploy.options import CompressOptions

if TYPE_CHECKING:
    import onnx

    from dsp_deploy.archs import ArchSpec
    from dsp_deploy.compress import CompressResult
    from dsp_deploy.data import Dataset
    from dsp_deploy.train.pipeline import TrainOutcome
    from dsp_experiments.tasks import Task

# The test set is the held-out check here: decide on all training samples, no k-fold report.
SWEEP_COMPRESS = CompressOptions(holdout=0.0, folds=0)


def fit(
    task: Task,
    train: Dataset,
    *,
    spec: ArchSpec | None = None,
    protocol: str = "none",
    states: Sequence[Mapping[str, Any]] | None = None,
) -> TrainOutcome:
    """Train ``task``'s member (``spec`` or the task's arch) at the task's λ, seed, epochs."""
    from dsp_deploy.archs import get_arch
    from dsp_deploy.train.pipeline import TrainRequest
    from dsp_deploy.train.pipeline import train as run_training

    request = TrainRequest(
        spec or get_arch(task.arch),
        epochs=task.epochs,
        sparsity=task.sparsity,
        seed=task.seed,
        batch_size=task.batch_size,
        protocol=protocol,
        device=task.device,
    )
    return run_training(request, train.X, train.y, len(train.classes), sparse_states=states)


def device_name(device: str) -> str:
    """``cpu``, or ``cuda:<GPU name>``: a result's hardware, for the report's readers."""
    if device == "cpu":
        return device
    import torch

    return f"cuda:{torch.cuda.get_device_name()}"


def state_bytes(net: Any) -> bytes:
    """``net``'s ``state_dict`` as ``torch.save`` writes it."""
    import torch

    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    return buffer.getvalue()


def trained_fields(outcome: TrainOutcome) -> dict[str, Any]:
    return {
        "train_accuracy": outcome.train_accuracy,
        "train_seconds": round(outcome.seconds, 3),
        "params_torch": outcome.params,
        "dead_channels": dead_text(outcome.members[0].analysis),
    }


def dead_text(analysis: Any) -> str:
    """``dead/channels`` per analysed layer, ``;``-separated."""
    return ";".join(
        f"{d}/{c}" for d, c in zip(analysis.dead_counts, analysis.channel_counts, strict=True)
    )


def compressed_fields(result: CompressResult) -> dict[str, Any]:
    return {
        "verified": result.verified,
        "failures": " | ".join(result.failures),
        "kept_channels": ";".join(f"{a}/{b}" for b, a in (r.channels for r in result.layers)),
        "compress_seconds": round(result.seconds, 3),
    }


def export(model: Any, task: Task, train: Dataset) -> onnx.ModelProto:
    """The trained ``model`` as ONNX, with the task's training recorded in its metadata."""
    from dsp_deploy.train.export import model_metadata, to_onnx

    _, channels, length = train.X.shape
    meta = model_metadata(
        classes=train.classes,
        length=length,
        channels=channels,
        arch=task.arch,
        dataset=train.name,
        training={
            "epochs": task.epochs,
            "sparsity": task.sparsity,
            "seed": task.seed,
            "variant": task.variant,
            "protocol": task.protocol,
        },
    )
    return to_onnx(model, length=length, channels=channels, meta=meta)


def compress(model: onnx.ModelProto, train: Dataset, options: CompressOptions) -> CompressResult:
    """``dsp_deploy.compress`` with the training set (and its labels) as calibration."""
    from dsp_deploy.compress import compress as run_compress
    from dsp_deploy.io import Calibration
    from dsp_deploy.train.export import INPUT_NAME

    calibration = Calibration(MappingProxyType({INPUT_NAME: train.X}), train.y)
    return run_compress(model, calibration, options)

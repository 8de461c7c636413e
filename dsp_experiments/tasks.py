"""One sweep task: (dataset, arch, seed, variant) → one result row, on a worker.

Variants (``λ_p`` is the arch's paper λ, ``λ_x`` the protocol's dsp-exact λ)::

    dense          train (λ = 0) → ONNX
    dsp-onnx       train (λ_p) → ONNX → compress --criterion dead        (lossless)
    dsp-onnx-rule  dsp-onnx's sparse ONNX → compress --criterion dsp      (paper's rule,
                   default (lstsq) compensation; the row exists whether the gates pass or not;
                   accuracy_none|mean|lstsq score each compensation on the test set)
    dsp-retrain    dsp-onnx's trained weights (or train (λ_p)) → analysis → smaller net
                   → retrain (λ = 0) → ONNX
    dsp-exact      train (λ_x) → ONNX → compress --criterion dead        (ours)
    narrow         uniform width nearest dsp-retrain's params (same dataset and seed),
                   train (λ = 0) → ONNX

``dsp-onnx-rule``, ``dsp-retrain`` and ``narrow`` take their upstream task's output
(``UPSTREAM``; a chain dsp-onnx → dsp-retrain → narrow): the sparse model bytes, the
trained DSP member's ``state_dict`` (model kind ``state``: dsp-onnx trains the very model
that dsp-retrain starts from, same λ, seed, epochs and data order, deterministically on
CPU), or the retrained member's parameter count. A rule or retrain task with no upstream
(or an upstream row without a state file, from before states were kept) trains its own
sparse model. ``train_seconds`` counts the training the task itself did: 0 for a rule
task that read its sparse model, only the analysis and retraining for a retrain task that
read its weights; ``train_accuracy``, ``dead_channels``, ``kept_channels`` and
``params_torch`` are the same either way. Compression uses the whole training set as
calibration (holdout 0): the channels removed are those dead on all of it, which is
what the training-side analysis calls dead; the test set is the held-out check.

Every row's ``accuracy`` comes from the final ONNX model on onnxruntime (so the export is
checked too); ``params``/``macs`` from :func:`dsp_deploy.cost.model_cost`, against those
of the dense architecture for the same dataset (``params_dense``). ``latency_ratio`` and
``latency_ms`` are batch-1 timings paired with that dense architecture
(:mod:`dsp_experiments.measure`).

``accuracy_unpruned`` (dsp-onnx, dsp-exact, dsp-onnx-rule; empty for the others) is the
test accuracy of the sparse ONNX model the task compressed, before compression (the
rule's read from its upstream or trained by itself). ``dead`` compression can differ
from it where a channel dead on every training series wakes on a test series; the
report judges the rule's compensations against it.
"""

from __future__ import annotations

import io
import logging
import math
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from dsp_deploy.errors import InputError
from dsp_deploy.options import CompressOptions
from dsp_experiments.measure import accuracy, dense_cost, dense_model, paired_latency, predict

if TYPE_CHECKING:
    import onnx

    from dsp_deploy.archs import ArchSpec
    from dsp_deploy.compress import CompressResult
    from dsp_deploy.data import Dataset
    from dsp_deploy.train.pipeline import TrainOutcome

log = logging.getLogger(__name__)

VARIANTS: tuple[str, ...] = (
    "dense",
    "dsp-onnx",
    "dsp-onnx-rule",
    "dsp-retrain",
    "dsp-exact",
    "narrow",
)
DSP_VARIANTS: tuple[str, ...] = ("dsp-onnx", "dsp-onnx-rule", "dsp-retrain", "dsp-exact")
UPSTREAM: Mapping[str, str] = MappingProxyType(
    {"dsp-onnx-rule": "dsp-onnx", "dsp-retrain": "dsp-onnx", "narrow": "dsp-retrain"}
)
ARCHS: tuple[str, ...] = ("lite", "inception")  # single members: ensembles come from seeds


@dataclass(frozen=True)
class Task:
    dataset: str  # canonical name (Dataset.name)
    arch: str  # lite | inception
    variant: str
    seed: int
    protocol: str
    epochs: int
    batch_size: int
    sparsity: float  # λ of the (first) training; 0 for dense and narrow
    threads: int = 1
    latency_runs: int = 100
    keep_models: bool = False
    gpus: float = 0.0  # > 0: train on CUDA (Ray schedules this share of a GPU)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise InputError(f"unknown variant {self.variant!r}; expected one of {VARIANTS}")
        if self.arch not in ARCHS:
            raise InputError(f"unknown sweep arch {self.arch!r}; expected one of {ARCHS}")

    @property
    def device(self) -> str:
        return "cuda" if self.gpus > 0 else "cpu"

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.dataset, self.arch, self.variant, str(self.seed))

    @property
    def upstream_key(self) -> tuple[str, str, str, str] | None:
        up = UPSTREAM.get(self.variant)
        return None if up is None else (self.dataset, self.arch, up, str(self.seed))


@dataclass(frozen=True)
class TaskOutput:
    """What a worker sends back; the driver commits it (``results.ResultsStore``)."""

    row: Mapping[str, Any]
    probabilities: np.ndarray  # (n_test, classes) float32; empty when read back for upstream
    labels: np.ndarray  # (n_test,) int64
    models: Mapping[str, bytes] = field(default_factory=dict)  # "sparse", "state", "final"


@dataclass(frozen=True)
class _Built:
    model: onnx.ModelProto
    fields: Mapping[str, Any]
    models: Mapping[str, bytes] = field(default_factory=dict)
    # more models of the task, each scored as ``accuracy_<name>`` on the test set: the
    # final model under each compensation, the sparse model before compression
    scored: Mapping[str, onnx.ModelProto] = field(default_factory=dict)


def run_task(
    task: Task, train: Dataset, test: Dataset, upstream: TaskOutput | None = None
) -> TaskOutput:
    """Train, export, compress and evaluate one task; see the module docstring."""
    import torch

    torch.set_num_threads(task.threads)
    start = time.perf_counter()
    built = _BUILDERS[task.variant](task, train, upstream)
    probs = predict(built.model, test.X, task.threads)
    scored_accuracy = {
        f"accuracy_{name}": accuracy(predict(model, test.X, task.threads), test.y)
        for name, model in built.scored.items()
    }
    length, n_classes = int(train.X.shape[-1]), len(train.classes)
    dense_params, dense_macs = dense_cost(task.arch, n_classes, length)
    from dsp_deploy.cost import model_cost

    cost = model_cost(built.model, length=length)
    row = {
        "dataset": train.name,
        "arch": task.arch,
        "variant": task.variant,
        "seed": task.seed,
        "protocol": task.protocol,
        "epochs": task.epochs,
        "steps": task.epochs * math.ceil(len(train.y) / task.batch_size),
        "sparsity": task.sparsity,
        "accuracy": accuracy(probs, test.y),
        **scored_accuracy,
        "params": cost.params,
        "macs": cost.macs,
        "params_dense": dense_params,
        "macs_dense": dense_macs,
        "compression": 1 - cost.params / dense_params,
        "macs_reduction": 1 - cost.macs / dense_macs,
        **paired_latency(
            built.model, dense_model(task.arch, n_classes, length), length, task.latency_runs
        ),
        "n_train": len(train.y),
        "n_test": len(test.y),
        "length": length,
        "n_classes": n_classes,
        "host": socket.gethostname(),
        "device": _device_name(task.device),
        **built.fields,
        "task_seconds": round(time.perf_counter() - start, 3),
    }
    models = dict(built.models)
    if task.keep_models:
        models["final"] = built.model.SerializeToString()
    log.info("task %s: accuracy %.4f, params %d", task.key, row["accuracy"], cost.params)
    return TaskOutput(row, probs, test.y.astype(np.int64), models)


# ---- variants ---------------------------------------------------------------------------
def _dense(task: Task, train: Dataset, upstream: TaskOutput | None) -> _Built:
    outcome = _fit(task, train)
    return _Built(_export(outcome.model, task, train), _trained(outcome))


def _dead_pruned(task: Task, train: Dataset, upstream: TaskOutput | None) -> _Built:
    outcome = _fit(task, train)
    sparse = _export(outcome.model, task, train)
    result = _compress(sparse, train, replace(SWEEP_COMPRESS, threads=task.threads))
    fields = {**_trained(outcome), **_compressed(result)}
    models = {"sparse": sparse.SerializeToString()}
    if task.variant == UPSTREAM["dsp-retrain"]:  # the weights dsp-retrain starts from
        models["state"] = _state_bytes(outcome.model.net)  # one member: Probabilities(net)
    return _Built(result.model, fields, models, scored={"unpruned": sparse})


def _rule(task: Task, train: Dataset, upstream: TaskOutput | None) -> _Built:
    import onnx

    from dsp_deploy.options import COMPENSATIONS, DEFAULT_COMPENSATION

    if upstream is not None and "sparse" in upstream.models:
        sparse = onnx.load_from_string(upstream.models["sparse"])
        copied = ("train_accuracy", "dead_channels", "params_torch")
        fields: dict[str, Any] = {k: upstream.row.get(k) for k in copied}
        fields["train_seconds"] = 0.0  # trained by the upstream task
    else:
        outcome = _fit(task, train)
        sparse, fields = _export(outcome.model, task, train), _trained(outcome)
    # The same removal under each compensation, so a sweep can check the default one.
    rule = replace(SWEEP_COMPRESS, criterion="dsp", threads=task.threads)
    results = {
        mode: _compress(sparse, train, replace(rule, compensation=mode)) for mode in COMPENSATIONS
    }
    result = results[DEFAULT_COMPENSATION]
    scored = {**{mode: r.model for mode, r in results.items()}, "unpruned": sparse}
    return _Built(result.model, {**fields, **_compressed(result)}, scored=scored)


def _retrain(task: Task, train: Dataset, upstream: TaskOutput | None) -> _Built:
    states = _upstream_states(task, upstream)
    outcome = _fit(task, train, protocol="dsp-retrain", states=states)
    member = outcome.members[0]
    fields = {
        **_trained(outcome),
        "retrain_epochs": task.epochs,
        "kept_channels": member.kept,
        "dead_channels": _dead(member.sparse_analysis),
    }
    return _Built(_export(outcome.model, task, train), fields)


def _upstream_states(task: Task, upstream: TaskOutput | None) -> list[Mapping[str, Any]] | None:
    """The trained DSP weights in ``upstream`` (one member), or None: the task trains them."""
    if upstream is None or "state" not in upstream.models:
        return None
    # From disk the row is text; a state trained otherwise must not pass for this one's.
    trained = (float(upstream.row["sparsity"]), int(upstream.row["epochs"]))
    if trained != (task.sparsity, task.epochs):
        raise InputError(
            f"task {task.key}: its upstream's state was trained with (λ, epochs) {trained}; "
            f"expected {(task.sparsity, task.epochs)}"
        )
    import torch

    return [torch.load(io.BytesIO(upstream.models["state"]), weights_only=True)]


def _narrow(task: Task, train: Dataset, upstream: TaskOutput | None) -> _Built:
    from dsp_deploy.archs import get_arch
    from dsp_experiments.narrow import NarrowSpec, narrow_width

    if upstream is None or not upstream.row.get("params_torch"):
        raise InputError(f"task {task.key} needs its dsp-retrain row (parameter target)")
    target = int(upstream.row["params_torch"])
    base = get_arch(task.arch)
    width = narrow_width(base.family, len(train.classes), target)
    spec = NarrowSpec(**asdict(base), width=width)
    outcome = _fit(task, train, spec=spec)
    return _Built(_export(outcome.model, task, train), {**_trained(outcome), "width": width})


_BUILDERS: Mapping[str, Callable[[Task, Any, TaskOutput | None], _Built]] = MappingProxyType(
    {
        "dense": _dense,
        "dsp-onnx": _dead_pruned,
        "dsp-onnx-rule": _rule,
        "dsp-retrain": _retrain,
        "dsp-exact": _dead_pruned,
        "narrow": _narrow,
    }
)


# ---- library calls ----------------------------------------------------------------------
def _fit(
    task: Task,
    train: Dataset,
    *,
    spec: ArchSpec | None = None,
    protocol: str = "none",
    states: Sequence[Mapping[str, Any]] | None = None,
) -> TrainOutcome:
    from dsp_deploy.archs import get_arch
    from dsp_deploy.train.pipeline import TrainRequest
    from dsp_deploy.train.pipeline import train as fit

    request = TrainRequest(
        spec or get_arch(task.arch),
        epochs=task.epochs,
        sparsity=task.sparsity,
        seed=task.seed,
        batch_size=task.batch_size,
        protocol=protocol,
        device=task.device,
    )
    return fit(request, train.X, train.y, len(train.classes), sparse_states=states)


def _device_name(device: str) -> str:
    """``cpu``, or ``cuda:<GPU name>``: a result's hardware, for the report's readers."""
    if device == "cpu":
        return device
    import torch

    return f"cuda:{torch.cuda.get_device_name()}"


def _state_bytes(net: Any) -> bytes:
    """``net``'s ``state_dict`` as ``torch.save`` writes it."""
    import torch

    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    return buffer.getvalue()


def _trained(outcome: TrainOutcome) -> dict[str, Any]:
    return {
        "train_accuracy": outcome.train_accuracy,
        "train_seconds": round(outcome.seconds, 3),
        "params_torch": outcome.params,
        "dead_channels": _dead(outcome.members[0].analysis),
    }


def _dead(analysis: Any) -> str:
    return ";".join(
        f"{d}/{c}" for d, c in zip(analysis.dead_counts, analysis.channel_counts, strict=True)
    )


def _compressed(result: CompressResult) -> dict[str, Any]:
    return {
        "verified": result.verified,
        "failures": " | ".join(result.failures),
        "kept_channels": ";".join(f"{a}/{b}" for b, a in (r.channels for r in result.layers)),
        "compress_seconds": round(result.seconds, 3),
    }


def _export(model: Any, task: Task, train: Dataset) -> onnx.ModelProto:
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


# The test set is the held-out check here: decide on all training samples, no k-fold report.
SWEEP_COMPRESS = CompressOptions(holdout=0.0, folds=0)


def _compress(model: onnx.ModelProto, train: Dataset, options: CompressOptions) -> CompressResult:
    from dsp_deploy.compress import compress
    from dsp_deploy.io import Calibration
    from dsp_deploy.train.export import INPUT_NAME

    calibration = Calibration(MappingProxyType({INPUT_NAME: train.X}), train.y)
    return compress(model, calibration, options)

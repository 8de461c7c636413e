"""One sweep task: (dataset, arch, seed, variant) → one result row, on a worker.

Variants (``λ_p`` is the arch's paper λ, ``λ_x`` the protocol's dsp-exact λ)::

    dense            train (λ = 0) → ONNX
    dsp-onnx         train (λ_p) → ONNX → compress --criterion dead        (lossless)
    dsp-onnx-rule    dsp-onnx's sparse ONNX → compress --criterion dsp      (paper's rule,
                     default (lstsq) compensation; the row exists whether the gates pass or
                     not; accuracy_none|mean|lstsq score each compensation on the test set)
    dsp-retrain      dsp-onnx's trained weights (or train (λ_p)) → analysis → smaller net
                     → retrain (λ = 0) → ONNX
    dsp-exact        train (λ_x) → ONNX → compress --criterion dead        (ours)
    narrow           uniform width nearest dsp-retrain's params (same dataset and seed),
                     train (λ = 0) → ONNX
    dsp-onnx-auto    dsp-onnx's sparse ONNX → compress --criterion auto     (post-training)
    dense-onnx-auto  dense's ONNX → compress --criterion auto               (post-training)

The two ``-auto`` variants are registered only where ``dsp_deploy.options.CRITERIA`` has
``auto`` (:func:`register`): until then they are defined but no sweep can ask for them.

The variant table (:data:`DEFINED`, one :class:`Variant` per variant) says, for each, how
its task builds the final model, the λ it trains with, which task it reads (``upstream``,
same dataset, arch and seed) and which of that task's saved models (``reads``). A task
saves the model kinds that some defined variant reads from it (:func:`saved_kinds`), with
``keep_models`` off too, so a resumed sweep, or one that adds a variant later, finds them
in the folder: dsp-onnx its sparse ONNX (``sparse``) and its trained member's
``state_dict`` (``state``: dsp-onnx trains the very model that dsp-retrain starts from,
same λ, seed, epochs and data order, deterministically on CPU), dense its ONNX
(``final``). ``narrow`` reads its upstream's row only (the retrained member's parameter
count) and is refused without it; any other task with no upstream (or one from before its
models were kept) trains its own. ``train_seconds`` counts the training the task itself
did: 0 for a task that read its model, only the analysis and retraining for a retrain task
that read its weights; ``train_accuracy``, ``dead_channels``, ``kept_channels`` and
``params_torch`` are the same either way. Compression uses the whole training set as
calibration (holdout 0): the channels removed are those dead on all of it, which is what
the training-side analysis calls dead; the test set is the held-out check.

Every row's ``accuracy`` comes from the final ONNX model on onnxruntime (so the export is
checked too); ``params``/``macs`` from :func:`dsp_deploy.cost.model_cost`, against those
of the dense architecture for the same dataset (``params_dense``). ``latency_ratio`` and
``latency_ms`` are batch-1 timings paired with that dense architecture
(:mod:`dsp_experiments.measure`). ``threads`` and ``gpus`` record the task's share of the
machine (what the sweep's cost estimate, :mod:`dsp_experiments.costs`, scales by).

``accuracy_unpruned`` (every variant that compresses; empty for the others) is the test
accuracy of the ONNX model the task compressed, before compression (read from its
upstream or trained by itself). ``dead`` compression can differ from it where a channel
dead on every training series wakes on a test series; the report judges the rule's
compensations against it.
"""

from __future__ import annotations

import io
import logging
import math
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from dsp_deploy.errors import InputError
from dsp_deploy.options import CRITERIA, CompressOptions
from dsp_experiments.measure import accuracy, dense_cost, dense_model, paired_latency, predict
from dsp_experiments.training import (
    SWEEP_COMPRESS,
    compress,
    compressed_fields,
    dead_text,
    device_name,
    export,
    fit,
    state_bytes,
    trained_fields,
)

if TYPE_CHECKING:
    import onnx

    from dsp_deploy.archs import ArchSpec
    from dsp_deploy.data import Dataset
    from dsp_experiments.protocols import Protocol

log = logging.getLogger(__name__)

ARCHS: tuple[str, ...] = ("lite", "inception")  # single members: ensembles come from seeds
PENALTIES: tuple[str, ...] = ("none", "paper", "exact")  # λ = 0 | the arch's | dsp-exact's


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
    models: Mapping[str, bytes] = field(default_factory=dict)  # results.MODEL_KINDS


@dataclass(frozen=True)
class _Built:
    model: onnx.ModelProto
    fields: Mapping[str, Any]
    models: Mapping[str, bytes] = field(default_factory=dict)
    # more models of the task, each scored as ``accuracy_<name>`` on the test set: the
    # final model under each compensation, the model before compression
    scored: Mapping[str, onnx.ModelProto] = field(default_factory=dict)


Builder = Callable[[Task, "Dataset", "TaskOutput | None"], _Built]


@dataclass(frozen=True)
class Variant:
    """One row kind of the sweep; see the module docstring."""

    name: str
    build: Builder
    penalty: str = "none"  # PENALTIES: the λ of the task's (first) training
    upstream: str | None = None  # the variant whose task it reads (same dataset/arch/seed)
    reads: tuple[str, ...] = ()  # the upstream's saved model kinds it reads
    required: bool = False  # True: refused without its upstream; False: trains its own
    checked: bool = False  # a compression method: against narrow and the paper's claim
    criterion: str | None = None  # the compress criterion it needs (registered if known)

    def sparsity(self, spec: ArchSpec, protocol: Protocol) -> float:
        """The λ its task trains with under ``protocol``."""
        if self.penalty == "exact":
            return protocol.exact_lambda(spec.family)
        return spec.sparsity if self.penalty == "paper" else 0.0


def run_task(
    task: Task, train: Dataset, test: Dataset, upstream: TaskOutput | None = None
) -> TaskOutput:
    """Train, export, compress and evaluate one task; see the module docstring."""
    import torch

    torch.set_num_threads(task.threads)
    start = time.perf_counter()
    built = REGISTERED[task.variant].build(task, train, upstream)
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
        "device": device_name(task.device),
        "threads": task.threads,
        "gpus": task.gpus,
        **built.fields,
        "task_seconds": round(time.perf_counter() - start, 3),
    }
    log.info("task %s: accuracy %.4f, params %d", task.key, row["accuracy"], cost.params)
    return TaskOutput(row, probs, test.y.astype(np.int64), _models(task, built))


def _models(task: Task, built: _Built) -> dict[str, bytes]:
    """The models the task saves: those a downstream reads, and its final one on request."""
    models = dict(built.models)
    if task.keep_models or "final" in saved_kinds(task.variant):
        models["final"] = built.model.SerializeToString()
    return models


def _saving(task: Task, **candidates: Callable[[], bytes]) -> dict[str, bytes]:
    """The ``candidates`` (kind → how to make its bytes) that ``task`` must save."""
    kinds = saved_kinds(task.variant)
    return {kind: make() for kind, make in candidates.items() if kind in kinds}


# ---- variants ---------------------------------------------------------------------------
def _dense(task: Task, train: Dataset, upstream: TaskOutput | None) -> _Built:
    outcome = fit(task, train)
    return _Built(export(outcome.model, task, train), trained_fields(outcome))


def _dead_pruned(task: Task, train: Dataset, upstream: TaskOutput | None) -> _Built:
    outcome = fit(task, train)
    sparse = export(outcome.model, task, train)
    result = compress(sparse, train, replace(SWEEP_COMPRESS, threads=task.threads))
    models = _saving(
        task,
        sparse=sparse.SerializeToString,
        state=lambda: state_bytes(outcome.model.net),  # one member: Probabilities(net)
    )
    fields = {**trained_fields(outcome), **compressed_fields(result)}
    return _Built(result.model, fields, models, scored={"unpruned": sparse})


def _upstream_model(
    task: Task, train: Dataset, upstream: TaskOutput | None
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The model the task compresses: its upstream's saved one, or one it trains itself."""
    import onnx

    (kind,) = REGISTERED[task.variant].reads
    if upstream is not None and kind in upstream.models:
        copied = ("train_accuracy", "dead_channels", "params_torch")
        fields: dict[str, Any] = {k: upstream.row.get(k) for k in copied}
        fields["train_seconds"] = 0.0  # trained by the upstream task
        return onnx.load_from_string(upstream.models[kind]), fields
    outcome = fit(task, train)
    return export(outcome.model, task, train), trained_fields(outcome)


def _rule(task: Task, train: Dataset, upstream: TaskOutput | None) -> _Built:
    from dsp_deploy.options import COMPENSATIONS, DEFAULT_COMPENSATION

    sparse, fields = _upstream_model(task, train, upstream)
    # The same removal under each compensation, so a sweep can check the default one.
    rule = replace(SWEEP_COMPRESS, criterion="dsp", threads=task.threads)
    results = {
        mode: compress(sparse, train, replace(rule, compensation=mode)) for mode in COMPENSATIONS
    }
    result = results[DEFAULT_COMPENSATION]
    scored = {**{mode: r.model for mode, r in results.items()}, "unpruned": sparse}
    return _Built(result.model, {**fields, **compressed_fields(result)}, scored=scored)


def _post_training(task: Task, train: Dataset, upstream: TaskOutput | None) -> _Built:
    """The upstream's ONNX compressed under the variant's criterion, nothing retrained."""
    model, fields = _upstream_model(task, train, upstream)
    criterion = REGISTERED[task.variant].criterion
    # auto judges its candidates on held-out series (k folds on small sets), as the CLI
    # does: the sweep's holdout 0 would leave it nothing to judge on.
    holdout = CompressOptions().holdout if criterion == "auto" else SWEEP_COMPRESS.holdout
    options = replace(SWEEP_COMPRESS, criterion=criterion, threads=task.threads, holdout=holdout)
    result = compress(model, train, options)
    return _Built(result.model, {**fields, **compressed_fields(result)}, scored={"unpruned": model})


def _retrain(task: Task, train: Dataset, upstream: TaskOutput | None) -> _Built:
    states = _upstream_states(task, upstream)
    outcome = fit(task, train, protocol="dsp-retrain", states=states)
    member = outcome.members[0]
    fields = {
        **trained_fields(outcome),
        "retrain_epochs": task.epochs,
        "kept_channels": member.kept,
        "dead_channels": dead_text(member.sparse_analysis),
    }
    return _Built(export(outcome.model, task, train), fields)


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
    outcome = fit(task, train, spec=spec)
    return _Built(export(outcome.model, task, train), {**trained_fields(outcome), "width": width})


# ---- the table --------------------------------------------------------------------------
DEFINED: tuple[Variant, ...] = (
    Variant("dense", _dense),
    Variant("dsp-onnx", _dead_pruned, "paper", checked=True),
    Variant("dsp-onnx-rule", _rule, "paper", "dsp-onnx", ("sparse",), checked=True),
    Variant("dsp-retrain", _retrain, "paper", "dsp-onnx", ("state",), checked=True),
    Variant("dsp-exact", _dead_pruned, "exact", checked=True),
    Variant("narrow", _narrow, "none", "dsp-retrain", required=True),
    Variant(
        "dsp-onnx-auto", _post_training, "paper", "dsp-onnx", ("sparse",), checked=True,
        criterion="auto",
    ),
    Variant(
        "dense-onnx-auto", _post_training, "none", "dense", ("final",), checked=True,
        criterion="auto",
    ),
)  # fmt: skip


def register(criteria: Iterable[str]) -> Mapping[str, Variant]:
    """The variants of :data:`DEFINED` that ``criteria`` (compress's) can run, by name."""
    known = set(criteria)
    chosen = (v for v in DEFINED if v.criterion is None or v.criterion in known)
    return MappingProxyType({v.name: v for v in chosen})


def saved_kinds(variant: str) -> tuple[str, ...]:
    """The model kinds a ``variant`` task saves: those any defined variant reads from it."""
    read = (kind for v in DEFINED if v.upstream == variant for kind in v.reads)
    return tuple(dict.fromkeys(read))


REGISTERED: Mapping[str, Variant] = register(CRITERIA)
VARIANTS: tuple[str, ...] = tuple(REGISTERED)
UPSTREAM: Mapping[str, str] = MappingProxyType(
    {v.name: v.upstream for v in REGISTERED.values() if v.upstream is not None}
)
DSP_VARIANTS: tuple[str, ...] = tuple(v.name for v in REGISTERED.values() if v.penalty != "none")
# compression methods: each against dense, against narrow and against the paper's claim
CHECKED_VARIANTS: tuple[str, ...] = tuple(v.name for v in REGISTERED.values() if v.checked)

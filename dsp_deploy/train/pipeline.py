"""``train`` as one function: members × (DSP training [→ analysis → smaller net → retrain]).

For each member seed ``s`` of the architecture (1, or 5 for the ensembles):

1. seed torch with ``s``; build the published net; train it with CE + λ·DSP penalty
   (:mod:`dsp_deploy.train.loop`);
2. protocol ``none``: that net is the member. Protocol ``dsp-retrain`` (the paper's DSP):
   analyse it on the training set, keep the channels the paper's rule keeps, build the
   smaller net with fresh weights (seed ``s``) and train it again *without* sparsity;
   ``dsp-finetune``: the same, but the smaller net starts from the kept weights.

With those protocols, step 1 can be skipped: given the member's trained DSP weights
(``sparse_states``, e.g. another run's step 1 with the same λ, seed, epochs and data),
the published net is built and loaded with them instead of trained. Training is
deterministic on CPU for a fixed thread count, so the outcome is the one that training
here would give (on a GPU, up to cuDNN's nondeterminism); the member's ``train`` result
is then None.

Every member's tapped channels that are exactly zero after their ReLU on the training set
are reported (:class:`~dsp_deploy.train.protocol.ActivationAnalysis`): those are what
``compress`` can remove from the ONNX graph without changing the outputs on that data.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from dsp_deploy.archs import ArchSpec
from dsp_deploy.errors import InputError
from dsp_deploy.nets.ensemble import probability_model
from dsp_deploy.nets.layers import count_params
from dsp_deploy.train import protocol as dsp
from dsp_deploy.train.loop import (
    EpochRecord,
    TrainConfig,
    TrainResult,
    fit,
    predict_proba,
    seed_torch,
)

log = logging.getLogger(__name__)

PROTOCOLS: tuple[str, ...] = ("none", "dsp-retrain", "dsp-finetune")

# (member index, phase "train" | "retrain", record)
Progress = Callable[[int, str, EpochRecord], None]
State = Mapping[str, torch.Tensor]  # one member's state_dict


@dataclass(frozen=True)
class TrainRequest:
    spec: ArchSpec
    epochs: int = 1500
    sparsity: float | None = None  # None: the arch's λ (the paper's)
    seed: int | None = None  # None: the paper's seeds
    batch_size: int = 64
    protocol: str = "none"
    retrain_epochs: int | None = None  # None: same as epochs
    device: str = "cpu"  # where the epochs run (loop.resolve_device); the model ends on CPU

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise InputError(
                f"unknown protocol {self.protocol!r}; expected one of: {', '.join(PROTOCOLS)}"
            )
        if self.epochs <= 0 or (self.retrain_epochs is not None and self.retrain_epochs <= 0):
            raise InputError(
                f"epochs must be > 0, got {self.epochs} (retrain {self.retrain_epochs})"
            )
        if self.batch_size <= 0:
            raise InputError(f"batch size must be > 0, got {self.batch_size}")
        if self.sparsity is not None and not (math.isfinite(self.sparsity) and self.sparsity >= 0):
            raise InputError(f"sparsity must be a finite number >= 0, got {self.sparsity}")

    @property
    def lam(self) -> float:
        return self.spec.sparsity if self.sparsity is None else self.sparsity

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            sparsity=self.lam,
            layer_weights=self.spec.layer_weights,
            seed=seed,
            device=self.device,
        )


@dataclass(frozen=True)
class MemberOutcome:
    seed: int
    train: TrainResult | None  # None: step 1 not run here (its weights were given)
    analysis: dsp.ActivationAnalysis  # of the final member
    params: int
    train_accuracy: float  # of the final member alone, eval mode, on the training set
    sparse_analysis: dsp.ActivationAnalysis | None = None  # before shrinking (protocols)
    kept: tuple[int, ...] | None = None  # channels kept per tap (protocols)
    retrain: TrainResult | None = None


@dataclass(frozen=True)
class TrainOutcome:
    model: nn.Module  # x -> probabilities, eval mode
    members: tuple[MemberOutcome, ...]
    train_accuracy: float
    seconds: float

    @property
    def params(self) -> int:
        return sum(m.params for m in self.members)


def train(
    request: TrainRequest,
    X: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    *,
    progress: Progress | None = None,
    sparse_states: Sequence[State] | None = None,
) -> TrainOutcome:
    """Train the members of ``request.spec`` on ``(X, y)``; see the module docstring.

    ``sparse_states``: one trained DSP state per member, loaded instead of step 1
    (protocols ``dsp-retrain`` and ``dsp-finetune`` only).
    """
    _check_data(X, y, n_classes)
    seeds = request.spec.member_seeds(request.seed)
    states = _check_states(request, sparse_states, len(seeds))
    start = time.perf_counter()
    nets, outcomes = [], []
    for i, (seed, state) in enumerate(zip(seeds, states, strict=True)):
        net, outcome = _member(request, X, y, n_classes, seed, i, progress, state)
        nets.append(net)
        outcomes.append(outcome)
    model = probability_model(nets)
    accuracy = float(np.mean(predict_proba(model, X).argmax(axis=1) == y))
    return TrainOutcome(model, tuple(outcomes), accuracy, time.perf_counter() - start)


def _member_accuracy(
    net: nn.Module, X: np.ndarray, y: np.ndarray, seed: int, result: TrainResult
) -> float:
    """Eval-mode accuracy of one member on its training set; a warning when it is no
    better than always answering the majority class.

    Two causes, told apart by the best epoch's cross-entropy: near chance (at least half
    of ln K for K classes) the member is *untrained* (too few epochs, a learning rate
    too high or low); below, it learnt in train mode but not in eval mode. Seen here: an
    InceptionTime member (GunPoint, seed 9413, λ = 1e-5) reached its best training loss,
    0.155, in train mode, yet answered one class for 49 of the 50 training series in
    eval mode (BatchNorm's running statistics, not the batch's); the ensemble it belongs
    to still scored 0.993, but the member alone is useless.
    """
    accuracy = float(np.mean(predict_proba(probability_model([net]), X).argmax(axis=1) == y))
    majority = float(np.bincount(y).max() / len(y))
    if accuracy <= majority:
        log.warning(
            "warning: the member with seed %d scores %.3f on its own training set in eval "
            "mode, no better than the majority class (%.3f): %s",
            seed,
            accuracy,
            majority,
            _why_no_better(result, max(int(y.max()) + 1, 2)),
        )
    return accuracy


def _why_no_better(result: TrainResult, classes: int) -> str:
    """Untrained (cross-entropy near chance) or a train/eval mismatch (BatchNorm)."""
    epochs = len(result.history)
    best = result.history[result.best_epoch - 1].ce if epochs >= result.best_epoch > 0 else None
    ce = result.best_loss if best is None else best
    chance = math.log(classes)
    if ce >= 0.5 * chance:
        return (
            f"it looks untrained (best cross-entropy {ce:.4f}, chance is {chance:.4f}, "
            f"after {epochs or '?'} epochs): train longer (--epochs)"
        )
    return (
        f"its best training loss was {ce:.4f}, so its BatchNorm running statistics do not "
        "fit its weights"
    )


def _check_states(
    request: TrainRequest, states: Sequence[State] | None, members: int
) -> tuple[State | None, ...]:
    """One state (or None: train it) per member; ``InputError`` where states cannot apply."""
    if states is None:
        return (None,) * members
    if request.protocol == "none":
        raise InputError(
            "trained DSP states replace the training before a shrink; they need protocol "
            f"dsp-retrain or dsp-finetune, not {request.protocol!r}"
        )
    if len(states) != members:
        raise InputError(
            f"{len(states)} trained DSP states given; expected one per member of "
            f"{request.spec.name}: {members}"
        )
    return tuple(states)


def _check_data(X: np.ndarray, y: np.ndarray, n_classes: int) -> None:
    """``InputError`` unless X is finite (n, C, L) and y holds n labels in [0, n_classes)."""
    if X.ndim != 3 or len(X) == 0 or X.dtype.kind != "f":
        raise InputError(
            f"training inputs have dtype {X.dtype} shape {X.shape}; expected floats (n, C, L)"
        )
    if y.shape != (len(X),) or y.dtype.kind not in "iu":
        raise InputError(
            f"training labels have dtype {y.dtype} shape {y.shape}; expected {len(X)} integers"
        )
    if n_classes < 2 or y.min() < 0 or y.max() >= n_classes:
        raise InputError(
            f"training labels span [{y.min()}, {y.max()}]; expected indices into "
            f"{n_classes} classes (at least 2)"
        )
    if not np.isfinite(X).all():
        raise InputError("training inputs hold NaN/inf values; expected finite numbers")


def _member(
    request: TrainRequest,
    X: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    seed: int,
    index: int,
    progress: Progress | None,
    state: State | None,
) -> tuple[nn.Module, MemberOutcome]:
    def report(phase: str) -> Callable[[EpochRecord], None] | None:
        return None if progress is None else (lambda r: progress(index, phase, r))

    seed_torch(seed)
    net = request.spec.build(n_classes)
    result: TrainResult | None = None
    if state is None:
        result = fit(net, X, y, request.train_config(seed), progress=report("train"))
    else:
        _load(net, state, index)
    analysis = dsp.analyse(net, X)
    log.info("member %d (seed %d): dead channels per tap %s", index, seed, analysis.dead_counts)
    if request.protocol == "none":
        assert result is not None  # _check_states gives no state without a protocol
        accuracy = _member_accuracy(net, X, y, seed, result)
        return net, MemberOutcome(seed, result, analysis, count_params(net), accuracy)
    keep = dsp.keep_indices(analysis, request.spec.min_count, dsp.keep_groups(net))
    reinit = seed if request.protocol == "dsp-retrain" else None
    small = dsp.shrink(net, keep, reinit_seed=reinit)
    config = replace(
        request.train_config(seed), sparsity=0.0, epochs=request.retrain_epochs or request.epochs
    )
    retrain = fit(small, X, y, config, progress=report("retrain"))
    outcome = MemberOutcome(
        seed,
        result,
        dsp.analyse(small, X),
        count_params(small),
        _member_accuracy(small, X, y, seed, retrain),
        sparse_analysis=analysis,
        kept=tuple(len(k) for k in keep),
        retrain=retrain,
    )
    return small, outcome


def _load(net: nn.Module, state: State, index: int) -> None:
    """Load member ``index``'s trained DSP weights into ``net``, as ``fit`` leaves it."""
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise InputError(f"trained DSP state of member {index} does not fit its net: {e}") from e
    net.eval()

"""The papers' training schedule for one network, with the optional DSP loss.

Per epoch: shuffle the training set (the last batch may be partial), and for each batch
minimise ``CE(f(x), y) + λ · Σ_l w_l · L2,1(F_l)`` with Adam (lr 1e-3). The epoch loss is
the sample-weighted mean of the batch losses (Keras' ``loss``); ReduceLROnPlateau on it
(factor 0.5, patience 50, min lr 1e-4); the weights of the epoch with the lowest loss are
restored at the end. There is no validation split, as in the UCR papers.

Decisions:

* **Checkpoint = minimum total train loss** (PAPER.md §9.9), sparsity term included, as
  the authors and the original Keras code: a reproduction first.
* ``sparsity = 0`` is the dense baseline: the loss is exactly the cross-entropy.
* Determinism: ``seed`` seeds the initialisation (call :func:`seed_torch` before
  building the net) and a private CPU generator for the shuffles, so the batches are the
  same on every device; CPU kernels are deterministic for a fixed thread count, CUDA's
  are not (cuDNN picks its algorithms), so a GPU run is not bit-identical to a CPU run.
* Device: ``config.device`` (``cpu``, ``cuda``, ``cuda:N``) holds the weights and the
  data during the epochs only; ``fit`` returns the model on the CPU, where the analysis,
  the ONNX export and ``compress`` expect it.
* The data stay in memory as tensors and batches are index slices: no DataLoader, whose
  per-batch overhead is comparable to a LITE step on small UCR sets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dsp_deploy.errors import InputError
from dsp_deploy.train.sparsity import dsp_penalty

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    sparsity: float = 0.0
    layer_weights: tuple[float, ...] = ()
    seed: int = 0
    lr_factor: float = 0.5
    lr_patience: int = 50
    min_lr: float = 1e-4
    device: str = "cpu"  # where the epochs run; see :func:`resolve_device`

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0:
            raise InputError(
                f"epochs and batch size must be > 0, got {self.epochs}, {self.batch_size}"
            )
        if self.sparsity < 0 or self.lr <= 0:
            raise InputError(f"sparsity must be >= 0 and lr > 0, got {self.sparsity}, {self.lr}")


@dataclass(frozen=True)
class EpochRecord:
    epoch: int  # 1-based
    loss: float  # total = ce + sparsity
    ce: float
    sparsity: float
    lr: float  # the rate used during this epoch


@dataclass(frozen=True)
class TrainResult:
    history: tuple[EpochRecord, ...]
    best_epoch: int
    best_loss: float
    seconds: float


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``;
    ``InputError`` for anything else or for a GPU this torch cannot use."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}; expected auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"unsupported device {name!r}; expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else "no visible GPU"
            raise InputError(f"device {name!r}: torch {torch.__version__} has {build}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(
                f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
    return device


def seed_torch(seed: int) -> None:
    """Seed torch's global generator (weight initialisation)."""
    torch.manual_seed(seed)


def fit(
    model: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    config: TrainConfig,
    *,
    progress: Callable[[EpochRecord], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place; it ends holding its best-epoch weights, in eval mode.

    ``model`` must offer ``forward_with_taps(x) -> (logits, taps)`` with one tap per
    entry of ``config.layer_weights`` when ``config.sparsity > 0``. The epochs run on
    ``config.device``; the model is returned on the CPU.
    """
    device = resolve_device(config.device)
    xs = torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32))
    ys = torch.as_tensor(np.asarray(y, dtype=np.int64))
    if len(xs) == 0 or len(xs) != len(ys):
        raise InputError(f"training data: {len(xs)} series but {len(ys)} labels")
    xs, ys = xs.to(device), ys.to(device)
    model.to(device)  # before the optimiser: Adam's state follows the parameters
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, factor=config.lr_factor, patience=config.lr_patience, min_lr=config.min_lr
    )
    history: list[EpochRecord] = []
    best: dict[str, torch.Tensor] = {}
    best_loss, best_epoch = float("inf"), 0
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        lr = opt.param_groups[0]["lr"]
        record = _epoch(model, opt, xs, ys, config, gen, epoch, lr)
        sched.step(record.loss)
        history.append(record)
        if record.loss < best_loss:
            best_loss, best_epoch = record.loss, epoch
            best = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if progress is not None:
            progress(record)
    model.load_state_dict(best)
    model.to("cpu")
    model.eval()
    seconds = time.perf_counter() - start
    log.info(
        "trained %d epochs on %s in %.1f s; best epoch %d loss %.5f",
        config.epochs,
        device,
        seconds,
        best_epoch,
        best_loss,
    )
    return TrainResult(tuple(history), best_epoch, best_loss, seconds)


def _epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    xs: torch.Tensor,
    ys: torch.Tensor,
    config: TrainConfig,
    gen: torch.Generator,
    epoch: int,
    lr: float,
) -> EpochRecord:
    model.train()
    order = torch.randperm(len(xs), generator=gen).to(xs.device)
    # ce, sparsity, weighted by batch size; on the device, so a step never waits for it
    sums = torch.zeros(2, dtype=torch.float64, device=xs.device)
    for batch in order.split(config.batch_size):
        xb, yb = xs[batch], ys[batch]
        logits, taps = model.forward_with_taps(xb)
        ce = F.cross_entropy(logits, yb)
        penalty = dsp_penalty(taps, _weights(config, len(taps)), config.sparsity)
        opt.zero_grad(set_to_none=True)
        (ce + penalty).backward()
        opt.step()
        sums += torch.stack([ce.detach(), penalty.detach()]).double() * len(batch)
    ce_mean, sp_mean = (sums / len(xs)).tolist()
    return EpochRecord(epoch, ce_mean + sp_mean, ce_mean, sp_mean, lr)


def _weights(config: TrainConfig, n_taps: int) -> Sequence[float]:
    if config.sparsity == 0.0:
        return (0.0,) * n_taps
    if len(config.layer_weights) != n_taps:
        raise InputError(
            f"the model has {n_taps} tapped layers but "
            f"{len(config.layer_weights)} layer weights were given"
        )
    return config.layer_weights


def predict_proba(model: nn.Module, X: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Softmax outputs of ``model`` (eval mode, no grad) on ``X``, as float32 numpy."""
    model.eval()
    xs = torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32))
    with torch.no_grad():
        out = [torch.softmax(model(xb), dim=-1) for xb in xs.split(batch_size)]
    return torch.cat(out).numpy()

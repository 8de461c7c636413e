"""Training budgets of a sweep: ``paper`` (a cluster) and ``cpu-small`` (one small machine).

A protocol fixes, in one place, everything that decides what a sweep costs and what its
numbers mean: which datasets run, how long each network trains, which seeds, how strong
the ``dsp-exact`` penalty is, and how latency is timed.

Budget in optimiser steps, not epochs
-------------------------------------
DSP's penalty acts once per optimiser step, so how far channels die depends on the number
of steps, not of epochs (``benchmarks/results/cpu_small_budget.md``). A set of 1,000
series takes 16 steps per epoch, so the same 1500 epochs are 24,000 steps
there. ``cpu-small`` therefore trains every network for about ``target_steps`` steps::

    steps_per_epoch(n) = ⌈n / batch_size⌉
    epochs(n)          = clamp(⌈target_steps / steps_per_epoch(n)⌉, min_epochs, max_epochs)

The floor keeps ReduceLROnPlateau (patience 50 epochs) meaningful on large sets; the cap
is the paper's 1500 epochs, so a tiny set never trains longer than in the paper. ``paper``
trains a fixed 1500 epochs (``target_steps = None``).

Datasets chosen by size
-----------------------
The cost of one step is proportional to ``min(n, batch_size) · L`` (series in the batch ×
length), so, with a fixed number of steps, so is the cost of a training. ``cpu-small``
admits a dataset when ``min(n_train, batch_size) · L ≤ max_step_cells[family]``: a bound
per architecture family, since an InceptionTime step costs ~5× a LITE step (measured in
``benchmarks/results/cpu_small_budget.md``).

Why ``target_steps = 1500``: it is where the paper's λ already gives exact zeros on small
sets but not yet on sets of hundreds, where ``dsp-onnx`` therefore compresses little;
``dsp-exact`` (λ = 1e-4) gives exact zeros within that budget at the accuracy of the
same-budget dense net. ``cpu-small`` compares variants at one budget; its dense accuracies
are not the published ones (``paper`` on a cluster is for that). Inception's ``dsp-exact``
λ is LITE's, not measured for Inception. The measurements behind these choices:
``benchmarks/results/cpu_small_budget.md``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from dsp_deploy.errors import InputError

PAPER_SEEDS: tuple[int, ...] = (9409, 3804, 3952, 2561, 5296)


@dataclass(frozen=True)
class Protocol:
    """A sweep's budget; see the module docstring for how each field is used."""

    name: str
    seeds: tuple[int, ...]
    target_steps: int | None  # None: train exactly `max_epochs` epochs
    min_epochs: int
    max_epochs: int
    batch_size: int = 64
    # (family, bound on min(n_train, batch) · L); a family absent here is unbounded
    max_step_cells: tuple[tuple[str, int], ...] = ()
    # (family, λ) of the dsp-exact variant
    exact_sparsity: tuple[tuple[str, float], ...] = (("lite", 1e-4), ("inception", 1e-4))
    latency_runs: int = 100  # timed batch-1 calls per model (median reported)

    def __post_init__(self) -> None:
        if not self.seeds:
            raise InputError(f"protocol {self.name!r} needs at least one seed")
        if not 1 <= self.min_epochs <= self.max_epochs:
            raise InputError(
                f"protocol {self.name!r}: expected 1 <= min_epochs <= max_epochs, "
                f"got {self.min_epochs}, {self.max_epochs}"
            )
        if self.target_steps is not None and self.target_steps < 1:
            raise InputError(f"protocol {self.name!r}: target_steps must be >= 1")

    def epochs_for(self, n_train: int) -> int:
        """Epochs for a training set of ``n_train`` series (≈ ``target_steps`` steps)."""
        if self.target_steps is None:
            return self.max_epochs
        per_epoch = math.ceil(n_train / self.batch_size)
        return min(max(math.ceil(self.target_steps / per_epoch), self.min_epochs), self.max_epochs)

    def step_cells(self, n_train: int, length: int) -> int:
        """``min(n_train, batch_size) · L``: what one optimiser step costs, up to a factor."""
        return min(n_train, self.batch_size) * length

    def admits(self, family: str, n_train: int, length: int) -> bool:
        """Whether a dataset of this size is in the protocol for ``family``."""
        bound = dict(self.max_step_cells).get(family)
        return bound is None or self.step_cells(n_train, length) <= bound

    def exact_lambda(self, family: str) -> float:
        try:
            return dict(self.exact_sparsity)[family]
        except KeyError:
            raise InputError(f"protocol {self.name!r} sets no dsp-exact λ for {family!r}") from None

    def with_overrides(
        self,
        *,
        epochs: int | None = None,
        seeds: tuple[int, ...] | None = None,
        exact_sparsity: float | None = None,
    ) -> Protocol:
        """A copy with a fixed epoch count, other seeds and/or one dsp-exact λ for all."""
        out = self
        if epochs is not None:
            out = replace(out, target_steps=None, min_epochs=epochs, max_epochs=epochs)
        if seeds is not None:
            out = replace(out, seeds=seeds)
        if exact_sparsity is not None:
            families = tuple(f for f, _ in out.exact_sparsity)
            out = replace(out, exact_sparsity=tuple((f, exact_sparsity) for f in families))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples become lists); ``from_dict`` reads it back."""
        return asdict(self)

    @staticmethod
    def from_dict(values: dict[str, Any]) -> Protocol:
        pairs = ("max_step_cells", "exact_sparsity")
        fixed = {k: tuple(tuple(p) for p in v) if k in pairs else v for k, v in values.items()}
        fixed["seeds"] = tuple(fixed["seeds"])
        return Protocol(**fixed)


PAPER = Protocol("paper", PAPER_SEEDS, target_steps=None, min_epochs=1500, max_epochs=1500)

CPU_SMALL = Protocol(
    "cpu-small",
    PAPER_SEEDS[:3],
    target_steps=1500,
    min_epochs=100,
    max_epochs=1500,
    # LITE: up to a full batch of length 512; InceptionTime: up to 64 × 150 (GunPoint-sized).
    max_step_cells=(("lite", 64 * 512), ("inception", 64 * 150)),
    latency_runs=100,
)

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (PAPER, CPU_SMALL)}


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name`` or ``InputError`` listing the known ones."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise InputError(
            f"unknown protocol {name!r}; expected one of: {', '.join(PROTOCOLS)}"
        ) from None

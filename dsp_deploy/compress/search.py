"""``--criterion auto``: as much compression as the gates allow, with no ratio to give.

One knob: how far down the global ranking (``compress.selection``) to remove, counted
in MACs. With ``cum[n]`` the estimated fraction of MACs the first n ranked units carry
(non-decreasing, cum[0] = 0, cum[N] = 1), the search climbs a fixed ladder of MACs
shares removed,

    f_k = 1 − (1 − STEP)^k,   k = 1, 2, …     (STEP = 0.2: 20%, 36%, 49%, 59%, 67%, …)

each rung keeping (1 − STEP) of the MACs the previous one kept. Rung k is the smallest
depth n with cum[n] ≥ f_k; rungs that land on a depth already passed are skipped, and
the depth N (every removable unit: the net it leaves keeps one channel per stage) is
taken to fail unevaluated. The climb stops at the first candidate that fails its gates
and returns the last one that passed (depth 0, the model itself, when the first fails).

Why a fixed ladder and not a bisection. Each candidate's gates are a level-α test
(α = 1 − ``--confidence``) of "its accuracy drop exceeds the threshold" on the judged
series. A search that *picks* among several tested candidates inflates α: a bisection
moves past every candidate that passes by luck, so the chosen depth is bad when any
bad candidate it tries passes (up to ~6α over its 6 tries). Testing rungs in an order
fixed before the judged series are seen, stopping at the first failure (the
fixed-sequence procedure, Maurer et al. 1995; Westfall & Krishen 2001), keeps the
chance that the *returned* candidate is bad at ≤ α with no correction: let k₀ be the
first bad rung (fixed by the calibration data alone); returning a bad candidate needs
rung k₀ to pass, which happens with probability ≤ α. No monotonicity is assumed. The
price is resolution: the returned model keeps at most 1 / (1 − STEP) = 1.25× the MACs
of the deepest rung that would pass, and a failing rung ends the climb even if a deeper
one would pass by luck. ``tests/test_compress_auto.py`` measures both searches' error
rate on simulated candidates.

A candidate is the plan removing the first n units (``selection.prefix_plan``), pruned
and reconstructed on the decision part (``compress.reconstruct``; ``--compensation
mean`` or ``none``: without reconstruction), run on the judged series and judged by
``compress.gates`` — the same gates the written model must pass. The curve of every
candidate (units, MACs and params removed, judged agreement and accuracy) comes back
in ``SearchReport``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from dsp_deploy.compress.verify import ParityReport, compare

__all__ = ["Candidate", "SearchReport", "climb", "rungs", "search"]

logger = logging.getLogger(__name__)

STEP = 0.2  # each rung keeps 80% of the MACs the one below it kept
MIN_KEPT = 0.005  # the last rung keeps 0.5% of the MACs: at most 24 rungs


@dataclass(frozen=True)
class Candidate:
    """One evaluated depth of the ranking: its cost and what the gates said."""

    units: int  # ranked units asked to go
    removed: int  # units the plan removes (the rules keep some back)
    macs: float  # fraction of MACs removed (measured on the pruned model)
    params: float  # fraction of parameters removed
    agreement: float  # held-out argmax agreement with the original
    accuracy: tuple[float, float] | None  # held-out accuracy (original, candidate)
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict:
        return {
            "units": self.units,
            "removed": self.removed,
            "macs_removed": self.macs,
            "params_removed": self.params,
            "agreement": self.agreement,
            "accuracy": None if self.accuracy is None else list(self.accuracy),
            "passed": self.passed,
            "failures": list(self.failures),
        }


@dataclass(frozen=True)
class SearchReport:
    """Every candidate in the order evaluated, the depth chosen, the ranking's size."""

    candidates: tuple[Candidate, ...]
    chosen: int
    ranked: int
    labels: bool  # whether accuracy gated the candidates (else agreement alone)

    def curve(self) -> tuple[Candidate, ...]:
        """The candidates by depth: the compression-vs-fidelity curve."""
        return tuple(sorted(self.candidates, key=lambda c: c.units))

    def as_dict(self) -> dict:
        return {
            "chosen_units": self.chosen,
            "ranked_units": self.ranked,
            "gated_on": "agreement and accuracy" if self.labels else "agreement alone",
            "curve": [c.as_dict() for c in self.curve()],
        }


def rungs(step: float = STEP, min_kept: float = MIN_KEPT) -> tuple[float, ...]:
    """The ladder's MACs shares removed, f_k = 1 − (1 − step)^k, while 1 − f_k ≥ min_kept."""
    if not 0 < step < 1:
        raise ValueError(f"the ladder's step must be in (0, 1), got {step}")
    count = int(np.floor(np.log(min_kept) / np.log(1 - step) + 1e-9))
    return tuple(1 - (1 - step) ** k for k in range(1, count + 1))


def climb(passes: Callable[[int], bool], cum: Sequence[float], *, step: float = STEP) -> int:
    """The last depth of the fixed ladder that passes, stopping at the first failure
    (module docstring); ``passes(n)`` is asked in increasing n, each depth at most once."""
    cum = np.asarray(cum, dtype=np.float64)
    top, chosen = len(cum) - 1, 0
    for target in rungs(step):
        n = int(np.searchsorted(cum, target - 1e-12))  # smallest n with cum[n] ≥ target
        if n <= chosen:
            continue
        if n >= top or not passes(n):
            break
        chosen = n
    return chosen


@dataclass(frozen=True)
class Judge:
    """What a candidate is measured against: the original's outputs on the decision part,
    and ``held(n, model)``, the judged series' report of depth n (a held-out part, an
    ``--eval`` set, or every series over k folds: ``compress.auto``)."""

    decision: tuple[tuple[np.ndarray, ...], dict, np.ndarray | None]  # outputs, inputs, y
    held: Callable[[int, onnx.ModelProto], ParityReport]
    labelled: bool  # whether the judged series carry labels
    tolerance: tuple[float, float]  # atol, rtol
    gate: Callable[[ParityReport, ParityReport], tuple[str, ...]]


def _report(part, outputs_of: Callable, model: onnx.ModelProto, tol) -> ParityReport:
    reference, inputs, labels = part
    return compare(reference, outputs_of(model, inputs), atol=tol[0], rtol=tol[1], labels=labels)


def search(
    ranked: int,
    cum: Sequence[float],
    build: Callable[[int], tuple[onnx.ModelProto, int]],  # model, units its plan removes
    cost: Callable[[onnx.ModelProto], tuple[float, float]],
    judge: Judge,
    outputs_of: Callable,
    progress: Callable[[Candidate], None] | None = None,
) -> tuple[SearchReport, onnx.ModelProto | None]:
    """Climb the ranking's depth (module docstring). ``build(n)`` gives the candidate
    model and the units its plan removes; ``cost(model)`` its (MACs, params) removed.
    Returns the report and the chosen candidate's model (None: depth 0)."""
    found: list[Candidate] = []
    passed: dict[int, onnx.ModelProto] = {}

    def passes(n: int) -> bool:
        model, removed = build(n)
        decision = _report(judge.decision, outputs_of, model, judge.tolerance)
        held = judge.held(n, model)
        macs, params = cost(model)
        candidate = Candidate(
            n, removed, macs, params, held.agreement, held.accuracy, judge.gate(decision, held)
        )
        found.append(candidate)
        logger.info("auto: %d units (%.0f%% MACs): %s", n, 100 * macs, candidate.failures or "ok")
        if progress is not None:
            progress(candidate)
        if candidate.passed:  # the climb only moves up past a pass: keep the last
            passed.clear()
            passed[n] = model
        return candidate.passed

    chosen = climb(passes, cum)
    labels = judge.labelled
    return SearchReport(tuple(found), chosen, ranked, labels), passed.get(chosen)

"""``--criterion auto``: as much compression as the gates allow, with no ratio to give.

One knob: how far down the global ranking (``compress.selection``) to remove, counted
in MACs. With ``cum[n]`` the estimated fraction of MACs the first n ranked units carry
(non-decreasing, cum[0] = 0, cum[N] = 1), the search keeps lo (largest n known to pass;
n = 0 is the model itself) and hi (smallest known to fail; n = N, every removable unit,
is taken to fail unevaluated: the net it leaves keeps one channel per stage), evaluating

    mid = the n with cum[n] nearest (cum[lo] + cum[hi]) / 2,   lo < mid < hi

until hi − lo ≤ 1, cum[hi] − cum[lo] ≤ ``resolution`` or ``max_steps`` candidates were
evaluated; it returns lo. So it needs about ⌈log₂(1 / resolution)⌉ candidates (6 at the
default 2%), and never returns a candidate that failed or was not evaluated (except
n = 0, the model itself). Bisection assumes that passing is monotone in n, which holds
roughly: a deeper cut removes a superset of the channels.

A candidate is the plan removing the first n units (``selection.prefix_plan``), pruned
and reconstructed on the decision part (``compress.reconstruct``; ``--compensation
mean`` or ``none``: without reconstruction), run on the held-out part and judged by
``compress.gates`` — the same gates the written model must pass. The curve of every
candidate (units, MACs and params removed, held-out agreement and accuracy) comes back
in ``SearchReport``; the held-out part that chose the candidate also gates it, so its
numbers are optimistic: ``--eval`` on a separate set says more.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from dsp_deploy.compress.verify import ParityReport, compare

__all__ = ["Candidate", "SearchReport", "bisect", "search"]

logger = logging.getLogger(__name__)

RESOLUTION = 0.02  # stop when the bracket spans at most 2% of the model's MACs
MAX_STEPS = 8


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


def _nearest(cum: Sequence[float], target: float, lo: int, hi: int) -> int:
    """The index in (lo, hi) whose cum is nearest ``target``."""
    k = int(np.searchsorted(cum, target))
    best = min((k - 1, k), key=lambda i: abs(cum[i] - target) if 0 <= i < len(cum) else np.inf)
    return min(max(best, lo + 1), hi - 1)


def bisect(
    passes: Callable[[int], bool],
    cum: Sequence[float],
    *,
    resolution: float = RESOLUTION,
    max_steps: int = MAX_STEPS,
) -> int:
    """The largest depth n in [0, len(cum) − 1] found to pass (module docstring)."""
    lo, hi = 0, len(cum) - 1
    if hi <= 0:
        return 0
    if hi == 1:
        return 1 if passes(1) else 0
    steps = 0
    while hi - lo > 1 and cum[hi] - cum[lo] > resolution + 1e-12 and steps < max_steps:
        mid = _nearest(cum, (cum[lo] + cum[hi]) / 2, lo, hi)
        steps += 1
        if passes(mid):
            lo = mid
        else:
            hi = mid
    return lo


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
    """Bisect the ranking's depth (module docstring). ``build(n)`` gives the candidate
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
        if candidate.passed:  # bisection only ever moves up past a pass: keep the last
            passed.clear()
            passed[n] = model
        return candidate.passed

    chosen = bisect(passes, cum)
    labels = judge.labelled
    return SearchReport(tuple(found), chosen, ranked, labels), passed.get(chosen)

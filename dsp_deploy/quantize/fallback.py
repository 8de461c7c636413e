"""Sensitivity-ordered fallback: keep the most harmful layers in float until the gates pass.

The idea of NNCF's accuracy-controlled quantization, on onnxruntime's quantizer. Each
quantizable node ``n`` (a Conv, Gemm or MatMul with constant weights) gets a harm score::

    harm(n) = mean |p_all(x) − p(x)| − mean |p_all∖n(x) − p(x)|

on the decision samples: how much closer to the float outputs ``p`` the model comes when
``n`` alone is kept in float (``p_all``: everything quantized; ``p_all∖n``: all but
``n``). That is one quantization and one run per node (no calibration: the ranges are
computed once). Then configurations are tried in order — nothing in float, the most
harmful node in float, the two most harmful, ... — and the first that ``passes`` is
taken (``first_passing``), so no more layers stay in float than needed; when none
passes up to ``max_float`` nodes the last one tried is returned with ``passed`` False.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["Attempt", "first_passing", "harm_order"]

C = TypeVar("C")  # a candidate model (anything the caller's trial returns)


@dataclass(frozen=True)
class Attempt(Generic[C]):
    """The configuration taken: nodes kept in float, the candidate, its failures (empty
    when it passed), and how many configurations were tried."""

    kept_float: tuple[str, ...]
    candidate: C
    failures: tuple[str, ...]
    tried: int

    @property
    def passed(self) -> bool:
        return not self.failures


def harm_order(
    nodes: Sequence[str], deviation: Callable[[tuple[str, ...]], float]
) -> tuple[str, ...]:
    """``nodes`` by decreasing ``harm`` (module doc); ``deviation(kept_float)`` is the
    mean output deviation from float with those nodes in float. Ties keep graph order."""
    base = deviation(())
    harm = [base - deviation((n,)) for n in nodes]
    order = sorted(range(len(nodes)), key=lambda i: (-harm[i], i))
    logger.debug("harm: %s", {nodes[i]: round(harm[i], 6) for i in order})
    return tuple(nodes[i] for i in order)


def first_passing(
    order: Sequence[str],
    trial: Callable[[tuple[str, ...]], tuple[C, tuple[str, ...]]],
    max_float: int | None = None,
) -> Attempt[C]:
    """Try ``order[:k]`` in float for k = 0, 1, ... (at most ``max_float``); stop at the
    first configuration whose ``trial`` reports no failures."""
    limit = len(order) if max_float is None else min(max_float, len(order))
    for k in range(limit + 1):
        kept = tuple(order[:k])
        candidate, failures = trial(kept)
        logger.info("%d node(s) in float: %s", k, "; ".join(failures) or "passes")
        if not failures:
            return Attempt(kept, candidate, (), k + 1)
    return Attempt(kept, candidate, failures, limit + 1)


def mean_deviation(reference: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> float:
    """``mean |a − b|`` over the first output (the class scores)."""
    return float(np.mean(np.abs(reference[0].astype(np.float64) - outputs[0])))

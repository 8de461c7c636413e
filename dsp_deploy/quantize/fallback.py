"""Sensitivity-ordered fallback: keep the most sensitive layers in float until the gates pass.

The idea of NNCF's accuracy-controlled quantization, on onnxruntime's quantizer.

Sensitivity. Each quantizable node ``n`` (a Conv, Gemm or MatMul with constant weights)
is quantized *alone* (every other one in float) and scored on the decision samples by
the mean squared error of the class probabilities against the float model's::

    s(n) = mean_i ‖π(f_n(x_i)) − π(f(x_i))‖²,   π = softmax, unless the outputs already
                                                 are probabilities (rows ≥ 0 summing to 1)

(``probability_mse``): what one layer's quantization does to the decision, not to some
intermediate tensor. One quantization and one run per node; the ranges are computed once.
(The first version scored the harm of keeping ``n`` in float with all else quantized:
with everything quantized the noise of the other layers masks ``n``'s, and on Inception
it ranked the two input convs first but the rest almost at random.)

Configurations. Tried in order, the first that ``passes`` is taken (``first_passing``),
so no more layers stay in float than the search needs:

    (),  I,  S[:1],  S[:2],  …,  S[:max_float]

where ``I`` are the nodes that read a graph input (``input_nodes``: the first convs,
which see the raw series and, with a BatchNorm folded in, the largest weights) and
``S`` the nodes by decreasing sensitivity (duplicates dropped, ``configurations``). When
none passes the last one tried is returned with ``passed`` False.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "Attempt",
    "configurations",
    "first_passing",
    "mean_deviation",
    "probabilities",
    "probability_mse",
    "sensitivity_order",
]

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


def sensitivity_order(nodes: Sequence[str], alone: Callable[[str], float]) -> tuple[str, ...]:
    """``nodes`` by decreasing ``alone(n)`` (``s(n)``, module doc); ties keep graph order."""
    score = [alone(n) for n in nodes]
    order = sorted(range(len(nodes)), key=lambda i: (-score[i], i))
    logger.debug("sensitivity: %s", {nodes[i]: float(score[i]) for i in order})
    return tuple(nodes[i] for i in order)


def configurations(
    first: Sequence[str], order: Sequence[str], max_float: int | None = None
) -> tuple[tuple[str, ...], ...]:
    """(), ``first`` (when within ``max_float``), then ``order[:k]`` for k = 1 …
    ``max_float``; each configuration once."""
    limit = len(order) if max_float is None else min(max_float, len(order))
    seen: list[tuple[str, ...]] = [()]
    candidates: Iterable[tuple[str, ...]] = (tuple(first),) if 0 < len(first) <= limit else ()
    for kept in (*candidates, *(tuple(order[:k]) for k in range(1, limit + 1))):
        if kept not in seen:
            seen.append(kept)
    return tuple(seen)


def first_passing(
    configs: Sequence[tuple[str, ...]],
    trial: Callable[[tuple[str, ...]], tuple[C, tuple[str, ...]]],
) -> Attempt[C]:
    """Try each configuration of ``configs`` in turn; stop at the first whose ``trial``
    reports no failures (else the last one, with its failures)."""
    for k, kept in enumerate(configs, 1):
        candidate, failures = trial(kept)
        logger.info("%d node(s) in float: %s", len(kept), "; ".join(failures) or "passes")
        if not failures:
            return Attempt(kept, candidate, (), k)
    return Attempt(kept, candidate, failures, len(configs))


def probabilities(scores: np.ndarray) -> np.ndarray:
    """``scores`` as class probabilities: kept when rows are ≥ 0 and sum to 1, else softmax."""
    s = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    if np.all(s >= 0) and np.allclose(s.sum(axis=1), 1.0, atol=1e-4):
        return s
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def probability_mse(reference: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> float:
    """``mean_i ‖π(outputs) − π(reference)‖²`` over the first output (module doc)."""
    diff = probabilities(reference[0]) - probabilities(outputs[0])
    return float(np.mean(np.sum(diff**2, axis=1)))


def mean_deviation(reference: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> float:
    """``mean |a − b|`` over the first output (the class scores)."""
    return float(np.mean(np.abs(reference[0].astype(np.float64) - outputs[0])))

"""Checking an ensemble against its members: a report, not an exception.

``verify(members, ensemble)`` runs seeded standard-normal inputs through onnxruntime
(the ensemble's fixed batch, else ``samples``) and compares the ensemble's output with
the float64 mean of the members' probabilities (a logits member's softmax taken in
float64). It returns an ``EnsembleCheck``; the caller decides what a failure means
(``dsp-deploy ensemble`` writes nothing and exits 1).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from dsp_deploy.ensemble.members import LOGITS, dims, signature, static_int
from dsp_deploy.signature import softmax

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnsembleCheck:
    """Max |ensemble − mean member probabilities| on ``samples`` inputs, against
    ``atol``; ``mismatch`` names a member whose output shape differs (then no diff)."""

    samples: int
    atol: float
    max_abs_diff: float
    mismatch: str | None = None

    @property
    def failure(self) -> str | None:
        """Why the ensemble fails the check (one line), or None."""
        if self.mismatch is not None:
            return self.mismatch
        if not self.max_abs_diff <= self.atol:  # NaN fails too
            return (
                "ensemble output differs from the mean of its members' probabilities by "
                f"{self.max_abs_diff:.3g} on {self.samples} random inputs (tolerance {self.atol:g})"
            )
        return None

    @property
    def passed(self) -> bool:
        return self.failure is None


def verify(
    members: Sequence[onnx.ModelProto],
    ensemble: onnx.ModelProto,
    *,
    samples: int = 32,
    seed: int = 0,
    atol: float = 1e-6,
) -> EnsembleCheck:
    """The ensemble against the mean of its members' probabilities (module doc)."""
    from dsp_deploy.cost import input_shapes
    from dsp_deploy.inference import run_model

    fixed = static_int(dims(ensemble.graph.input[0])[0])
    (shape,) = input_shapes(ensemble, batch=fixed or samples)
    x = np.random.default_rng(seed).standard_normal(shape.shape).astype(shape.dtype)
    got = run_model(ensemble, {shape.name: x})[0]
    probs = []
    for i, member in enumerate(members):
        sig = signature(member, f"member {i}")
        out = run_model(member, {sig.input.name: x})[0].astype(np.float64)
        if out.shape != got.shape:
            text = f"{sig.label} outputs shape {out.shape}; the ensemble outputs {got.shape}"
            return EnsembleCheck(samples, atol, float("nan"), text)
        probs.append(softmax(out) if sig.output_kind == LOGITS else out)
    diff = float(np.max(np.abs(got.astype(np.float64) - np.mean(probs, axis=0))))
    logger.info("ensemble checked on %d inputs: max |diff| %.3g", samples, diff)
    return EnsembleCheck(samples, atol, diff)

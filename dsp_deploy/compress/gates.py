"""The gates a compressed model must pass before ``compress`` writes it.

Any failing gate is one line in ``CompressResult.failures`` (the CLI exits 1 and writes
nothing unless ``--force``):

* lossless options (``dead``, threshold 0): outputs on every calibration sample within
  ``atol + rtol·|y|``;
* held-out part: argmax agreement ≥ ``min_agreement``;
* with labels: accuracy drop (held-out part, or the decision part when nothing is held
  out) ≤ ``max_accuracy_drop``.

``split`` draws the held-out part: a seeded permutation, ``round(n · holdout)`` samples
(at most n − 1), none for lossless options, which decide on every sample.
"""

from __future__ import annotations

import numpy as np

from dsp_deploy.compress.verify import ParityReport
from dsp_deploy.options import CompressOptions

__all__ = ["gates", "split"]


def split(n: int, holdout: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Decision and held-out sample indices (held-out empty when n · holdout < 1)."""
    order = np.random.default_rng(seed).permutation(n)
    k = min(int(round(n * holdout)), n - 1)
    return np.sort(order[k:]), np.sort(order[:k])


def gates(
    options: CompressOptions, decision: ParityReport, holdout: ParityReport | None
) -> tuple[str, ...]:
    """One line per failing gate (module docstring); empty when all pass."""
    failures = []
    if options.lossless and not decision.within_tolerance:
        failures.append(
            f"outputs deviate on the calibration samples (max |Δ| {decision.max_abs_diff:.3g})"
        )
    if holdout is not None and holdout.agreement < options.min_agreement:
        failures.append(
            f"held-out prediction agreement {holdout.agreement:.4f} < {options.min_agreement}"
        )
    judged = holdout if holdout is not None and holdout.accuracy else decision
    drop = options.max_accuracy_drop
    if judged.accuracy is not None and judged.accuracy[0] - judged.accuracy[1] > drop:
        before, after = judged.accuracy
        failures.append(f"accuracy drops {before:.4f} → {after:.4f} (> {drop})")
    return tuple(failures)

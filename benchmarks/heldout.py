"""The held-out data the post-training benchmarks give ``--eval``: half of the test split.

A finished model has memorised its training split, so gates that judge training series
see almost none of the accuracy a compressed or quantized model loses (measured:
``benchmarks/results/posttrain.md``, where ``auto-point`` passes its gates at −5 pt).
A user checks a model on data it never trained on; here that is one half of the
official test split, cut by a seeded permutation (``halves``). The other half measures
the test accuracy reported, and nothing in the run sees it.
"""

from __future__ import annotations

import numpy as np

from dsp_deploy.calib_io import Calibration


def halves(
    x: np.ndarray, y: np.ndarray, name: str = "x"
) -> tuple[Calibration, tuple[np.ndarray, np.ndarray]]:
    """The test split in two by a seeded permutation: the --eval half, the measured half.

    ``name``: the model's input name, which the evaluation set is keyed by. The --eval
    half takes ``len(y) // 2`` series (the smaller half when the count is odd).
    """
    order = np.random.default_rng(0).permutation(len(y))
    e, t = np.sort(order[: len(y) // 2]), np.sort(order[len(y) // 2 :])
    return Calibration({name: x[e]}, y[e]), (x[t], y[t])

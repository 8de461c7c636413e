"""Compare a candidate model's outputs with reference outputs on the same samples.

For every output element, with reference a and candidate b:

    within tolerance  ⇔  |a − b| ≤ atol + rtol · |a|        (numpy.isclose, one-sided)
    max_abs_diff      =  max |a − b|
    agreement         =  mean over samples of [argmax a_i = argmax b_i]   (first output,
                         when it is (N, classes); 1.0 otherwise)
    accuracy          =  (mean [argmax a_i = y_i], mean [argmax b_i = y_i])  with labels y
    disagreements     =  #{i : argmax a_i ≠ argmax b_i}
    newly_wrong/right =  #{i : a_i right, b_i wrong} / #{i : a_i wrong, b_i right}   (labels)

The counts are what the gates' confidence bounds read (``compress.bounds``); ``pool``
adds the reports of disjoint sample sets (the folds of a k-fold held-out check) into
one, as if compared at once. The CLI and the tests use this same function, so they
cannot disagree about "unchanged".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from dsp_deploy.inference import run_model


@dataclass(frozen=True)
class ParityReport:
    """How far a candidate's outputs are from the reference's, on ``samples`` samples."""

    samples: int
    max_abs_diff: float
    within_tolerance: bool
    agreement: float
    accuracy: tuple[float, float] | None
    skipped: tuple[str, ...] = ()  # inputs not drawn for a random-input report, and why
    classified: bool = True  # the first output is (N, classes): argmax means something
    disagreements: int | None = None  # None: round((1 − agreement) · samples)
    newly_wrong: int | None = None  # with labels: right before, wrong now
    newly_right: int | None = None  # with labels: wrong before, right now

    @property
    def disagreeing(self) -> int:
        """Samples whose argmax changed (from ``agreement`` when not counted)."""
        if self.disagreements is not None:
            return self.disagreements
        return round((1 - self.agreement) * self.samples)

    def as_dict(self) -> dict:
        return {
            "samples": self.samples,
            "max_abs_diff": self.max_abs_diff,
            "within_tolerance": self.within_tolerance,
            "agreement": self.agreement,
            "accuracy": None if self.accuracy is None else list(self.accuracy),
            "skipped": list(self.skipped),
            "disagreements": self.disagreeing if self.classified else None,
            "newly_wrong": self.newly_wrong,
            "newly_right": self.newly_right,
        }


def _argmax(outputs: Sequence[np.ndarray]) -> np.ndarray | None:
    first = outputs[0]
    return first.argmax(axis=1) if first.ndim == 2 else None


def compare(
    reference: Sequence[np.ndarray],
    candidate: Sequence[np.ndarray],
    *,
    atol: float,
    rtol: float,
    labels: np.ndarray | None = None,
) -> ParityReport:
    """Parity of ``candidate`` against ``reference`` outputs (same order, same samples)."""
    diffs = [np.abs(a.astype(np.float64) - b) for a, b in zip(reference, candidate, strict=True)]
    within = all(
        bool(np.all(d <= atol + rtol * np.abs(a))) for d, a in zip(diffs, reference, strict=True)
    )
    ra, ca = _argmax(reference), _argmax(candidate)
    agreement = 1.0 if ra is None else float(np.mean(ra == ca))
    accuracy = newly_wrong = newly_right = None
    if labels is not None and ra is not None:
        before, after = ra == labels, ca == labels
        accuracy = (float(np.mean(before)), float(np.mean(after)))
        newly_wrong, newly_right = int(np.sum(before & ~after)), int(np.sum(~before & after))
    return ParityReport(
        samples=len(reference[0]),
        max_abs_diff=max((float(d.max()) for d in diffs if d.size), default=0.0),
        within_tolerance=within,
        agreement=agreement,
        accuracy=accuracy,
        classified=ra is not None,
        disagreements=0 if ra is None else int(np.sum(ra != ca)),
        newly_wrong=newly_wrong,
        newly_right=newly_right,
    )


def pool(reports: Sequence[ParityReport]) -> ParityReport:
    """One report for the union of the disjoint sample sets of ``reports``: counts add,
    rates are weighted by samples, the largest deviation is kept."""
    n = sum(r.samples for r in reports)
    labelled = all(r.accuracy is not None for r in reports)
    accuracy = None
    if labelled:
        accuracy = tuple(sum(r.samples * r.accuracy[i] for r in reports) / n for i in (0, 1))
    return ParityReport(
        samples=n,
        max_abs_diff=max(r.max_abs_diff for r in reports),
        within_tolerance=all(r.within_tolerance for r in reports),
        agreement=1 - sum(r.disagreeing for r in reports) / n,
        accuracy=accuracy,
        classified=all(r.classified for r in reports),
        disagreements=sum(r.disagreeing for r in reports),
        newly_wrong=sum(r.newly_wrong for r in reports) if labelled else None,
        newly_right=sum(r.newly_right for r in reports) if labelled else None,
    )


def verify(
    reference: Sequence[np.ndarray],
    candidate: onnx.ModelProto | ort.InferenceSession,
    inputs: Mapping[str, np.ndarray],
    *,
    atol: float,
    rtol: float,
    labels: np.ndarray | None = None,
    batch_size: int = 64,
    threads: int | None = None,
) -> ParityReport:
    """Run ``candidate`` (a model or an open session) on ``inputs`` with onnxruntime and
    compare with ``reference``."""
    outputs = run_model(candidate, inputs, batch_size=batch_size, threads=threads)
    return compare(reference, outputs, atol=atol, rtol=rtol, labels=labels)

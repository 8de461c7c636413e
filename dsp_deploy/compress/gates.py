"""The gates a compressed model must pass before ``compress`` writes it.

Any failing gate is one line in ``CompressResult.failures`` (the CLI exits 1 and writes
nothing unless ``--force``):

* lossless options (``dead``, threshold 0): outputs on every calibration sample — and
  on every ``--eval`` sample when one is given — within ``atol + rtol·|y|``, and (with
  labels) the accuracy on each set no lower by more than ``max_accuracy_drop`` — exact
  claims about the samples seen, so no bound (a model exact on every series it is shown
  is not refused because the series are few);
* every other run, on the judged series (an ``--eval`` set, else the held-out series —
  one stratified part, or all of them over k folds — else, at ``--holdout 0``, the
  decision series; ``compress.holdout``), each gate on a one-sided confidence bound at
  ``confidence`` (``compress.bounds``):

      accuracy:   Tango's U(newly wrong, newly right, n) ≤ max_accuracy_drop   (labels)
      agreement:  U(disagreements, n)           ≤ 1 − min_agreement   (no labels, or set)

  A gate passes only when the data rule out, at that confidence, a rate above its
  threshold. With labels the accuracy gate decides (a model that fixes as many series as
  it breaks is not refused for disagreeing); ``--min-agreement`` adds the agreement gate.
  Without labels only the agreement gate exists (0.98 unless set), and it bounds the
  accuracy drop too (the drop is never more than the disagreement rate); the report says so.

The guarantee. An upper bound is never below its point estimate (equal only at z = 0,
``--confidence 0.5``), so with the default thresholds (drop 0.02 with labels, agreement
0.98 without) a model whose judged accuracy fell by 2 points or more (with labels), or
whose predictions changed on 2 % or more of the judged series (without), fails a gate,
for any n; and a model whose true drop is
2 points is written with probability about 1 − confidence (the bounds are asymptotic;
``tests/test_compress_bounds.py`` measures it). Certifying a 2-point drop at 95 % takes
at least 133 judged series even when none changes (``bounds.needed``); with fewer,
``HoldoutPlan.enough`` is false and the CLI refuses before the run (exit 2) unless
``--force``. No gate can do better: with 50 series and a true 2 % rate of newly wrong
series, none of them turns up with probability 0.98⁵⁰ = 36 %.

``gates(options, decision, holdout, evaluation)`` returns the failing lines;
``gate_report`` the same with the bounds, for ``--json`` and the text report.
"""

from __future__ import annotations

from dataclasses import dataclass

from dsp_deploy.compress import bounds
from dsp_deploy.compress.holdout import seen, split
from dsp_deploy.compress.verify import ParityReport
from dsp_deploy.options import CompressOptions

__all__ = ["Bound", "GateReport", "gate_report", "gates", "split"]


@dataclass(frozen=True)
class Bound:
    """One bounded gate: the observed rate, its upper bound, the threshold it must meet."""

    gate: str  # agreement | accuracy
    events: str  # the counts, in words
    observed: float
    upper: float
    threshold: float

    @property
    def passed(self) -> bool:
        return self.upper <= self.threshold

    def as_dict(self) -> dict:
        keys = ("gate", "events", "observed", "upper", "threshold", "passed")
        return {k: getattr(self, k) for k in keys}


@dataclass(frozen=True)
class GateReport:
    """What the gates judged (``judged``: a ``holdout.HoldoutPlan`` mode — lossless, eval,
    split, kfold, decision), on how many series, the bounds, and the failing lines."""

    judged: str
    samples: int
    folds: int
    labelled: bool
    confidence: float
    bounds: tuple[Bound, ...]
    failures: tuple[str, ...]
    notes: tuple[str, ...]

    @property
    def resolution(self) -> float:
        """The smallest drop the judged series can rule out (``bounds.resolution``)."""
        return bounds.resolution(self.samples, self.confidence)

    def as_dict(self) -> dict:
        return {
            "judged": self.judged,
            "samples": self.samples,
            "folds": self.folds,
            "labelled": self.labelled,
            "confidence": self.confidence,
            "resolution": None if self.judged == "lossless" else self.resolution,
            "bounds": [b.as_dict() for b in self.bounds],
            "failures": list(self.failures),
            "notes": list(self.notes),
        }


def _exact_failures(options: CompressOptions, report: ParityReport, where: str) -> list[str]:
    """The lossless gates on every sample of one set (``where``: calibration, eval)."""
    failures = []
    if not report.within_tolerance:
        failures.append(
            f"outputs deviate on the {where} samples (max |Δ| {report.max_abs_diff:.3g})"
        )
    drop = options.max_accuracy_drop
    if report.accuracy is not None:
        before, after = report.accuracy
        if before - after > drop:
            failures.append(f"{where} accuracy drops {before:.4f} → {after:.4f} (> {drop})")
    return failures


def _bounds(options: CompressOptions, judged: ParityReport) -> tuple[Bound, ...]:
    n, c = judged.samples, options.confidence
    rows = []
    agreement = options.agreement_gate(labelled=judged.accuracy is not None)
    if judged.classified and agreement > 0:
        k = judged.disagreeing
        rows.append(
            Bound(
                "agreement", f"{k} of {n} disagree", k / n if n else 0.0,
                bounds.wilson_upper(k, n, c), 1 - agreement,
            )
        )  # fmt: skip
    if judged.accuracy is not None and judged.newly_wrong is not None:
        wrong, right = judged.newly_wrong, judged.newly_right or 0
        rows.append(
            Bound(
                "accuracy", f"{wrong} newly wrong, {right} newly right of {n}",
                (wrong - right) / n if n else 0.0, bounds.drop_upper(wrong, right, n, c),
                options.max_accuracy_drop,
            )
        )  # fmt: skip
    return tuple(rows)


def _failure(bound: Bound, judged: str, confidence: float) -> str:
    what = "disagreement rate" if bound.gate == "agreement" else "accuracy drop"
    where = {"kfold": "held-out", "split": "held-out"}.get(judged, judged)
    return (
        f"{where} {what} up to {100 * bound.upper:.1f}% at {100 * confidence:g}% confidence "
        f"({bound.events}) > {100 * bound.threshold:g}%"
    )


def _judged(
    decision: ParityReport, holdout: ParityReport | None, evaluation: ParityReport | None,
    folds: int,
) -> tuple[str, ParityReport]:  # fmt: skip
    if evaluation is not None:
        return "eval", evaluation
    if holdout is not None:
        return ("kfold" if folds else "split"), holdout
    return "decision", decision


def _notes(judged: str, report: ParityReport, folds: int, confidence: float) -> tuple[str, ...]:
    notes = [seen(judged, report.samples, folds, confidence)]
    if report.accuracy is None and report.classified:
        notes.append("no labels: gated on agreement alone (it bounds the accuracy drop too)")
    if not report.classified:
        notes.append("outputs are not (N, classes): no agreement or accuracy gate")
    return tuple(notes)


def gate_report(
    options: CompressOptions,
    decision: ParityReport,
    holdout: ParityReport | None,
    evaluation: ParityReport | None = None,
    *,
    folds: int = 0,
) -> GateReport:
    """The gates (module docstring) on these reports: ``decision`` (the samples the
    channels were decided on), ``holdout`` (held out; pooled over ``folds`` folds when
    k-fold), ``evaluation`` (a separate set; judged instead of ``holdout`` when given)."""
    if options.lossless:
        failures = _exact_failures(options, decision, "calibration")
        n, labelled = decision.samples, decision.accuracy is not None
        if evaluation is not None:
            failures += _exact_failures(options, evaluation, "eval")
            n, labelled = n + evaluation.samples, labelled or evaluation.accuracy is not None
        return GateReport("lossless", n, 0, labelled, options.confidence, (), tuple(failures),
                          ())  # fmt: skip
    judged, report = _judged(decision, holdout, evaluation, folds)
    rows = _bounds(options, report)
    failures = [_failure(b, judged, options.confidence) for b in rows if not b.passed]
    if report.accuracy is not None and report.newly_wrong is None:  # never skipped silently
        failures.append("accuracy gate: the report has no newly wrong/right counts "
                        "(build it with verify.compare or verify.pool)")  # fmt: skip
    return GateReport(
        judged, report.samples, folds if judged == "kfold" else 0,
        report.accuracy is not None, options.confidence, rows, tuple(failures),
        _notes(judged, report, folds, options.confidence),
    )  # fmt: skip


def gates(
    options: CompressOptions,
    decision: ParityReport,
    holdout: ParityReport | None,
    evaluation: ParityReport | None = None,
    *,
    folds: int = 0,
) -> tuple[str, ...]:
    """One line per failing gate (module docstring); empty when all pass."""
    return gate_report(options, decision, holdout, evaluation, folds=folds).failures

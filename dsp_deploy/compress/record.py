"""The ``dsp.compress`` metadata record ``compress`` writes into the model it built.

A JSON object: ``source_sha256`` (of the serialized input model), the options that
decided the channels (``criterion``, ``threshold``, ``compensation`` — ``exact`` for the
lossless criterion —, ``align``), what was done (``units_removed``, ``conv2d`` convs
rewritten, ``fuse`` counts), ``params``/``macs`` before and after, ``max_abs_diff`` on the
decision samples, ``calibration_samples`` [decision, held out] and the k-fold report.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import onnx

from dsp_deploy import metadata
from dsp_deploy.options import CompressOptions

if TYPE_CHECKING:
    from dsp_deploy.compress.folds import FoldReport
    from dsp_deploy.compress.fuse import FuseReport
    from dsp_deploy.compress.plan import PruningPlan
    from dsp_deploy.compress.verify import ParityReport
    from dsp_deploy.cost import ModelCost
    from dsp_deploy.passes import Rewrite

__all__ = ["compensation_label", "record", "stamp"]


def compensation_label(options: CompressOptions) -> str:
    """The compensation the record names: ``exact`` when the criterion removes only
    channels that never carry a value."""
    return options.compensation if options.criterion == "dsp" or options.threshold > 0 else "exact"


def record(
    options: CompressOptions,
    plan: PruningPlan,
    *,
    costs: tuple[ModelCost, ModelCost],
    rewrites: tuple[Rewrite[FuseReport] | None, int],
    decision: ParityReport,
    samples: tuple[int, int],
    folds: FoldReport | None,
) -> dict[str, Any]:
    """The record (module docstring) of one run, less ``source_sha256``."""
    (before, after), (fused, wrapped) = costs, rewrites
    return {
        "criterion": options.criterion,
        "threshold": options.threshold,
        "compensation": compensation_label(options),
        "units_removed": len(plan.remove),
        "align": options.align,
        "conv2d": wrapped,
        "fuse": {
            "batchnorm": len(fused.report.batchnorms) if fused else 0,
            "relu": len(fused.report.relus) if fused else 0,
        },
        "params": [before.params, after.params],
        "macs": [before.macs, after.macs],
        "max_abs_diff": decision.max_abs_diff,
        "calibration_samples": list(samples),
        "folds": None if folds is None else folds.as_dict(),
    }


def stamp(built: onnx.ModelProto, source: onnx.ModelProto, record: dict[str, Any]) -> None:
    """Write ``dsp.compress`` into ``built``, the model ``compress`` just made (never the
    caller's), with the sha256 of ``source`` first."""
    digest = hashlib.sha256(source.SerializeToString()).hexdigest()
    metadata.write_metadata(built, {metadata.COMPRESS: {"source_sha256": digest, **record}})

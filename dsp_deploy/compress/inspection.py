"""``inspect``: the channel groups, per-layer cost and, with calibration, each unit's
statistics at every channel-mixing consumer and whether the lossless ``dead`` criterion
removes it (the same analysis, statistics and plan ``compress`` uses)."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from dsp_deploy.compress.calibrate import ActivationStats, collect_stats
from dsp_deploy.compress.groups import ChannelAnalysis, find_groups
from dsp_deploy.compress.layers import LayerReport, layer_reports
from dsp_deploy.compress.pipeline import (
    probe_segments,
    probe_tensors,
    series_length,
)
from dsp_deploy.compress.plan import PruningPlan, make_plan
from dsp_deploy.compress.policy import run_batch_size
from dsp_deploy.io import Calibration

__all__ = ["Inspection", "UnitStats", "inspect_model"]


@dataclass(frozen=True)
class UnitStats:
    """A unit's statistics at one channel-mixing consumer reading it (one row per
    consumer and position), and whether ``dead`` drops the unit."""

    group: int
    unit: int
    consumer: str
    tensor: str
    position: int
    max_abs: float
    mean: float
    energy: float
    active: int | None
    dead: bool
    kept_by: str | None = None  # why a unit the criterion chose stays (``PruningPlan.held``)


@dataclass(frozen=True)
class Inspection:
    groups: tuple
    layers: tuple[LayerReport, ...]
    params: int
    macs: int
    units: tuple[UnitStats, ...]
    bytes: int = 0  # weight storage (``ModelCost.bytes``)
    unknown_macs: tuple[str, ...] = ()  # nodes whose MACs no shape tells (no --calib)

    def dead_units(self, group: int) -> int:
        """Units of ``group`` that the lossless ``dead`` criterion removes."""
        return len({u.unit for u in self.units if u.group == group and u.dead})


def _unit_stats(analysis: ChannelAnalysis, stats: ActivationStats, plan: PruningPlan):
    taps = {
        analysis.unit_of[a]: (t, p) for t, lay in analysis.taps.items() for p, a in enumerate(lay)
    }
    removed, held = set(plan.remove), dict(plan.held)
    rows = []
    for c in analysis.consumers:
        s = stats.tensors[c.tensor]
        for p, atom in enumerate(c.layout):
            u = analysis.unit_of[atom]
            tap = taps.get(u)
            rows.append(
                UnitStats(
                    group=analysis.units[u].group,
                    unit=u,
                    consumer=analysis.node_names[c.node],
                    tensor=c.tensor,
                    position=p,
                    max_abs=float(s.max_abs[p]),
                    mean=float(s.mean[p]),
                    energy=float(s.energy[p]),
                    active=None if tap is None else int(stats.tensors[tap[0]].active[tap[1]]),
                    dead=u in removed,
                    kept_by=held.get(u),
                )
            )
    return tuple(rows)


def inspect_model(
    model: onnx.ModelProto,
    calibration: Calibration | None = None,
    *,
    batch_size: int = 64,
    threads: int | None = None,
) -> Inspection:
    """Groups, per-layer cost and (with calibration) per-unit statistics and dead list."""
    from dsp_deploy.compress.plan import empty_plan
    from dsp_deploy.cost import model_cost

    analysis = find_groups(model)
    batch_size = run_batch_size(model, batch_size)
    length = None if calibration is None else series_length(calibration)
    sample = None if calibration is None else calibration.inputs
    cost = model_cost(model, length=length, sample=sample)
    units: tuple[UnitStats, ...] = ()
    plan = empty_plan(analysis)
    if calibration is not None:
        stats = collect_stats(
            model,
            calibration.inputs,
            probe_tensors(analysis),
            segments=probe_segments(analysis),
            batch_size=batch_size,
            threads=threads,
        )
        plan = make_plan(analysis, stats, criterion="dead")
        units = _unit_stats(analysis, stats, plan)
    layers = layer_reports(analysis, empty_plan(analysis), cost, cost)
    return Inspection(
        analysis.groups, layers, cost.params, cost.macs, units, cost.bytes, cost.unknown
    )

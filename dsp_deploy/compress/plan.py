"""Which channel units to remove, and how consumers make up for them (pure numpy).

For unit u, let O(u) be its occurrences: (consumer k, position p) where an atom of u is
read by a channel-mixing consumer, with the statistics of k's input at p.

``dead`` (lossless on the data seen): u is removed when, at every occurrence,

    max |x_k[p]| = 0                                     (the channel is zero), or
    min x_k[p] = max x_k[p] = v and k is foldable        (a constant: b_k += W_k[:, p]·v)

(``foldable``: k has no padding, ``rules.Consumer``; a constant read by a padded Conv
keeps its unit, and ``held`` says so.)

and, with ``threshold`` T > 0, also when rms(x_k[p]) ≤ T · rms(x_k) (its root mean square
is under T times that of the whole input of k): a near-dead channel, whose mean goes into
the bias; the outputs then change a little and verification measures how much.

``dsp`` (the paper's rule, DSP §3): u is kept when n_u > ``min_count``, with n_u the
number of calibration instances in which u's L2 energy exceeds the instance's mean
energy, measured at u's *tap* (the last activation output carrying u, i.e. the stage
output the paper scores). Removed channels are compensated (``compensation``):

    none   nothing (the paper's masking)
    mean   b_k += Σ_{p removed} W_k[:, p]·mean(x_k[p])     (exact for constants)
    lstsq  pointwise consumers (1×1 Conv, Gemm): W̃' = W̃ G[:, K] G[K, K]⁻¹, the least-squares
           refit of the kept columns K (and bias) to the original outputs, with
           G = E[x̃ x̃ᵀ] the calibration Gram matrix of the input x̃ = [x; 1]; others: mean
    reconstruct  mean here; then every consumer is refitted in topological order to the
           original's outputs from the pruned upstream (``compress.reconstruct``)

``lstsq`` is the default: of the three it alone fits what the consumers output, not only
their means, so the kept channels take over what the removed ones carried. How the three
compare on trained models (test accuracy before and after, per dataset) is measured by
``benchmarks/compress_ucr.py``; the numbers are in ``benchmarks/results/compensations.md``.

Never empty a layer: the input of every channel-mixing consumer (a *stage*) keeps at
least its strongest unit; a source whose every channel goes is deleted whole.
Pinned units are always kept. With ``align`` = N > 1, removed units are also kept back
until every source keeps 0 or a multiple of N channels where it can (``align``): onnx-
runtime's blocked x86 kernels need channel counts in multiples of 8 (``layout``).

Grouped Convs (``rules`` has the algebra): with r_j the removed inputs of block j and
s_j its removed outputs, group j is *dropped* when r_j = b_in and s_j = b_out; unless
every output goes (the Conv goes whole), the groups J that stay must have

    r_j = min_{i ∈ J} r_i  (capped at b_in − 1)      s_j = min_{i ∈ J} s_i      for j ∈ J

``_balance_one`` keeps back the strongest removed units of a block until it holds (the
per-group minimum of removable channels goes). Keeping a unit back can unbalance
another Conv or refill a stage, so stage and balance rules repeat until nothing
changes; they only ever keep units, so this ends. ``PruningPlan.held`` says which
units the criterion chose but a rule kept, and why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from dsp_deploy.compress.align import align_removal
from dsp_deploy.compress.calibrate import ActivationStats
from dsp_deploy.compress.groups import ChannelAnalysis
from dsp_deploy.compress.rules import Blocks, Consumer
from dsp_deploy.errors import OptionError
from dsp_deploy.options import COMPENSATIONS, CRITERIA, DEFAULT_COMPENSATION  # noqa: F401

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Compensation:
    """What consumer ``node`` does for its removed input positions.

    ``values``: (position, constant) pairs folded into the bias; ``gram``: when set, the
    consumer is refitted by least squares instead (``G = E[x̃ x̃ᵀ]`` of its input + 1).
    """

    node: int
    values: tuple[tuple[int, float], ...]
    gram: np.ndarray | None = None


@dataclass(frozen=True)
class PruningPlan:
    """Units to remove (indices into ``analysis.units``) and consumer compensations.

    A plan names nodes by position and tensors by name, so it holds only for the model
    it was made for: ``fingerprint`` (from the analysis) identifies that model, and
    ``prune`` refuses any other with ``PlanError``.
    """

    analysis: ChannelAnalysis
    criterion: str
    remove: tuple[int, ...]
    compensations: tuple[Compensation, ...]
    score: tuple[float, ...]
    held: tuple[tuple[int, str], ...] = ()

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the model the plan was made for (``compress.fingerprint``)."""
        return self.analysis.fingerprint

    @property
    def removed_atoms(self) -> frozenset[int]:
        units = self.analysis.units
        return frozenset(a for u in self.remove for a in units[u].atoms)


def empty_plan(analysis: ChannelAnalysis) -> PruningPlan:
    """A plan that removes nothing (pruning with it reproduces the graph)."""
    return PruningPlan(analysis, "none", (), (), (0.0,) * len(analysis.units))


def _occurrences(analysis: ChannelAnalysis) -> list[list[tuple[Consumer, int]]]:
    table: list[list[tuple[Consumer, int]]] = [[] for _ in analysis.units]
    for c in analysis.consumers:
        for p, atom in enumerate(c.layout):
            table[analysis.unit_of[atom]].append((c, p))
    return table


def _removable_dead(
    occ: list[tuple[Consumer, int]], stats: ActivationStats, t: float
) -> tuple[bool, Consumer | None]:
    """Whether ``dead`` removes the unit; else the padded consumer that alone keeps it
    (a constant there, foldable everywhere else), or None."""
    unfoldable = None
    for c, p in occ:
        s = stats.tensors[c.tensor]
        if s.max_abs[p] == 0:
            continue
        constant = s.minimum[p] == s.maximum[p]
        if constant and c.foldable:
            continue
        if t > 0 and np.sqrt(s.energy[p]) <= t * np.sqrt(s.energy.mean()):
            continue
        if not constant:
            return False, None
        unfoldable = unfoldable or c
    return unfoldable is None, unfoldable


def _dead_candidates(
    analysis: ChannelAnalysis, occurrences: list, stats: ActivationStats, t: float
) -> tuple[set[int], dict[int, str]]:
    """Units ``dead`` removes, and why constant units read by a padded Conv stay."""
    candidates, held = set(), {}
    for u, occ in enumerate(occurrences):
        removable, padded = _removable_dead(occ, stats, t)
        if removable:
            candidates.add(u)
        elif padded is not None and analysis.units[u].blocked_by is None:
            name = analysis.node_names[padded.node]
            held[u] = f"a constant that padded {name} cannot fold into its bias exactly"
    return candidates, held


def _tap_scores(analysis: ChannelAnalysis, stats: ActivationStats) -> list[float | None]:
    """n_u at u's tap (the last activation tensor carrying it); None without a tap."""
    scores: list[float | None] = [None] * len(analysis.units)
    for tensor, layout in analysis.taps.items():  # topological order: later taps win
        if tensor not in stats.tensors:
            continue
        active = stats.tensors[tensor].active
        for p, atom in enumerate(layout):
            scores[analysis.unit_of[atom]] = float(active[p])
    return scores


def _energy(occ: list[tuple[Consumer, int]], stats: ActivationStats) -> float:
    return max((float(stats.tensors[c.tensor].energy[p]) for c, p in occ), default=0.0)


def _keep_one_per_stage(
    analysis: ChannelAnalysis, remove: set[int], score: list[float], held: dict[int, str]
) -> None:
    # A whole source or branch may go (its Concat input goes with it); a consumer may not
    # be left reading nothing.
    for consumer, units in zip(analysis.consumers, analysis.stages(), strict=True):
        if units and units <= remove:
            best = max(units, key=lambda u: score[u])
            remove.discard(best)
            name = analysis.node_names[consumer.node]
            held.setdefault(best, f"keeps the input of {name} from emptying")
            logger.debug("unit %d kept so the input of %s is not emptied", best, name)


def _removed(analysis: ChannelAnalysis, block: tuple[int, ...], remove: set[int]) -> list[int]:
    return [a for a in block if analysis.unit_of[a] in remove]


def _trim(
    analysis: ChannelAnalysis,
    block: tuple[int, ...],
    target: int,
    remove: set[int],
    score: list[float],
) -> list[int]:
    """Keep back the strongest removed units of ``block`` until ``target`` remain removed."""
    kept = []
    while len(gone := _removed(analysis, block, remove)) > target:
        unit = max((analysis.unit_of[a] for a in gone), key=lambda u: score[u])
        remove.discard(unit)
        kept.append(unit)
    return kept


def _balance_one(
    analysis: ChannelAnalysis, b: Blocks, remove: set[int], score: list[float]
) -> list[int]:
    """Units kept back so the groups of ``b`` that stay lose equally (module docstring)."""
    if len(_removed(analysis, b.outputs, remove)) == len(b.outputs):
        return []  # every output goes: the Conv goes whole
    ins = [b.input_block(j) for j in range(b.groups)]
    outs = [b.output_block(j) for j in range(b.groups)]
    r = [len(_removed(analysis, block, remove)) for block in ins]
    s = [len(_removed(analysis, block, remove)) for block in outs]
    size = len(ins[0])  # b_in; 0 when the input is untracked (no block can go)
    stay = [j for j in range(b.groups) if not (size and r[j] == size and s[j] == len(outs[j]))]
    target_r = min(min(r[j] for j in stay), max(size - 1, 0))
    target_s = min(s[j] for j in stay)
    kept = []
    for j in stay:
        kept += _trim(analysis, ins[j], target_r, remove, score)
        kept += _trim(analysis, outs[j], target_s, remove, score)
    return kept


def _settle(
    analysis: ChannelAnalysis, remove: set[int], score: list[float], align: int = 1
) -> dict[int, str]:
    """Apply the stage, grouped-Conv and alignment rules until none keeps a unit back."""
    held: dict[int, str] = {}
    while True:
        before = len(remove)
        _keep_one_per_stage(analysis, remove, score, held)
        for unit in remove - align_removal(analysis, remove, score, align):
            remove.discard(unit)
            held.setdefault(unit, f"keeps its conv's channels a multiple of {align}")
        for b in analysis.blocks:
            name = analysis.node_names[b.node]
            for unit in _balance_one(analysis, b, remove, score):
                held.setdefault(unit, f"keeps the groups of {name} equal")
                logger.debug("unit %d kept so the groups of %s stay equal", unit, name)
        if len(remove) == before:
            return held


def _compensations(
    analysis: ChannelAnalysis,
    stats: ActivationStats,
    remove: set[int],
    mode: str,
) -> tuple[Compensation, ...]:
    out = []
    for c in analysis.consumers:
        gone = [p for p, a in enumerate(c.layout) if analysis.unit_of[a] in remove]
        if not gone:
            continue
        s = stats.tensors[c.tensor]
        if mode == "lstsq" and c.pointwise and c.tensor in stats.gram:
            out.append(Compensation(c.node, (), stats.gram[c.tensor]))
            continue
        exact = [p for p in gone if s.minimum[p] == s.maximum[p]]
        chosen = gone if mode in ("mean", "lstsq", "reconstruct") else exact
        values = tuple((p, float(s.mean[p])) for p in chosen if s.mean[p] != 0)
        if values:
            out.append(Compensation(c.node, values))
    return tuple(out)


def make_plan(
    analysis: ChannelAnalysis,
    stats: ActivationStats,
    *,
    criterion: str = "dead",
    threshold: float = 0.0,
    min_count: int = 0,
    compensation: str = DEFAULT_COMPENSATION,
    align: int = 1,
) -> PruningPlan:
    """Decide the units to remove under ``criterion`` (see the module docstring).

    ``align`` > 1 keeps back removable units so that every source keeps 0 or a multiple
    of ``align`` channels where it can (:mod:`dsp_deploy.compress.align`).
    """
    if criterion not in CRITERIA or criterion == "auto":
        rules = tuple(c for c in CRITERIA if c != "auto")
        raise OptionError(
            f"criterion {criterion!r}; expected one of {rules} (auto is a search: compress.auto)"
        )
    if compensation not in COMPENSATIONS:
        raise OptionError(f"compensation {compensation!r}; expected one of {COMPENSATIONS}")
    occurrences = _occurrences(analysis)
    energy = [_energy(occ, stats) for occ in occurrences]
    kept: dict[int, str] = {}
    if criterion == "dead":
        candidates, kept = _dead_candidates(analysis, occurrences, stats, threshold)
        score = energy
        mode = "mean" if threshold > 0 else "none"
    else:
        taps = _tap_scores(analysis, stats)
        score = [e if t is None else t + e / (1 + e) for t, e in zip(taps, energy, strict=True)]
        candidates = {u for u, t in enumerate(taps) if t is not None and t <= min_count}
        mode = compensation
    remove = {u for u in candidates if analysis.units[u].blocked_by is None}
    return settled_plan(analysis, stats, remove, score, criterion, mode, align, kept)


def settled_plan(
    analysis: ChannelAnalysis,
    stats: ActivationStats,
    remove: set[int],
    score: list[float],
    criterion: str,
    mode: str,
    align: int = 1,
    kept: dict[int, str] | None = None,
) -> PruningPlan:
    """The plan removing ``remove`` (unpinned units) once the stage, grouped-Conv and
    alignment rules have kept back what they must (the strongest by ``score``), with
    the compensations of ``mode``; ``kept``: earlier reasons for units kept."""
    remove = set(remove)
    held = {**(kept or {}), **_settle(analysis, remove, score, align)}
    plan = PruningPlan(
        analysis=analysis,
        criterion=criterion,
        remove=tuple(sorted(remove)),
        compensations=_compensations(analysis, stats, remove, mode),
        score=tuple(score),
        held=tuple(sorted(held.items())),
    )
    logger.info("%s: remove %d of %d units", criterion, len(remove), len(analysis.units))
    return plan

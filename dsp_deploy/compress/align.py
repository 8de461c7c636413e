"""Round kept channel counts up to a multiple, so pruned convs suit blocked kernels.

onnxruntime's fast x86 conv kernels work on channels in blocks of 8 (``layout``): a conv
pruned from 32 to 27 output channels falls back to the generic path and can end up slower
than the 32-channel original. ``align_removal`` takes back removed units until the channel
counts the kernels see are 0 or multiples of ``multiple`` — or all the channels are kept —
in this order of priority:

1. the width of every depthwise conv (LITE's 113-channel concat: depthwise convs are
   6× slower per MAC than dense ones on x86, so their blocked kernels matter most);
2. the output channels of every other conv (a *source*), unless taking a unit back for a
   source would make an aligned depthwise width unaligned again (LITE's branch convs feed
   the concat next to 17 one-channel filters, so both cannot hold).

Units come back in order of decreasing ``score`` (the planner's activity score), so the
most active of the removed channels return first. Taking a unit back only keeps channels
the original model had, so with ``--criterion dead`` the outputs are still those of the
original model. A unit counted in several places counts in each; the loop runs until
nothing changes, which ends because units only ever return.
"""

from __future__ import annotations

from collections.abc import Sequence

from dsp_deploy.compress.groups import ChannelAnalysis
from dsp_deploy.compress.rules import DEPTHWISE
from dsp_deploy.errors import OptionError


def align_removal(
    analysis: ChannelAnalysis, remove: set[int], score: Sequence[float], multiple: int
) -> set[int]:
    """``remove`` minus the units that bring channel counts to multiples of ``multiple``."""
    if multiple < 1:
        raise OptionError(f"align multiple {multiple}: expected an integer >= 1")
    out = set(remove)
    if multiple == 1:
        return out
    unit_of = analysis.unit_of
    widths = [
        [unit_of[a] for a in s.layout]
        for s in analysis.slices
        if s.role == DEPTHWISE and s.input == 1
    ]
    sources = [[unit_of[a] for a in s.atoms] for s in analysis.sources]

    def aligned(units: list[int]) -> bool:
        return sum(u not in out for u in units) % multiple == 0

    changed = True
    while changed:
        changed = False
        for units in widths:  # first: the widths of depthwise convs
            changed |= _fill(units, out, score, multiple)
        for units in sources:  # then conv outputs, unless that unaligns a depthwise width
            before = [aligned(w) for w in widths]
            trial = set(out)
            if _fill(units, trial, score, multiple) and not any(
                was and sum(u not in trial for u in w) % multiple
                for was, w in zip(before, widths, strict=True)
            ):
                out.intersection_update(trial)
                changed = True
    return out


def _fill(units: list[int], remove: set[int], score: Sequence[float], multiple: int) -> bool:
    """Take units of ``units`` out of ``remove`` (best first) until the kept count is 0 or
    a multiple; whether any came back."""
    kept = sum(u not in remove for u in units)
    if kept == 0 or kept % multiple == 0:
        return False
    back = False
    for u in sorted({u for u in units if u in remove}, key=lambda u: -score[u]):
        remove.discard(u)
        back = True
        kept += units.count(u)
        if kept % multiple == 0:
            break
    return back

"""Round kept channel counts up to a multiple, so pruned convs suit blocked kernels.

onnxruntime's fast x86 conv kernels work on channels in blocks of 8 (``layout``): a conv
pruned from 32 to 27 output channels falls back to the generic path and can end up slower
than the 32-channel original. ``align_removal`` takes back removed units until, for every
source (the output channels of a Conv), the number kept is 0 or a multiple of ``multiple``
— or the source keeps all its channels. Units come back in order of decreasing ``score``
(the planner's activity score), so the most active of the removed channels return first.

Taking a unit back only keeps channels the original model had, so with ``--criterion
dead`` the outputs are still those of the original model. A unit shared by several
sources (a residual Add ties them) counts for each of them; the loop runs until no source
changes, which ends because units only ever return.
"""

from __future__ import annotations

from collections.abc import Sequence

from dsp_deploy.compress.groups import ChannelAnalysis


def align_removal(
    analysis: ChannelAnalysis, remove: set[int], score: Sequence[float], multiple: int
) -> set[int]:
    """``remove`` minus the units that bring each source to a multiple of ``multiple``."""
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1; got {multiple}")
    out = set(remove)
    if multiple == 1:
        return out
    changed = True
    while changed:
        changed = False
        for source in analysis.sources:
            units = [analysis.unit_of[a] for a in source.atoms]
            kept = sum(u not in out for u in units)
            if kept == 0 or kept % multiple == 0:
                continue
            for u in sorted({u for u in units if u in out}, key=lambda u: -score[u]):
                out.discard(u)
                changed = True
                kept += units.count(u)
                if kept % multiple == 0:
                    break
    return out

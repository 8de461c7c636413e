"""Probability heads: one network's softmax, or an ensemble's mean softmax.

``p(x) = (1/M) Σ_m softmax(f_m(x))`` — LITETime and InceptionTime average the softmax
outputs of M = 5 members; members may differ in width (DSP prunes each one on its own).
These modules are what gets exported to ONNX (output ``probabilities``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Probabilities(nn.Module):
    """``softmax(f(x))`` over the class axis."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=-1)


class Ensemble(nn.Module):
    """Mean of the members' softmax outputs."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = [torch.softmax(m(x), dim=-1) for m in self.members]
        return torch.stack(probs).mean(dim=0)


def probability_model(members: Sequence[nn.Module]) -> nn.Module:
    """``Probabilities`` for one member, ``Ensemble`` for several; in eval mode."""
    model = Probabilities(members[0]) if len(members) == 1 else Ensemble(members)
    return model.eval()

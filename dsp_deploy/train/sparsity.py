"""DSP's instance-wise L2,1 sparsity loss on post-BN-ReLU feature maps.

For tapped maps ``F_l ∈ R^{B×C_l×T}`` and layer weights ``w_l``::

    S = λ · Σ_l w_l · Σ_{i=1..B} Σ_{c=1..C_l} ‖F_l[i, c, :]‖₂

L2 over time, L1 over channels (which drives whole channels to zero), summed over the
batch; the training loss is ``CE(logits, y) + S``. Defaults from the authors' code: LITE
λ = 1e-5, w = (4, 2, 1) on (learnable post-concat, DWSC-1, DWSC-2); InceptionTime
λ = 1e-5, w = 1 on the six module outputs. ``‖·‖₂``'s gradient at 0 is taken as 0
(PyTorch's subgradient), so channels that are already dead stay finite.

Decisions (PAPER.md §9):

* **Batch sum, not mean** (quirk 2), as the authors: λ keeps the meaning it has in the
  paper, and the DESIGN.md measurements used it. The price is that the strength scales
  with the batch (a last partial batch, or a dataset under 64 series, is penalised
  less per step); reported, not corrected, to stay comparable.
* **λ = 1e-5 for LITE** (quirk 3): the results folders the authors pruned, fine-tuned and
  tabulated from are the 1e-5 ones; 2e-5 is one ``--sparsity`` away.
* **LITE's hand-crafted channels are not penalised** (quirk 1): see ``nets/lite.py``.
* The penalty costs one norm per tap (no extra forward pass); ``benchmarks/train_speed.py``
  measures it. Its backward, ``∂/∂F[i,c,t] = F[i,c,t] / ‖F[i,c,:]‖₂`` (0 where the norm is
  0), is one pass over the map: autograd's norm backward makes three (divide, mask,
  multiply, all map-sized) and cost twice as much here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.autograd.function import FunctionCtx, once_differentiable


class _GroupL21(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, feature_map: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        norms = torch.linalg.vector_norm(feature_map, ord=2, dim=-1)
        ctx.save_for_backward(feature_map, norms)
        return norms.sum()

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        feature_map, norms = ctx.saved_tensors  # type: ignore[attr-defined]
        scale = (grad / norms).masked_fill_(norms == 0, 0.0)  # (B, C): cheap
        return feature_map * scale.unsqueeze(-1)


def group_l21(feature_map: torch.Tensor) -> torch.Tensor:
    """``Σ_i Σ_c ‖F[i, c, :]‖₂`` of a ``(B, C, T)`` map, as a scalar tensor."""
    return _GroupL21.apply(feature_map)


def dsp_penalty(
    taps: Sequence[torch.Tensor], layer_weights: Sequence[float], sparsity: float
) -> torch.Tensor:
    """``λ · Σ_l w_l · L2,1(F_l)``; zero (no graph) when ``sparsity`` is 0.

    ``taps``: the post-BN-ReLU feature maps ``(B, C_l, T)`` of the layers to thin, from
    the same forward pass as the logits; ``layer_weights``: one ``w_l`` each. Any
    network can be trained with it (README, "Bring your own model")::

        taps = []                   # the network appends its post-ReLU maps when given
        logits = net(xb, taps)
        loss = F.cross_entropy(logits, yb) + dsp_penalty(taps, [1.0] * len(taps), 1e-3)

    Channels the penalty drives to zero on all training data are what
    ``dsp-deploy compress`` then removes without changing the outputs.
    """
    if len(taps) != len(layer_weights):
        raise ValueError(f"{len(taps)} tapped maps but {len(layer_weights)} layer weights")
    if sparsity == 0.0:  # on the maps' device, so the loss and its sum stay on it
        if not taps:
            return torch.zeros(())
        return torch.zeros((), dtype=taps[0].dtype, device=taps[0].device)
    total = sum(w * group_l21(f) for f, w in zip(taps, layer_weights, strict=True) if w)
    return sparsity * total  # type: ignore[return-value]

"""Fusion of several inputs into one (paper Section III-B): MP, AP and CC, as torch modules.

What training optimizes and the upper tiers run on feature maps; the live aggregator and
offline evaluation fuse class scores with the same weights in NumPy (ddnn/core/fusion.py).
Every fusion takes a presence mask, so that missing devices are handled the same way in
training (random device dropout), offline evaluation (`--missing`) and the live services:
- MP and AP pool over the inputs that are present only. A zero in place of a missing input
  would be mistaken for data: it would win a max over negative scores and drag a mean.
- CC needs a fixed width, so a missing input's slot is filled with zeros. For binary feature
  maps (+-1) and for class scores, zero is the neutral value "no evidence either way": it
  adds nothing to the next layer's dot products. Training with device dropout teaches the
  layer after CC to read a zero slot as "device absent".
At least one input must be present for a sample; callers decide what to do otherwise.
"""

from __future__ import annotations

import torch
from torch import nn

from ddnn.core.config import Aggregation


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, N) mask -> (B, N, 1, 1, ...) broadcastable against `like` of shape (B, N, ...)."""
    return mask.view(*mask.shape, *([1] * (like.dim() - 2)))


def max_pool(x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Component-wise max over the present inputs. x: (B, N, ...), present: (B, N) bool."""
    masked = x.masked_fill(~_expand(present, x), float("-inf"))
    out = masked.max(dim=1).values
    # A sample with no input present gets zeros rather than -inf (no NaNs downstream).
    return torch.where(torch.isinf(out), torch.zeros_like(out), out)


def avg_pool(x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Component-wise mean over the present inputs. x: (B, N, ...), present: (B, N) bool."""
    weights = _expand(present, x).to(x.dtype)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def concat(x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Concatenate along the feature axis with missing inputs zeroed: (B, N, C, ...) ->
    (B, N*C, ...)."""
    x = x * _expand(present, x).to(x.dtype)
    return x.flatten(1, 2)


class Fusion(nn.Module):
    """Fuses N inputs of the same shape with one of the paper's schemes.

    `out_features`, for CC over vectors only (the local exit), adds the linear layer that maps
    the concatenation back to |C| (Section III-B); CC over feature maps leaves the channel
    concatenation to the next ConvP block.
    """

    def __init__(self, scheme: Aggregation, n_inputs: int, out_features: int | None = None):
        super().__init__()
        self.scheme = scheme
        self.n_inputs = n_inputs
        self.linear = (
            nn.Linear(n_inputs * out_features, out_features)
            if scheme == "CC" and out_features is not None
            else None
        )

    def forward(self, x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        if self.scheme == "MP":
            return max_pool(x, present)
        if self.scheme == "AP":
            return avg_pool(x, present)
        out = concat(x, present)
        return self.linear(out) if self.linear is not None else out

    def out_channels(self, in_channels: int) -> int:
        """Channels of the fused feature map for inputs with `in_channels` channels."""
        return in_channels * self.n_inputs if self.scheme == "CC" else in_channels

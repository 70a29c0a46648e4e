"""DevNet's top-k scoring head, shared by DevNet and DRA: DRA's seen, pseudo and composite heads are
DevNet's head (a 1x1 convolution scoring each feature-map position, the image score the mean of the
highest positions), so both models use this one definition. MSFlow's image score is the same top-k
mean, of its anomaly map's pixels."""

from __future__ import annotations

import torch
from torch import nn


def top_k_mean(maps: torch.Tensor, rate: float) -> torch.Tensor:
    """Per image, the mean of the highest ``rate`` share of a map's positions (at least one)."""
    flat = maps.flatten(1)
    k = max(int(flat.shape[1] * rate), 1)
    return flat.topk(k, dim=1).values.mean(dim=1)


class TopKHead(nn.Module):
    """A 1x1 convolution to one channel, absolute value: a score per feature-map position.

    The image score is :func:`top_k_mean` of this map (multiple-instance learning: an anomaly may
    cover a few positions only).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Position scores ``(B, h, w)`` of features ``(B, C, h, w)``."""
        return self.conv(features).abs().squeeze(1)

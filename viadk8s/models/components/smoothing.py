"""Gaussian smoothing of anomaly maps, the numbers of ``scipy.ndimage.gaussian_filter`` (its defaults).

The official SimpleNet and MMR smooth their maps with scipy (σ = 4, ``mode="reflect"``, truncate 4):
the border is mirrored *with* its edge pixel (``c b a | a b c``). torch's ``reflect`` padding, which
anomalib's ``GaussianBlur2d`` uses, mirrors without it (``c b | a b c``), so the outer 16 pixels of
a map (23 % of a 256-px one) would differ. This filter runs batched on the maps' device, in float32.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scipy's kernel: ``exp(-x² / 2σ²)`` for ``x`` in ``[-r, r]``, ``r = int(truncate·σ + 0.5)``, summing to 1."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def symmetric_indices(length: int, radius: int) -> torch.Tensor:
    """Source index of each position of an axis of ``length`` padded by ``radius`` on both sides, as
    scipy's ``reflect`` mode extends it: mirrored with the edge repeated, period ``2·length`` (so a
    radius longer than the axis mirrors again)."""
    index = torch.arange(-radius, length + radius) % (2 * length)
    return torch.where(index < length, index, 2 * length - 1 - index)


class GaussianFilter(nn.Module):
    """Separable Gaussian smoothing of maps ``(..., H, W)`` over their last two axes; same shape out.

    Args:
        sigma: the Gaussian's standard deviation, in pixels.
        truncate: the kernel's radius in standard deviations (scipy's default 4: 33 taps at σ = 4).
    """

    kernel: torch.Tensor

    def __init__(self, sigma: float, truncate: float = 4.0) -> None:
        super().__init__()
        self.register_buffer("kernel", gaussian_kernel1d(sigma, truncate).float(), persistent=False)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        height, width = maps.shape[-2:]
        radius = len(self.kernel) // 2
        kernel = self.kernel.to(maps)
        x = maps.reshape(-1, 1, height, width)
        x = x.index_select(2, symmetric_indices(height, radius).to(maps.device))
        x = F.conv2d(x, kernel.view(1, 1, -1, 1))
        x = x.index_select(3, symmetric_indices(width, radius).to(maps.device))
        x = F.conv2d(x, kernel.view(1, 1, 1, -1))
        return x.reshape(maps.shape)

"""The anomaly maps' Gaussian filter (viadk8s.models.components.smoothing) gives scipy's numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from viadk8s.models.components.smoothing import GaussianFilter, gaussian_kernel1d, symmetric_indices


def test_symmetric_indices_repeat_the_edge_pixel() -> None:
    """scipy's ``reflect``: ``d c b a | a b c d | d c b a``, and again past a second edge."""
    assert symmetric_indices(4, 2).tolist() == [1, 0, 0, 1, 2, 3, 3, 2]
    # a b, padded by 5: positions -5..-1 read a a b b a, positions 2..6 read b a a b b (period 4)
    assert symmetric_indices(2, 5).tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1]


def test_kernel_by_hand() -> None:
    """σ = 1, truncate 1: radius 1, weights ∝ (e^-½, 1, e^-½); σ = 4: scipy's 33 taps."""
    kernel = gaussian_kernel1d(1.0, truncate=1.0)
    edge = math.exp(-0.5)
    assert kernel.tolist() == pytest.approx([edge / (1 + 2 * edge), 1 / (1 + 2 * edge), edge / (1 + 2 * edge)])
    assert len(gaussian_kernel1d(4.0)) == 33 and float(gaussian_kernel1d(4.0).sum()) == pytest.approx(1.0)


def test_a_hand_computed_border() -> None:
    """A 1 x 3 map [0, 0, 3], σ = 1, truncate 1 (weights w, c, w): its last pixel reads [0, 3, 3] (the
    edge repeated), so it becomes 3·(c + w); torch's own reflect would read [0, 3, 0]: 3·c."""
    edge = math.exp(-0.5)
    centre, side = 1 / (1 + 2 * edge), edge / (1 + 2 * edge)
    smoothed = GaussianFilter(1.0, truncate=1.0)(torch.tensor([[[0.0, 0.0, 3.0]]]))
    assert smoothed.shape == (1, 1, 3)
    assert smoothed[0, 0].tolist() == pytest.approx([0.0, 3 * side, 3 * (centre + side)], abs=1e-6)


@pytest.mark.parametrize("shape", [(3, 40, 23), (2, 1, 8, 8), (1, 64, 64)])
def test_matches_scipy_gaussian_filter(shape: tuple[int, ...]) -> None:
    """The official code's ``scipy.ndimage.gaussian_filter(map, sigma=4)``, map by map, including maps
    smaller than the kernel's radius of 16."""
    maps = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    ours = GaussianFilter(4.0)(maps)
    flat = maps.reshape(-1, *shape[-2:]).double().numpy()
    expected = np.stack([gaussian_filter(m, sigma=4) for m in flat]).reshape(shape)
    assert ours.shape == maps.shape and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-6)

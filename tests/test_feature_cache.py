"""The frozen-feature cache returns exactly what the backbone gives, whatever the batching, and
never holds more than its budget."""

from __future__ import annotations

import torch

from viadk8s.models.components import FeatureCache


class Counting:
    """A deterministic stand-in backbone that counts the images it sees."""

    def __init__(self) -> None:
        self.seen = 0
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1).eval()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        self.seen += len(images)
        first = self.conv(images)
        return [first, torch.nn.functional.avg_pool2d(first, 2)]


def test_cached_features_equal_the_backbone_whatever_the_batches() -> None:
    images = torch.rand(6, 3, 8, 8)
    keys = [f"img{i}.png" for i in range(6)]
    backbone = Counting()
    cache = FeatureCache(backbone)
    direct = backbone(images)
    backbone.seen = 0
    first = cache(images[:4], keys[:4])
    assert backbone.seen == 4 and len(cache) == 4
    mixed = cache(images[[5, 1, 4]], [keys[5], keys[1], keys[4]])  # two new, one cached, shuffled
    assert backbone.seen == 6
    for level, (a, b) in enumerate(zip(first, mixed, strict=True)):
        assert torch.equal(a, direct[level][:4])
        assert torch.equal(b, direct[level][[5, 1, 4]])
    cache(images, keys)
    assert backbone.seen == 6  # every later epoch is served from memory


def test_the_cache_stays_within_its_budget() -> None:
    images = torch.rand(6, 3, 8, 8)
    keys = [f"img{i}.png" for i in range(6)]
    per_image = (4 * 8 * 8 + 4 * 4 * 4) * 4  # bytes of one image's two float32 levels
    backbone = Counting()
    cache = FeatureCache(backbone, max_bytes=2 * per_image)
    out = cache(images, keys)
    assert len(cache) == 2 and cache.bytes == 2 * per_image
    again = cache(images, keys)  # four recomputed, two served: the same numbers
    assert backbone.seen == 6 + 4
    assert all(torch.equal(a, b) for a, b in zip(out, again, strict=True))
    cache.clear()
    assert len(cache) == 0 and cache.bytes == 0

"""Frozen-backbone features of the training images, computed once per run.

A model whose backbone is frozen (and in eval mode) and whose training images are not augmented
sees the same backbone output for an image in every epoch; recomputing it is most of an epoch's
cost. The cache keys each image's features by its path, so batches may be reshuffled freely, and
returns bit-identical tensors to what the backbone would give again.

Its memory is bounded: past ``max_bytes`` (``$VIADK8S_FEATURE_CACHE_GB``, default 8 GiB: about
2,700 images' WideResNet-50 layer 2+3 maps at 256 px, 680 at 512 px) further images are computed
every epoch instead of being kept, so a large category at a large size costs time, never an
out-of-memory kill.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch

DEFAULT_MAX_GB = 8.0


class FeatureCache:
    """Per-image feature tensors keyed by image path, kept on ``storage`` (default: CPU memory).

    Args:
        extract: the frozen backbone, images ``(B, 3, H, W)`` -> a list of ``(B, ...)`` tensors.
        storage: where cached features live between epochs; they return to the batch's device.
        max_bytes: the most the cache keeps; default ``$VIADK8S_FEATURE_CACHE_GB`` GiB or 8 GiB.
    """

    def __init__(
        self,
        extract: Callable[[torch.Tensor], list[torch.Tensor]],
        storage: str | torch.device = "cpu",
        max_bytes: int | None = None,
    ) -> None:
        self.extract = extract
        self.storage = torch.device(storage)
        gigabytes = float(os.environ.get("VIADK8S_FEATURE_CACHE_GB", DEFAULT_MAX_GB))
        self.max_bytes = int(gigabytes * 2**30) if max_bytes is None else max_bytes
        self.bytes = 0
        self._features: dict[str, list[torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self._features)

    def clear(self) -> None:
        self._features.clear()
        self.bytes = 0

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, keys: Sequence[str]) -> list[torch.Tensor]:
        """The features of ``images``, computing only those whose key is not cached yet."""
        if len(keys) != len(images):
            raise ValueError(f"{len(keys)} keys for {len(images)} images")
        missing = [i for i, key in enumerate(keys) if key not in self._features]
        fresh: dict[str, list[torch.Tensor]] = {}
        if missing:
            computed = self.extract(images[missing])
            fresh = {keys[i]: [level[row] for level in computed] for row, i in enumerate(missing)}
        for key, features in fresh.items():
            size = sum(f.numel() * f.element_size() for f in features)
            if self.bytes + size <= self.max_bytes:  # full: this image is computed again next epoch
                self._features[key] = [f.to(self.storage, copy=True) for f in features]
                self.bytes += size
        rows = [fresh.get(key) or self._features[key] for key in keys]
        return [torch.stack([f.to(images.device, non_blocking=True) for f in level]) for level in zip(*rows, strict=True)]

"""Frozen-backbone features of the training images, computed once per run.

A model whose backbone is frozen (and in eval mode) and whose training images are not augmented
sees the same backbone output for an image in every epoch; recomputing it is most of an epoch's
cost. The cache keys each image's features by its path, so batches may be reshuffled freely, and
returns bit-identical tensors to what the backbone would give again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class FeatureCache:
    """Per-image feature tensors keyed by image path, kept on ``storage`` (default: CPU memory).

    Args:
        extract: the frozen backbone, images ``(B, 3, H, W)`` -> a list of ``(B, ...)`` tensors.
        storage: where cached features live between epochs; they return to the batch's device.
    """

    def __init__(self, extract: Callable[[torch.Tensor], list[torch.Tensor]], storage: str | torch.device = "cpu") -> None:
        self.extract = extract
        self.storage = torch.device(storage)
        self._features: dict[str, list[torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self._features)

    def clear(self) -> None:
        self._features.clear()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, keys: Sequence[str]) -> list[torch.Tensor]:
        """The features of ``images``, computing only those whose key is not cached yet."""
        if len(keys) != len(images):
            raise ValueError(f"{len(keys)} keys for {len(images)} images")
        missing = [i for i, key in enumerate(keys) if key not in self._features]
        if missing:
            computed = self.extract(images[missing])
            for row, i in enumerate(missing):
                self._features[keys[i]] = [level[row].to(self.storage, copy=True) for level in computed]
        levels = zip(*(self._features[key] for key in keys), strict=True)
        return [torch.stack(level).to(images.device, non_blocking=True) for level in levels]

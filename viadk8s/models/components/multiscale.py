"""A fine-tuned CNN stage seen at several input scales, shared by DevNet and DRA: both official codes
score ResNet-18's last stage of the image and of its nearest-neighbour half, so both models use this
one backbone (anomalib's ``TimmFeatureExtractor``, trainable)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from anomalib.models.components.feature_extractors import TimmFeatureExtractor
from torch import nn
from torch.nn import functional as F  # noqa: N812


def rescale(images: torch.Tensor, scale: float) -> torch.Tensor:
    """Images resized by ``scale``, nearest neighbour, each side rounded down (the official code:
    ``F.interpolate(image, size=img_size // 2)``, whose default mode is nearest); ``1`` returns them as
    they are."""
    if scale == 1:
        return images
    size = [max(1, math.floor(side * scale)) for side in images.shape[-2:]]
    return F.interpolate(images, size=size, mode="nearest")


class MultiScaleBackbone(nn.Module):
    """One CNN stage's feature maps of the input at several scales; trainable (fine-tuned).

    Args:
        backbone: timm name. ``resnet18.tv_in1k`` is torchvision's ImageNet weights, as the official code.
        pre_trained: load the ImageNet weights (from the project's offline cache).
        scales: input scales relative to the image given (official: the input and half of it).
        layer: the stage whose output is scored. Defaults to ``"layer4"``.
    """

    def __init__(self, backbone: str, pre_trained: bool, scales: Sequence[float], layer: str = "layer4") -> None:
        super().__init__()
        self.extractor = TimmFeatureExtractor(backbone, layers=[layer], pre_trained=pre_trained, requires_grad=True)
        self.layer = layer
        self.scales = tuple(scales)
        self.channels = int(self.extractor.out_dims[0])

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [self.extractor(rescale(images, scale))[self.layer] for scale in self.scales]

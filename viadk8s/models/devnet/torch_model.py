"""PyTorch model of DevNet (deviation networks), image version.

Paper:
    Title: Explainable Deep Few-shot Anomaly Detection with Deviation Networks
    Authors: Guansong Pang, Choubo Ding, Chunhua Shen, Anton van den Hengel
    Year: 2021
    URL: https://arxiv.org/abs/2108.00462

A fine-tuned ResNet-18 (up to stage 4) sees the image at several scales; a 1x1 convolution scores
every position of the last feature map, and the image score is the mean of the top 10 % of the
absolute position scores, averaged over the scales. The *deviation loss* trains the scores against a
standard normal prior: normal images are pulled to the prior mean, labelled anomalies pushed at
least ``margin`` prior standard deviations above it.

The pieces DRA shares (deviation loss, top-k scoring head, multi-scale backbone) live here. Written
from the paper, models.md and a reading of the official code (the image repository has no licence:
nothing copied); anomalib's
``TimmFeatureExtractor`` is the backbone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from anomalib.data import InferenceBatch
from anomalib.models.components.feature_extractors import TimmFeatureExtractor
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torchvision.transforms.v2 import functional as TF  # noqa: N812

PRIOR_SAMPLES = 5000
MARGIN = 5.0
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the pre-processor's normalisation
IMAGENET_STD = (0.229, 0.224, 0.225)


class DeviationLoss(nn.Module):
    """DevNet's deviation loss: ``(1 - y)·|dev| + y·max(0, margin - dev)``, batch mean.

    ``dev = (score - mean r) / std r`` for reference scores ``r ~ N(0, 1)``. The references are
    drawn once, from ``seed`` (the official code redraws them at every call, which makes the loss
    itself random); only their mean and standard deviation matter, so only those are kept.

    Args:
        margin: how many prior standard deviations an anomaly's score must reach. Defaults to 5.
        samples: number of reference scores. Defaults to 5000.
        seed: seeds the reference scores. Defaults to 0.
    """

    def __init__(self, margin: float = MARGIN, samples: int = PRIOR_SAMPLES, seed: int = 0) -> None:
        super().__init__()
        self.margin = margin
        reference = torch.randn(samples, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("prior_mean", reference.mean())
        self.register_buffer("prior_std", reference.std())

    def deviation(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores in prior standard deviations from the prior mean (a z-score)."""
        return (scores - self.prior_mean) / self.prior_std

    def forward(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean loss of ``scores`` (B,) for binary ``labels`` (B,): 1 anomaly, 0 normal."""
        deviation = self.deviation(scores)
        labels = labels.to(deviation.dtype)
        return ((1 - labels) * deviation.abs() + labels * (self.margin - deviation).clamp(min=0)).mean()


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


def rescale(images: torch.Tensor, scale: float) -> torch.Tensor:
    """Images resized by ``scale``, nearest neighbour, each side rounded down (the official code:
    ``F.interpolate(image, size=img_size // 2)``, whose default mode is nearest); ``1`` returns them as
    they are."""
    if scale == 1:
        return images
    size = [max(1, math.floor(side * scale)) for side in images.shape[-2:]]
    return F.interpolate(images, size=size, mode="nearest")


def rotate(images: torch.Tensor, angles: Sequence[float], fill: Sequence[float]) -> torch.Tensor:
    """Each image ``(C, H, W)`` of a batch turned by its angle (degrees, counter-clockwise) about its
    centre, nearest neighbour, same size; the corners it uncovers take ``fill`` (one value a channel)."""
    return torch.stack(
        [
            TF.rotate(image, float(angle), interpolation=TF.InterpolationMode.NEAREST, fill=list(fill))
            for image, angle in zip(images, angles, strict=True)
        ]
    )


def random_rotation(
    images: torch.Tensor,
    generator: torch.Generator,
    degrees: float,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """DevNet's training augmentation (torchvision's ``RandomRotation(180)`` in the official dataset):
    every image turned by an angle uniform in ``[-degrees, degrees]``, nearest neighbour, the uncovered
    corners black. The images are normalised (``mean``/``std``), so black is ``-mean / std``; nearest
    neighbour commutes with the normalisation, so this equals rotating before it."""
    if degrees == 0:
        return images
    angles = (2 * torch.rand(len(images), generator=generator) - 1) * degrees
    return rotate(images, angles.tolist(), [-m / s for m, s in zip(mean, std, strict=True)])


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


class DevnetModel(nn.Module):
    """DevNet: multi-scale ResNet features, one top-k scoring head shared by the scales.

    In training mode the forward pass returns the image scores ``(B,)`` (for the deviation loss);
    in eval mode an :class:`InferenceBatch` with those scores and the head's position scores,
    upsampled to the input and averaged over the scales, as a coarse anomaly map.

    Args:
        backbone: timm name of the ResNet. Defaults to ``"resnet18.tv_in1k"``.
        pre_trained: load ImageNet weights. Defaults to ``True``.
        scales: input scales. Defaults to ``(1.0, 0.5)``.
        top_k: share of positions averaged into a score. Defaults to ``0.1``.
    """

    def __init__(
        self,
        backbone: str = "resnet18.tv_in1k",
        pre_trained: bool = True,
        scales: Sequence[float] = (1.0, 0.5),
        top_k: float = 0.1,
    ) -> None:
        super().__init__()
        self.backbone = MultiScaleBackbone(backbone, pre_trained, scales)
        self.head = TopKHead(self.backbone.channels)
        self.top_k = top_k

    def forward(self, images: torch.Tensor) -> torch.Tensor | InferenceBatch:
        maps = [self.head(features) for features in self.backbone(images)]
        scores = torch.stack([top_k_mean(m, self.top_k) for m in maps]).mean(dim=0)
        if self.training:
            return scores
        size = images.shape[-2:]
        upsampled = [F.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=False) for m in maps]
        return InferenceBatch(pred_score=scores, anomaly_map=torch.stack(upsampled).mean(dim=0).squeeze(1))

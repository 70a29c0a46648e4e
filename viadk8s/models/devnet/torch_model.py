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

The pieces DRA shares (deviation loss, top-k scoring head, multi-scale backbone) are in
:mod:`viadk8s.models.components`. Written from the paper, models.md and a reading of the official
code (the image repository has no licence: nothing copied); anomalib's ``TimmFeatureExtractor`` is
the backbone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from anomalib.data import InferenceBatch
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torchvision.transforms.v2 import functional as TF  # noqa: N812

from viadk8s.models.components.multiscale import MultiScaleBackbone
from viadk8s.models.components.normalisation import IMAGENET_MEAN, IMAGENET_STD
from viadk8s.models.components.top_k import TopKHead, top_k_mean


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


class DevnetModel(nn.Module):
    """DevNet: multi-scale ResNet features, one top-k scoring head shared by the scales.

    In training mode the forward pass returns the image scores ``(B,)`` (for the deviation loss);
    in eval mode an :class:`InferenceBatch` with those scores and the head's position scores,
    upsampled to the input and averaged over the scales, as a coarse anomaly map.

    Args:
        backbone: the multi-scale ResNet (the Lightning module's settings: ResNet-18, scales 1 and 1/2).
        top_k: share of positions averaged into a score.
    """

    def __init__(self, backbone: MultiScaleBackbone, top_k: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = TopKHead(backbone.channels)
        self.top_k = top_k

    def forward(self, images: torch.Tensor) -> torch.Tensor | InferenceBatch:
        maps = [self.head(features) for features in self.backbone(images)]
        scores = torch.stack([top_k_mean(m, self.top_k) for m in maps]).mean(dim=0)
        if self.training:
            return scores
        size = images.shape[-2:]
        upsampled = [F.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=False) for m in maps]
        return InferenceBatch(pred_score=scores, anomaly_map=torch.stack(upsampled).mean(dim=0).squeeze(1))

"""PyTorch model of DRA (disentangled representations of abnormalities).

Paper:
    Title: Catching Both Gray and Black Swans: Open-set Supervised Anomaly Detection
    Authors: Choubo Ding, Guansong Pang, Chunhua Shen
    Venue: CVPR 2022
    URL: https://arxiv.org/abs/2203.14506

A fine-tuned ResNet-18 (stage 4, two input scales: the image and its nearest-neighbour half) feeds
four heads, each averaged over the scales:

* **holistic** (normality): global average pool -> FC 256 -> ReLU -> FC 1 -> |.|; high for normal images;
* **seen** anomalies: a 1x1 top-k head (DevNet's), trained on normal vs the labelled anomalies;
* **pseudo** anomalies: the same kind of head, trained on normal vs CutMix-style pasted patches of
  normal images (:func:`cut_paste`), which stand in for unseen kinds of defect;
* **composite** (latent residual): the mean features of 5 reference images (normal images, some
  turned into pseudo anomalies, as the official reference loader serves them) minus the query's,
  conv3x3 + BatchNorm + ReLU, then a top-k head.

Each head is trained with DevNet's deviation loss; the anomaly score is
``-holistic + seen + pseudo + composite``. Written from the paper, models.md and a reading of the
official code (AGPL-3.0: nothing copied); the deviation loss, top-k head and backbone are DevNet's,
shared through :mod:`viadk8s.models.components`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from anomalib.data import InferenceBatch
from anomalib.models.components.base import DynamicBufferMixin
from torch import nn
from torchvision.transforms.v2 import functional as TF  # noqa: N812

from viadk8s.models.components.deviation import DeviationLoss
from viadk8s.models.components.multiscale import MultiScaleBackbone
from viadk8s.models.components.normalisation import IMAGENET_MEAN, IMAGENET_STD
from viadk8s.models.components.top_k import TopKHead, top_k_mean

NORMAL, SEEN, PSEUDO = 0, 1, 2  # training labels: normal image, labelled anomaly, pseudo anomaly
HEADS = ("holistic", "seen", "pseudo", "composite")

Box = tuple[int, int, int, int]  # top, left, height, width


class HolisticHead(nn.Module):
    """Normality score of the whole image: global average pool -> FC -> ReLU -> FC 1 -> |.|."""

    def __init__(self, channels: int, hidden: int = 256) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features.mean(dim=(2, 3))).abs().squeeze(1)


class CompositeHead(nn.Module):
    """Abnormality of the residual between the reference images' mean features and the query's."""

    def __init__(self, channels: int, top_k: float) -> None:
        super().__init__()
        self.residual = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
        self.scorer = TopKHead(channels)
        self.top_k = top_k

    def forward(self, features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Scores ``(B,)`` of features ``(B, C, h, w)`` against the mean reference features ``(C, h, w)``."""
        return top_k_mean(self.scorer(self.residual(reference - features)), self.top_k)


class DraModel(DynamicBufferMixin, nn.Module):
    """DRA's network. In training mode the forward pass returns the four head scores ``(B, 4)``
    (order :data:`HEADS`); in eval mode an :class:`InferenceBatch` with the anomaly score only.

    Reference images (pre-processed, ``(n, 3, H, W)``): in training each batch brings its own (the
    official code draws new ones for every batch), which pass through the backbone together with the
    queries, as in the official code (its BatchNorm sees both). For evaluation one set is a buffer set
    once per fit (see the Lightning module), whose mean features are computed once and kept until the
    mode changes.

    Args:
        backbone: the multi-scale ResNet (the Lightning module's settings: ResNet-18, scales 1 and 1/2).
        top_k: share of positions averaged by the top-k heads.
    """

    def __init__(self, backbone: MultiScaleBackbone, top_k: float) -> None:
        super().__init__()
        self.backbone = backbone
        channels = backbone.channels
        self.holistic = HolisticHead(channels)
        self.seen = TopKHead(channels)
        self.pseudo = TopKHead(channels)
        self.composite = CompositeHead(channels, top_k)
        self.top_k = top_k
        self.references: torch.Tensor
        self.register_buffer("references", torch.empty(0))
        self._reference_features: list[torch.Tensor] | None = None

    def set_references(self, images: torch.Tensor) -> None:
        """The composite head's reference images for evaluation, pre-processed like the queries."""
        self.references = images.to(self.references.device)
        self._reference_features = None

    def train(self, mode: bool = True) -> DraModel:
        """Switching mode forgets the cached reference features (the backbone may have changed)."""
        self._reference_features = None
        return super().train(mode)

    def _features(self, images: torch.Tensor, references: torch.Tensor | None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per scale, the query features and the mean reference features."""
        if self.training:  # one pass, as in training the backbone's BatchNorm sees both
            if references is None or len(references) == 0:
                msg = "DRA trains with reference images: pass each batch's references"
                raise RuntimeError(msg)
            n = len(references)
            features = self.backbone(torch.cat([references, images]))
            return [f[n:] for f in features], [f[:n].mean(dim=0) for f in features]
        if self.references.ndim != 4 or len(self.references) == 0:
            msg = "DRA has no reference images for evaluation: set_references() before testing"
            raise RuntimeError(msg)
        if self._reference_features is None:
            self._reference_features = [f.mean(dim=0) for f in self.backbone(self.references)]
        return self.backbone(images), self._reference_features

    def head_scores(self, images: torch.Tensor, references: torch.Tensor | None = None) -> torch.Tensor:
        """The four heads' scores ``(B, 4)``, each averaged over the scales; ``references``: the batch's
        own in training (ignored in evaluation, which uses :meth:`set_references`'s)."""
        per_scale = [
            torch.stack(
                [
                    self.holistic(features),
                    top_k_mean(self.seen(features), self.top_k),
                    top_k_mean(self.pseudo(features), self.top_k),
                    self.composite(features, reference),
                ],
                dim=1,
            )
            for features, reference in zip(*self._features(images, references), strict=True)
        ]
        return torch.stack(per_scale).mean(dim=0)

    def forward(self, images: torch.Tensor, references: torch.Tensor | None = None) -> torch.Tensor | InferenceBatch:
        scores = self.head_scores(images, references)
        return scores if self.training else InferenceBatch(pred_score=anomaly_score(scores))


def anomaly_score(head_scores: torch.Tensor) -> torch.Tensor:
    """``-holistic + seen + pseudo + composite``: the normality head counts against."""
    return head_scores[:, 1:].sum(dim=1) - head_scores[:, 0]


def dra_loss(head_scores: torch.Tensor, labels: torch.Tensor, deviation: DeviationLoss) -> torch.Tensor:
    """Sum of the heads' deviation losses for labels 0 (normal), 1 (seen), 2 (pseudo anomaly).

    holistic: every image, target "normal" (the normality head scores normal images high);
    seen: normal and seen anomalies; pseudo: normal and pseudo anomalies; composite: every image,
    target "not normal". A head with no image to learn from in a batch adds nothing.
    """
    anomalous = (labels != NORMAL).to(head_scores.dtype)
    losses = [deviation(head_scores[:, 0], 1 - anomalous), deviation(head_scores[:, 3], anomalous)]
    for head, rows in ((1, labels != PSEUDO), (2, labels != SEEN)):
        if rows.any():
            losses.append(deviation(head_scores[rows, head], anomalous[rows]))
    return torch.stack(losses).sum()


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(1, generator=generator))


def _integer(generator: torch.Generator, low: int, high: int) -> int:
    """Uniform in ``[low, high]`` (both included)."""
    return low + int(torch.randint(high - low + 1, (1,), generator=generator))


def colour_jitter(patch: torch.Tensor, generator: torch.Generator, strength: float) -> torch.Tensor:
    """Brightness, contrast and saturation x U(1 - s, 1 + s), hue + U(-s, s) (in [0, 1] images), in a
    random order, as torchvision's ``ColorJitter`` (the official code's) applies them."""
    factors = [_uniform(generator, 1 - strength, 1 + strength) for _ in range(3)] + [_uniform(generator, -strength, strength)]
    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in torch.randperm(len(adjust), generator=generator).tolist():
        patch = adjust[i](patch, factors[i])
    return patch


def cut_paste(
    image: torch.Tensor,
    generator: torch.Generator,
    area: tuple[float, float] = (0.02, 0.15),
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    jitter: float = 0.1,
) -> tuple[torch.Tensor, Box]:
    """A pseudo anomaly: a box of the image, colour-jittered, pasted elsewhere in the same image.

    The box covers ``area`` of the image (shares, both included, exact after rounding to pixels),
    its width/height ratio is drawn log-uniformly from ``aspect``; source and target positions are
    uniform. Only the target box changes.

    Args:
        image: ``(3, H, W)`` in [0, 1].
        generator: the source of every random draw.

    Returns:
        The new image and the target box ``(top, left, height, width)``.
    """
    _, height, width = image.shape
    smallest, largest = math.ceil(area[0] * height * width), math.floor(area[1] * height * width)
    pixels = _integer(generator, smallest, largest)
    ratio = math.exp(_uniform(generator, math.log(aspect[0]), math.log(aspect[1])))
    box_width = min(max(round(math.sqrt(pixels * ratio)), 1), width)
    box_height = min(max(round(pixels / box_width), math.ceil(smallest / box_width)), height, largest // box_width)
    top, left = _integer(generator, 0, height - box_height), _integer(generator, 0, width - box_width)
    source_top, source_left = _integer(generator, 0, height - box_height), _integer(generator, 0, width - box_width)
    patch = image[:, source_top : source_top + box_height, source_left : source_left + box_width]
    pasted = image.clone()
    pasted[:, top : top + box_height, left : left + box_width] = colour_jitter(patch, generator, jitter)
    return pasted, (top, left, box_height, box_width)


def pseudo_anomalies(
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    probability: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn each normal image of a normalised batch into a :func:`cut_paste` pseudo anomaly (label 2)
    with ``probability``. The paste is made in [0, 1] colours (``mean``/``std``: the normalisation);
    only the pasted box is written back, so every other pixel keeps its exact value."""
    images, labels = images.clone(), labels.clone()
    shift = torch.tensor(mean, device=images.device, dtype=images.dtype).view(-1, 1, 1)
    scale = torch.tensor(std, device=images.device, dtype=images.dtype).view(-1, 1, 1)
    for i in (labels == NORMAL).nonzero().flatten().tolist():
        if float(torch.rand(1, generator=generator)) >= probability:
            continue
        pasted, (top, left, height, width) = cut_paste((images[i] * scale + shift).clamp(0, 1), generator)
        box = (slice(None), slice(top, top + height), slice(left, left + width))
        images[i][box] = ((pasted - shift) / scale)[box]
        labels[i] = PSEUDO
    return images, labels

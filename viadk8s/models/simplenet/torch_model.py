"""SimpleNet: a frozen backbone, a feature adaptor and a discriminator of noised features.

Patch features of a frozen backbone are adapted by one linear layer; a small discriminator learns to
score them positive and the same features plus Gaussian noise negative. At test time an anomalous
patch is one the discriminator does not recognise as normal.

Paper: `SimpleNet: A Simple Network for Image Anomaly Detection and Localization
<https://arxiv.org/abs/2303.15140>` (Liu, Zhou, Xu, Yang; CVPR 2023).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812 - torch's convention
from anomalib.data import InferenceBatch
from anomalib.models.components import TimmFeatureExtractor
from anomalib.models.image.glass.components import Aggregator, PatchMaker, Preprocessing, Projection
from torch import nn

from viadk8s.models.components.smoothing import GaussianFilter


def init_weight(module: nn.Module) -> None:
    """The official initialisation (``simplenet.py``'s ``init_weight``): Xavier-normal weights of
    linear layers, their biases at PyTorch's default U(±1/√fan_in); BatchNorm is left at PyTorch's
    default (weight 1, bias 0). GLASS's ``init_weight``, which anomalib's ``Projection`` applies,
    zeroes the biases (and would draw BatchNorm weights from N(1, 0.02²)): this restores them."""
    if isinstance(module, nn.Linear):
        module.reset_parameters()
        nn.init.xavier_normal_(module.weight)


class Discriminator(nn.Module):
    """Linear → BatchNorm → LeakyReLU(0.2) → Linear without bias, initialised as the official code.

    Unlike GLASS's discriminator it ends without a sigmoid: SimpleNet's hinge loss wants raw scores.
    """

    def __init__(self, in_features: int, hidden: int = 1024) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.2))
        self.tail = nn.Linear(hidden, 1, bias=False)
        self.apply(init_weight)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Normality scores ``(N,)`` of features ``(N, D)``: high for normal features."""
        return self.tail(self.body(features)).squeeze(1)


class SimplenetModel(nn.Module):
    """SimpleNet's network: frozen feature extractor, patch aggregation, adaptor and discriminator.

    Args:
        backbone: timm backbone name.
        layers: backbone layers; the first sets the patch grid.
        pre_trained: load the backbone's ImageNet weights (False: a random, still frozen, backbone).
        embed_dim: patch feature size, per layer and after aggregating the layers.
        patch_size: neighbourhood aggregated around each position.
        discriminator_hidden: width of the discriminator's hidden layer.
        noise_std: standard deviation of the Gaussian noise that makes anomalous features.
        margin: the hinge loss's margin, on both sides.
        blur_sigma: Gaussian smoothing of the upsampled anomaly map.
    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2.tv_in1k",
        layers: Sequence[str] = ("layer2", "layer3"),
        pre_trained: bool = True,
        embed_dim: int = 1536,
        patch_size: int = 3,
        discriminator_hidden: int = 1024,
        noise_std: float = 0.015,
        margin: float = 0.5,
        blur_sigma: float = 4.0,
    ) -> None:
        super().__init__()
        self.layers = list(layers)
        self.noise_std = noise_std
        self.margin = margin
        self.feature_extractor = TimmFeatureExtractor(backbone, self.layers, pre_trained=pre_trained, requires_grad=False)
        self.feature_extractor.requires_grad_(False)
        self.patch_maker = PatchMaker(patch_size, stride=1)
        self.preprocessing = Preprocessing(list(self.feature_extractor.out_dims), embed_dim, patchsize=patch_size)
        self.aggregator = Aggregator(target_dim=embed_dim, num_features=len(self.layers))
        self.adaptor = Projection(embed_dim, embed_dim, n_layers=1)
        self.adaptor.apply(init_weight)  # the official bias, not GLASS's zeros
        self.discriminator = Discriminator(embed_dim, discriminator_hidden)
        self.blur = GaussianFilter(sigma=blur_sigma)

    def extract(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The frozen backbone's maps of ``self.layers`` (eval mode, no gradient): what a cache may keep."""
        features = self.feature_extractor(images)
        return [features[layer] for layer in self.layers]

    def embed(self, maps: list[torch.Tensor]) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch features ``(B·h·w, embed_dim)`` on the first map's ``(h, w)`` grid.

        Each position's neighbourhood is unfolded, deeper maps are resized bilinearly to the first
        grid, each layer is pooled to ``embed_dim`` and the layers together to ``embed_dim`` again
        (PatchCore's aggregation, with GLASS's components).
        """
        height, width = maps[0].shape[-2:]
        per_layer = []
        for feature_map in maps:
            patches = self.patch_maker.patchify(feature_map)  # (B, h'·w', C, p, p)
            batch, _, channels, size, _ = patches.shape
            patches = patches.reshape(batch, *feature_map.shape[-2:], channels * size * size)
            if feature_map.shape[-2:] != (height, width):
                patches = patches.permute(0, 3, 1, 2)
                patches = F.interpolate(patches, size=(height, width), mode="bilinear", align_corners=False)
                patches = patches.permute(0, 2, 3, 1)
            per_layer.append(patches.reshape(-1, channels * size * size))
        return self.aggregator(self.preprocessing(per_layer)), (height, width)

    def loss(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Truncated hinge loss ``mean(max(0, m − D(real))) + mean(max(0, m + D(fake)))`` and its two terms.

        Real = adapted features, fake = real + N(0, noise_std²); both pass through the discriminator
        as one batch, so they share its BatchNorm statistics.
        """
        real = self.adaptor(features)
        fake = real + torch.randn_like(real) * self.noise_std
        real_scores, fake_scores = self.discriminator(torch.cat([real, fake])).chunk(2)
        real_loss = F.relu(self.margin - real_scores).mean()
        fake_loss = F.relu(self.margin + fake_scores).mean()
        return real_loss + fake_loss, real_loss, fake_loss

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> InferenceBatch:
        """Image scores ``(B,)`` (the highest patch score) and anomaly maps ``(B, H, W)`` at input size.

        A patch's score is the negated discriminator output; the map is upsampled bilinearly and
        smoothed with a Gaussian (scipy's, as the official code).
        """
        features, grid = self.embed(self.extract(images))
        patch_scores = -self.discriminator(self.adaptor(features)).reshape(len(images), 1, *grid)
        anomaly_map = F.interpolate(patch_scores, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return InferenceBatch(pred_score=patch_scores.flatten(1).amax(1), anomaly_map=self.blur(anomaly_map).squeeze(1))

"""SimpleNet: a frozen backbone, a feature adaptor and a discriminator of noised features.

The adaptor and the discriminator have their own optimisers (AdamW and Adam), so training uses
Lightning's manual optimisation, as anomalib's GLASS does. The backbone is frozen and the training
images are not augmented, so the backbone's maps of each training image are computed once per run
(:class:`~viadk8s.models.components.FeatureCache`) and only the adaptor and discriminator run
every epoch.

Paper: `SimpleNet: A Simple Network for Image Anomaly Detection and Localization
<https://arxiv.org/abs/2303.15140>` (Liu, Zhou, Xu, Yang; CVPR 2023).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Unpack

import torch
from anomalib.data import Batch
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import optim

from viadk8s.models.components import FeatureCache
from viadk8s.models.components.module import Module, Processors
from viadk8s.models.simplenet.torch_model import SimplenetModel


class Simplenet(Module):
    """SimpleNet as an anomalib module (one-class: trained on normal images only); no gradient
    clipping (manual optimisation).

    The inherited ``configure_pre_processor(image_size)`` resizes to exactly ``image_size`` and
    normalises with ImageNet statistics, with no centre crop (the protocol's preprocessing).

    Args:
        backbone: timm backbone name.
        layers: backbone layers; the first sets the patch grid. Defaults to ``["layer2", "layer3"]``.
        pre_trained: load the backbone's ImageNet weights.
        embed_dim: patch feature size.
        discriminator_hidden: width of the discriminator's hidden layer.
        noise_std: standard deviation of the noise that makes anomalous features.
        margin: the hinge loss's margin.
        adaptor_lr: AdamW learning rate of the adaptor.
        discriminator_lr: Adam learning rate of the discriminator.
        discriminator_weight_decay: Adam weight decay of the discriminator.
        cache_features: compute the backbone's maps of each training image once per run.
        **processors: anomalib's pre-processor, post-processor, evaluator and visualiser, or whether
            to build the default ones (:class:`~viadk8s.models.components.module.Processors`).
    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2.tv_in1k",
        layers: Sequence[str] | None = None,
        pre_trained: bool = True,
        embed_dim: int = 1536,
        discriminator_hidden: int = 1024,
        noise_std: float = 0.015,
        margin: float = 0.5,
        adaptor_lr: float = 1e-4,
        discriminator_lr: float = 2e-4,
        discriminator_weight_decay: float = 1e-5,
        cache_features: bool = True,
        **processors: Unpack[Processors],
    ) -> None:
        super().__init__(**processors)
        self.model = SimplenetModel(
            backbone=backbone,
            layers=layers or ["layer2", "layer3"],
            pre_trained=pre_trained,
            embed_dim=embed_dim,
            discriminator_hidden=discriminator_hidden,
            noise_std=noise_std,
            margin=margin,
        )
        self.adaptor_lr = adaptor_lr
        self.discriminator_lr = discriminator_lr
        self.discriminator_weight_decay = discriminator_weight_decay
        self.feature_cache = FeatureCache(self.patch_features) if cache_features else None
        self.automatic_optimization = False

    def patch_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Each image's aggregated patch features ``(B, h·w, embed_dim)``: the frozen part of the
        network (backbone and PatchCore-style aggregation), what the cache keeps."""
        features, _ = self.model.embed(self.model.extract(images))
        return [features.reshape(len(images), -1, features.shape[-1])]

    def training_features(self, images: torch.Tensor, paths: Sequence[str]) -> torch.Tensor:
        """Patch features ``(B·h·w, embed_dim)`` of training images; computed once per image when caching."""
        (features,) = self.feature_cache(images, paths) if self.feature_cache is not None else self.patch_features(images)
        return features.reshape(-1, features.shape[-1])

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """One step of both optimisers on the hinge loss of the batch's real and noised features."""
        del args, kwargs  # These variables are not used.
        adaptor_optimizer, discriminator_optimizer = self.optimizers()
        features = self.training_features(batch.image, batch.image_path)
        adaptor_optimizer.zero_grad()
        discriminator_optimizer.zero_grad()
        loss, real_loss, fake_loss = self.model.loss(features)
        self.manual_backward(loss)
        adaptor_optimizer.step()
        discriminator_optimizer.step()
        self.log("train_loss", loss, prog_bar=True)
        self.log("real_loss", real_loss)
        self.log("fake_loss", fake_loss)
        return {"loss": loss.detach()}

    def configure_optimizers(self) -> list[optim.Optimizer]:
        """AdamW for the adaptor, Adam with weight decay for the discriminator; no scheduler."""
        return [
            optim.AdamW(self.model.adaptor.parameters(), lr=self.adaptor_lr),
            optim.Adam(
                self.model.discriminator.parameters(), lr=self.discriminator_lr, weight_decay=self.discriminator_weight_decay
            ),
        ]

"""DevNet Lightning model: deviation loss on balanced batches of normal images and labelled anomalies.

Paper:
    Title: Explainable Deep Few-shot Anomaly Detection with Deviation Networks
    Authors: Guansong Pang, Choubo Ding, Chunhua Shen, Anton van den Hengel
    Year: 2021
    URL: https://arxiv.org/abs/2108.00462

A supervised model: it trains on the supervised experiment's labelled anomalies (label 1) next to
the normal images, in the balanced batches of :mod:`viadk8s.data.supervised` (the official 24 + 24),
every image turned by a random angle (the official ``RandomRotation(180)``), and scores images only
(the benchmark reports no pixel metric for it).

See Also:
    :class:`viadk8s.models.devnet.torch_model.DevnetModel`: the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Unpack

import torch
from anomalib.data import Batch
from lightning.pytorch.utilities.types import STEP_OUTPUT

from viadk8s.models.components.deviation_training import DeviationTraining
from viadk8s.models.components.module import Processors
from viadk8s.models.components.multiscale import MultiScaleBackbone

from .torch_model import DevnetModel, random_rotation


class Devnet(DeviationTraining):
    """DevNet: a fine-tuned ResNet scored by a top-k head, trained with the deviation loss.

    Args:
        backbone: timm name of the ResNet. Defaults to ``"resnet18.tv_in1k"`` (torchvision's
            ImageNet weights, as the official code).
        pre_trained: load the backbone's ImageNet weights. Defaults to ``True``.
        scales: input scales, relative to the pre-processed image, whose scores are averaged.
            Defaults to ``(1.0, 0.5)``.
        top_k: share of the feature-map positions averaged into the image score. Defaults to ``0.1``.
        margin: deviation-loss margin, in prior standard deviations. Defaults to ``5.0``.
        learning_rate: Adam's learning rate. Defaults to ``2e-4``.
        weight_decay: Adam's weight decay. Defaults to ``1e-5``.
        rotation: training images are turned by an angle uniform in ``[-rotation, rotation]`` degrees
            (the official augmentation, which the benchmark removed for DRA only); ``0``: none.
            Defaults to ``180.0``.
        seed: seeds the deviation loss's reference scores and the rotations; ``None``: the seed torch
            was last given (the run seed, set by ``seed_everything`` before the model is built).
        **processors: anomalib's pre-processor (resize and ImageNet normalisation, no crop),
            post-processor, evaluator and visualiser (:class:`~viadk8s.models.components.module.Processors`).
    """

    def __init__(
        self,
        backbone: str = "resnet18.tv_in1k",
        pre_trained: bool = True,
        scales: Sequence[float] = (1.0, 0.5),
        top_k: float = 0.1,
        margin: float = 5.0,
        learning_rate: float = 2e-4,
        weight_decay: float = 1e-5,
        rotation: float = 180.0,
        seed: int | None = None,
        **processors: Unpack[Processors],
    ) -> None:
        super().__init__(margin, learning_rate, weight_decay, seed, **processors)
        self.model = DevnetModel(MultiScaleBackbone(backbone, pre_trained, scales), top_k)
        self.rotation = rotation
        self.rotation_generator = torch.Generator().manual_seed(self.seed)

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Deviation loss of the randomly turned images' scores against their labels (1: labelled anomaly)."""
        del args, kwargs  # These variables are not used.
        images = random_rotation(batch.image, self.rotation_generator, self.rotation)
        return self.logged_loss(self.loss(self.model(images), batch.gt_label))

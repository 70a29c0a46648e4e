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

Example:
    >>> from anomalib.engine import Engine
    >>> from viadk8s.models.devnet import Devnet
    >>> model = Devnet(pre_trained=False)
    >>> Engine(max_epochs=50).fit(model, datamodule=datamodule)  # doctest: +SKIP

See Also:
    :class:`viadk8s.models.devnet.torch_model.DevnetModel`: the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from functools import partial
from typing import Any, ClassVar

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import optim

from viadk8s.data.supervised import BalancedBatches, BalancedBatchSampler

from .torch_model import DeviationLoss, DevnetModel, random_rotation

DECAY_EVERY = 10  # epochs between the learning-rate steps
DECAY = 0.1
GRADIENT_CLIP_NORM = 1.0
OFFICIAL_BATCH = 48  # both official training scripts' --batch_size
STEPS_PER_EPOCH = 20  # both official training scripts' --steps_per_epoch


def step_decay(epoch: int, shift: int) -> float:
    """Learning-rate factor of an epoch (0-based): ×``DECAY`` every ``DECAY_EVERY`` epochs, the
    steps ``shift`` epochs early."""
    return DECAY ** ((epoch + shift) // DECAY_EVERY)


class DeviationTraining(AnomalibModule):
    """The training recipe DevNet and DRA share: balanced supervised batches of their own (20 steps
    per epoch), Adam with weight decay, the learning rate ×0.1 every 10 epochs, gradient norm clipped
    at 1. Subclasses set ``self.model`` (whose eval-mode forward gives an :class:`InferenceBatch`),
    ``learning_rate`` and ``weight_decay``; ``balanced_batches`` and ``decay_shift`` where their
    official code differs from DevNet's.

    ``decay_shift``: epochs by which the decays come early. DevNet's official loop steps its
    ``StepLR`` after each epoch (0); DRA's steps it before each epoch, which in PyTorch >= 1.1 (its
    pinned 1.1.0 included) skips the schedule's first value, so each decay comes one epoch early (1).
    """

    balanced_batches: ClassVar[BalancedBatches | None] = BalancedBatches(
        steps_per_epoch=STEPS_PER_EPOCH, batch_size=OFFICIAL_BATCH, normal_share=Fraction(1, 2)
    )
    decay_shift: ClassVar[int] = 0
    model: torch.nn.Module
    learning_rate: float
    weight_decay: float
    model_report: dict[str, Any]  # for result.json, whose spec's batch size these batches do not follow

    def on_train_start(self) -> None:
        """Record the batches the training loader serves."""
        sampler = self.trainer.train_dataloader.batch_sampler
        if isinstance(sampler, BalancedBatchSampler):
            batch = {"references": sampler.n_references, "normal": sampler.n_normal, "labelled_anomalies": sampler.n_anomalous}
            self.model_report = {"train_batch": batch, "steps_per_epoch": sampler.steps_per_epoch}

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Image scores of a validation or test batch."""
        del args, kwargs  # These variables are not used.
        return batch.update(**self.model(batch.image)._asdict())

    def configure_optimizers(self) -> dict[str, Any]:
        """Adam on every parameter (the backbone is fine-tuned), stepped down per epoch."""
        optimizer = optim.Adam(self.model.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        scheduler = optim.lr_scheduler.LambdaLR(optimizer, partial(step_decay, shift=self.decay_shift))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """Gradient-norm clipping at 1, as the official training; no sanity validation."""
        return {"gradient_clip_val": GRADIENT_CLIP_NORM, "gradient_clip_algorithm": "norm", "num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """anomalib has no supervised learning type; ``ONE_CLASS`` is the one its Engine trains."""
        return LearningType.ONE_CLASS


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
        pre_processor: resize and ImageNet normalisation (no crop). Defaults to ``True``.
        post_processor: Defaults to ``True``.
        evaluator: Defaults to ``True``.
        visualizer: Defaults to ``True``.
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
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        seed = torch.initial_seed() if seed is None else seed
        self.model = DevnetModel(backbone=backbone, pre_trained=pre_trained, scales=scales, top_k=top_k)
        self.loss = DeviationLoss(margin=margin, seed=seed)
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.rotation = rotation
        self.rotation_generator = torch.Generator().manual_seed(seed)

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Deviation loss of the randomly turned images' scores against their labels (1: labelled anomaly)."""
        del args, kwargs  # These variables are not used.
        images = random_rotation(batch.image, self.rotation_generator, self.rotation)
        loss = self.loss(self.model(images), batch.gt_label)
        self.log("train_loss", loss.item(), on_epoch=True, prog_bar=True, logger=True)
        return {"loss": loss}

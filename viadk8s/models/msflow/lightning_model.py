"""MSFlow Lightning model: training by maximum likelihood; at test time the official two maps.

Paper:
    Title: MSFlow: Multi-Scale Flow-based Framework for Unsupervised Anomaly Detection
    Authors: Yixuan Zhou, Xing Xu, Jingkuan Song, Fumin Shen, Heng Tao Shen
    Venue: IEEE Transactions on Neural Networks and Learning Systems, 2024
    URL: https://arxiv.org/abs/2308.15300

See Also:
    :class:`viadk8s.models.msflow.torch_model.MsflowModel`: the network.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, ClassVar, Unpack

import torch
from anomalib.data import Batch
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import optim

from viadk8s.metrics import PIXEL_AUROC_MAP
from viadk8s.models.components import FeatureCache
from viadk8s.models.components.module import Module, Processors, epoch_schedule

from .torch_model import MsflowModel, ScoreMap, nll_loss

# The official schedule, in passes over the training set: 25 meta-epochs of 4 sub-epochs (100 passes), the
# scheduler stepped after each pass; linear warm-up from 0.1x over 3 meta-epochs (12 passes), then x0.33
# after pass 70 and pass 90. As shares of the passes it follows the trainer's epochs.
WARMUP_FROM = 0.1
WARMUP_SHARE = 12 / 100
DECAY_AT = (70 / 100, 90 / 100)
DECAY = 0.33
GRADIENT_CLIP_NORM = 2.0


def warmup_epochs(max_epochs: int) -> int:
    """Epochs of linear warm-up: 12 of the protocol's 100, as the official 3 meta-epochs of 4 passes."""
    return round(WARMUP_SHARE * max_epochs)


def learning_rate_factor(epoch: int, max_epochs: int) -> float:
    """Multiplier of the base learning rate in ``epoch`` (0-based): linear warm-up, then step decay."""
    warmup = warmup_epochs(max_epochs)
    rise = WARMUP_FROM + (1 - WARMUP_FROM) * epoch / warmup if epoch < warmup else 1.0
    return rise * DECAY ** sum(epoch >= round(share * max_epochs) for share in DECAY_AT)


class Msflow(Module):
    """MSFlow: multi-scale normalising flows on frozen CNN features; the gradient norm (of all flow
    parameters together) clipped at 2, as the official training.

    Args:
        backbone: timm name of the frozen CNN. Defaults to ``"wide_resnet50_2.tv_in1k"`` (torchvision's
            ImageNet weights, as the official code).
        layers: layers giving the scales, one parallel flow each. Defaults to layers 1-3.
        pre_trained: load the backbone's ImageNet weights. Defaults to ``True``.
        flow_blocks: coupling blocks of each scale's parallel flow. Defaults to ``(2, 5, 8)``.
        clamp: affine clamping of the couplings. Defaults to ``1.9``.
        condition_channels: channels of the positional encoding. Defaults to ``64``.
        top_k: share of the anomaly map's highest pixels averaged into the image score.
            Defaults to ``0.03``.
        score_map: the map giving the image score, AUPRO and F1Max: ``"multiplication"`` (the official
            code; pixel AUROC from the addition map) or ``"addition"`` (the benchmark paper's one map for
            every metric). Defaults to ``"multiplication"``.
        learning_rate: Adam's base learning rate. Defaults to ``1e-4``.
        cache_features: compute the frozen backbone's features of each training image once per run
            (training images are not augmented, so every epoch would recompute the same numbers).
            Defaults to ``True``.
        **processors: anomalib's pre-processor (resize and ImageNet normalisation, no crop),
            post-processor, evaluator and visualiser (:class:`~viadk8s.models.components.module.Processors`).
    """

    gradient_clip_norm: ClassVar[float] = GRADIENT_CLIP_NORM

    def __init__(
        self,
        backbone: str = "wide_resnet50_2.tv_in1k",
        layers: Sequence[str] = ("layer1", "layer2", "layer3"),
        pre_trained: bool = True,
        flow_blocks: Sequence[int] = (2, 5, 8),
        clamp: float = 1.9,
        condition_channels: int = 64,
        top_k: float = 0.03,
        score_map: ScoreMap = "multiplication",
        learning_rate: float = 1e-4,
        cache_features: bool = True,
        **processors: Unpack[Processors],
    ) -> None:
        super().__init__(**processors)
        self.model = MsflowModel(
            backbone=backbone,
            layers=layers,
            pre_trained=pre_trained,
            flow_blocks=flow_blocks,
            clamp=clamp,
            condition_channels=condition_channels,
            top_k=top_k,
            score_map=score_map,
        )
        self.learning_rate = learning_rate
        self.feature_cache = FeatureCache(self.model.extract) if cache_features else None

    def training_features(self, batch: Batch) -> list[torch.Tensor]:
        """The pooled backbone features of a training batch, from the cache when it is on."""
        if self.feature_cache is None:
            return self.model.extract(batch.image)
        return self.feature_cache(batch.image, batch.image_path)

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Negative log-likelihood of the batch's features (summed over each image's dimensions)."""
        del args, kwargs  # These variables are not used.
        latents, log_det = self.model.flows(self.training_features(batch))
        return self.logged_loss(nll_loss(latents, log_det))

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Image scores and anomaly maps of a batch; beside them, as ``PIXEL_AUROC_MAP``, the addition
        map where pixel AUROC is not scored on the anomaly map."""
        del args, kwargs  # These variables are not used.
        predictions, auroc_map = self.model.evaluate(batch.image)
        batch.update(**predictions._asdict())
        if auroc_map is not None:
            setattr(batch, PIXEL_AUROC_MAP, auroc_map)
        return batch

    def test_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """As :meth:`validation_step` (anomalib's own test step would drop the pixel-AUROC map)."""
        return self.validation_step(batch, *args, **kwargs)

    def configure_optimizers(self) -> dict[str, Any]:
        """Adam on the flows; warm-up over 12 % of the trainer's epochs, then x0.33 at 70 % and 90 %."""
        optimizer = optim.Adam((p for p in self.model.flows.parameters() if p.requires_grad), lr=self.learning_rate)
        return epoch_schedule(optimizer, functools.partial(learning_rate_factor, max_epochs=self.trainer.max_epochs))

"""MMR Lightning model: masked reconstruction of frozen teacher features by a ViT student.

Paper: Zhang, Zhao, Zhang, Sun, Chen, *Industrial anomaly detection with domain shift: A real-world
dataset and masked multi-scale reconstruction*, Computers in Industry 151, 2023
(https://arxiv.org/abs/2304.02216).

See Also:
    :class:`viadk8s.models.mmr.torch_model.MmrModel`: the network.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Unpack

from anomalib.data import Batch
from lightning.pytorch.utilities.types import STEP_OUTPUT
from timm.optim import param_groups_weight_decay
from torch import optim

from viadk8s.models.components.module import Module, Processors, epoch_schedule

from .torch_model import MmrModel

PAPER_EPOCHS = 200
WARMUP_SHARE = 50 / PAPER_EPOCHS  # 50 warm-up epochs of 200
DECAY_AT = (120 / PAPER_EPOCHS, 160 / PAPER_EPOCHS)  # the learning rate is divided by 10 from these shares on
DECAY = 0.1


def learning_rate_factor(epoch: int, max_epochs: int) -> float:
    """Multiplier of the base learning rate in ``epoch`` (0-based), counted as the official
    ``mmr_adjust_learning_rate`` counts it (once per epoch): warm-up epoch ``e`` of ``W`` runs at
    ``e / W`` (the first at 0), then 1, divided by 10 from the 120th and again from the 160th
    epoch (1-based; 0-based 119 and 159).

    The official 50 / 120 / 160 of 200 epochs (the protocol's 200) scale with ``max_epochs``, each
    rounded, so a run cut short keeps the schedule's shape; at 200 they are the official numbers.
    """
    warmup = round(WARMUP_SHARE * max_epochs)
    if epoch < warmup:
        return epoch / warmup
    return DECAY ** sum(epoch + 1 >= round(share * max_epochs) for share in DECAY_AT)


class Mmr(Module):
    """MMR: a frozen CNN teacher and a ViT student that reconstructs its maps from masked images;
    no gradient clipping (the paper has none).

    The inherited ``configure_pre_processor(image_size)`` resizes to exactly ``image_size`` with
    ImageNet normalisation and no centre crop (the protocol's preprocessing).

    Args:
        backbone: timm name of the frozen teacher. Defaults to ``"wide_resnet50_2.tv_in1k"``
            (torchvision's ImageNet weights).
        layers: teacher layers, one reconstructed scale each. Defaults to layers 1-3.
        encoder: timm name of the student's starting weights. Defaults to
            ``"vit_base_patch16_224.mae"`` (MAE's ViT-B/16).
        pre_trained: load the teacher's and the student's weights. Defaults to ``True``.
        embed_dim: the student's token width. Defaults to ``768`` (ViT-B).
        depth: the student's transformer blocks. Defaults to ``12``.
        num_heads: the student's attention heads. Defaults to ``12``.
        mask_ratio: share of patch tokens masked in training. Defaults to ``0.4``.
        sigma: Gaussian smoothing of the anomaly map. Defaults to ``4.0``.
        learning_rate: AdamW's base learning rate. Defaults to ``1e-3``.
        weight_decay: AdamW's weight decay (not on biases and norms). Defaults to ``0.05``.
        betas: AdamW's betas. Defaults to ``(0.9, 0.95)``.
        **processors: anomalib's pre-processor (resize and ImageNet normalisation, no crop),
            post-processor, evaluator and visualiser (:class:`~viadk8s.models.components.module.Processors`).
    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2.tv_in1k",
        layers: Sequence[str] = ("layer1", "layer2", "layer3"),
        encoder: str = "vit_base_patch16_224.mae",
        pre_trained: bool = True,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mask_ratio: float = 0.4,
        sigma: float = 4.0,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.05,
        betas: Sequence[float] = (0.9, 0.95),
        **processors: Unpack[Processors],
    ) -> None:
        super().__init__(**processors)
        self.model = MmrModel(
            backbone=backbone,
            layers=layers,
            encoder=encoder,
            pre_trained=pre_trained,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mask_ratio=mask_ratio,
            sigma=sigma,
        )
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.betas = tuple(betas)

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Reconstruction loss of the batch, randomly cropped and flipped, the student seeing it with
        40 % of its tokens masked (:meth:`MmrModel.training_loss`)."""
        del args, kwargs  # These variables are not used.
        return self.logged_loss(self.model.training_loss(batch.image))

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW on the student (no weight decay on biases and norms); warm-up, then x0.1 steps, per epoch."""
        groups = param_groups_weight_decay(self.model.student, weight_decay=self.weight_decay)
        optimizer = optim.AdamW(groups, lr=self.learning_rate, betas=self.betas)
        max_epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else PAPER_EPOCHS
        return epoch_schedule(optimizer, functools.partial(learning_rate_factor, max_epochs=max_epochs))

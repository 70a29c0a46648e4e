"""The training recipe DevNet and DRA share: both official training scripts use the same batches
(48 images, 20 steps an epoch), Adam with weight decay, the learning rate ×0.1 every 10 epochs and the
gradient norm clipped at 1, and train with DevNet's deviation loss; DRA's only differs in when its
schedule steps (``decay_shift``) and in its batches' shares."""

from __future__ import annotations

from fractions import Fraction
from functools import partial
from typing import Any, ClassVar, Unpack

import torch
from torch import optim

from viadk8s.data.supervised import BalancedBatches
from viadk8s.models.components.balanced import BalancedBatchesModule
from viadk8s.models.components.deviation import DeviationLoss
from viadk8s.models.components.module import Processors, epoch_schedule

DECAY_EVERY = 10  # epochs between the learning-rate steps
DECAY = 0.1
GRADIENT_CLIP_NORM = 1.0
OFFICIAL_BATCH = 48  # both official training scripts' --batch_size
STEPS_PER_EPOCH = 20  # both official training scripts' --steps_per_epoch


def step_decay(epoch: int, shift: int) -> float:
    """Learning-rate factor of an epoch (0-based): ×``DECAY`` every ``DECAY_EVERY`` epochs, the
    steps ``shift`` epochs early."""
    return DECAY ** ((epoch + shift) // DECAY_EVERY)


class DeviationTraining(BalancedBatchesModule):
    """DevNet's and DRA's training: balanced supervised batches of their own (20 steps per epoch,
    DevNet's half normal), the deviation loss (``self.loss``), Adam with weight decay on every
    parameter (the backbone is fine-tuned), the learning rate ×0.1 every 10 epochs, gradient norm
    clipped at 1. Subclasses set ``self.model`` (whose eval-mode forward gives an
    :class:`InferenceBatch`); ``balanced_batches`` and ``decay_shift`` where their official code
    differs from DevNet's.

    ``decay_shift``: epochs by which the decays come early. DevNet's official loop steps its
    ``StepLR`` after each epoch (0); DRA's steps it before each epoch, which in PyTorch >= 1.1 (its
    pinned 1.1.0 included) skips the schedule's first value, so each decay comes one epoch early (1).

    Args:
        margin: deviation-loss margin, in prior standard deviations.
        learning_rate: Adam's learning rate.
        weight_decay: Adam's weight decay.
        seed: seeds the deviation loss's reference scores (and the subclass's own draws, from
            ``self.seed``); ``None``: the seed torch was last given (the run seed, set by
            ``seed_everything`` before the model is built).
        **processors: :class:`Processors`.
    """

    balanced_batches: ClassVar[BalancedBatches] = BalancedBatches(
        steps_per_epoch=STEPS_PER_EPOCH, batch_size=OFFICIAL_BATCH, normal_share=Fraction(1, 2)
    )
    decay_shift: ClassVar[int] = 0
    gradient_clip_norm: ClassVar[float] = GRADIENT_CLIP_NORM
    model: torch.nn.Module

    def __init__(
        self, margin: float, learning_rate: float, weight_decay: float, seed: int | None, **processors: Unpack[Processors]
    ) -> None:
        super().__init__(**processors)
        self.seed = torch.initial_seed() if seed is None else seed
        self.loss = DeviationLoss(margin=margin, seed=self.seed)
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay

    def configure_optimizers(self) -> dict[str, Any]:
        """Adam on every parameter (the backbone is fine-tuned), stepped down per epoch."""
        optimizer = optim.Adam(self.model.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        return epoch_schedule(optimizer, partial(step_decay, shift=self.decay_shift))

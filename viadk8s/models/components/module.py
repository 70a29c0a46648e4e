"""The Lightning side every model of ours shares, said once.

anomalib's models each spell out the same pieces: the four parts passed to
:class:`~anomalib.models.components.AnomalibModule`, a validation step that merges the network's
eval-mode output into the batch, the trainer arguments (no sanity validation, clipping or not), the
learning type. Ours take them from :class:`Module` and :class:`Processors`, and state only where they
differ; :func:`epoch_schedule` is the per-epoch learning-rate schedule of those that have one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypedDict

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import nn, optim

from viadk8s.models.components.feature_cache import FeatureCache


class Processors(TypedDict, total=False):
    """:class:`AnomalibModule`'s four parts (instances, or whether to build the defaults), which every
    model passes on unchanged: ``**processors: Unpack[Processors]`` in a model's signature. The worker
    sets all four (resize and ImageNet normalisation without crop, raw scores, its evaluator, no
    visualiser)."""

    pre_processor: nn.Module | bool
    post_processor: nn.Module | bool
    evaluator: Evaluator | bool
    visualizer: Visualizer | bool


class Module(AnomalibModule):
    """An anomalib module whose network (``self.model``) returns an :class:`~anomalib.data.InferenceBatch`
    in eval mode, trained on the training split as anomalib's one-class models are.

    ``gradient_clip_norm``: the gradients' total norm is clipped to it (``0``: no clipping), where the
    official training clips. ``feature_cache``: the cached training features of a model with a frozen
    backbone (:class:`FeatureCache`), released when training ends (testing does not use them).
    """

    gradient_clip_norm: ClassVar[float] = 0.0
    feature_cache: FeatureCache | None = None

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Image scores (and anomaly maps) of a validation batch, as anomalib's test step gives them."""
        del args, kwargs  # These variables are not used.
        return batch.update(**self.model(batch.image)._asdict())

    def logged_loss(self, loss: torch.Tensor) -> STEP_OUTPUT:
        """A training step's output, its loss logged as ``train_loss`` (per step and epoch mean)."""
        self.log("train_loss", loss.item(), on_epoch=True, prog_bar=True, logger=True)
        return {"loss": loss}

    def on_train_end(self) -> None:
        """Release the cached training features: testing does not use them."""
        if self.feature_cache is not None:
            self.feature_cache.clear()

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """Gradient-norm clipping at ``gradient_clip_norm`` where set; no sanity validation."""
        if self.gradient_clip_norm:
            return {"gradient_clip_val": self.gradient_clip_norm, "gradient_clip_algorithm": "norm", "num_sanity_val_steps": 0}
        return {"gradient_clip_val": 0, "num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """``ONE_CLASS``, the type anomalib's Engine trains: the one-class models learn from normal
        images only, and anomalib has no supervised type for DevNet and DRA, which read the labels of
        their own batches."""
        return LearningType.ONE_CLASS


def epoch_schedule(optimizer: optim.Optimizer, factor: Callable[[int], float]) -> dict[str, Any]:
    """Lightning's optimiser configuration: the base learning rate times ``factor(epoch)`` (0-based),
    stepped after each epoch."""
    scheduler = optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

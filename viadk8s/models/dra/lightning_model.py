"""DRA Lightning model: four deviation-loss heads on balanced batches, pseudo anomalies made on the fly.

Paper:
    Title: Catching Both Gray and Black Swans: Open-set Supervised Anomaly Detection
    Authors: Choubo Ding, Guansong Pang, Chunhua Shen
    Venue: CVPR 2022
    URL: https://arxiv.org/abs/2203.14506

A supervised model: it trains on the supervised experiment's labelled anomalies next to the normal
images, in the balanced batches of :mod:`viadk8s.data.supervised` (DevNet's recipe), turns half of
the normal images into pseudo anomalies, and scores images only.

Example:
    >>> from anomalib.engine import Engine
    >>> from viadk8s.models.dra import Dra
    >>> model = Dra(pre_trained=False)
    >>> Engine(max_epochs=30).fit(model, datamodule=datamodule)  # doctest: +SKIP

See Also:
    :class:`viadk8s.models.dra.torch_model.DraModel`: the network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch.utils.data import Dataset

from viadk8s.models.devnet import DeviationLoss, DeviationTraining

from .torch_model import DraModel, dra_loss, pseudo_anomalies


def choose_references(dataset: Dataset, count: int, seed: int) -> list[int]:
    """Indices of ``count`` normal images of an anomalib dataset, drawn from ``seed`` among its
    normal images sorted by path (so the choice does not depend on the dataset's order)."""
    samples = dataset.samples  # type: ignore[attr-defined]
    normal = sorted((i for i, label in enumerate(samples.label_index) if label == 0), key=lambda i: samples.image_path.iloc[i])
    if not normal:
        msg = "DRA needs normal training images for its reference set, found none"
        raise ValueError(msg)
    picked = torch.randperm(len(normal), generator=torch.Generator().manual_seed(seed))[:count]
    return [normal[i] for i in sorted(picked.tolist())]


class Dra(DeviationTraining):
    """DRA: holistic, seen, pseudo and composite heads on a fine-tuned ResNet.

    Args:
        backbone: timm name of the ResNet. Defaults to ``"resnet18.tv_in1k"`` (torchvision's
            ImageNet weights, as the official code).
        pre_trained: load the backbone's ImageNet weights. Defaults to ``True``.
        scales: input scales, relative to the pre-processed image, whose head scores are averaged.
            Defaults to ``(1.0, 0.5)``.
        top_k: share of the feature-map positions averaged by the top-k heads. Defaults to ``0.1``.
        num_references: normal training images whose mean features the composite head compares
            with. Defaults to ``5``.
        pseudo_probability: chance that a normal training image becomes a pseudo anomaly in a batch.
            Defaults to ``0.5``.
        margin: deviation-loss margin, in prior standard deviations. Defaults to ``5.0``.
        learning_rate: Adam's learning rate. Defaults to ``2e-4``.
        weight_decay: Adam's weight decay. Defaults to ``1e-5``.
        seed: seeds the reference images, the pseudo anomalies and the deviation loss's reference
            scores; ``None``: the seed torch was last given (the run seed, set by ``seed_everything``
            before the model is built).
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
        num_references: int = 5,
        pseudo_probability: float = 0.5,
        margin: float = 5.0,
        learning_rate: float = 2e-4,
        weight_decay: float = 1e-5,
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
        self.seed = torch.initial_seed() if seed is None else seed
        self.model = DraModel(backbone=backbone, pre_trained=pre_trained, scales=scales, top_k=top_k)
        self.loss = DeviationLoss(margin=margin, seed=self.seed)
        self.num_references = num_references
        self.pseudo_probability = pseudo_probability
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.pseudo_generator = torch.Generator().manual_seed(self.seed)

    def on_train_start(self) -> None:
        """Fix the composite head's reference images for the whole run: drawn from the seed among
        the normal training images, pre-processed like every batch."""
        dataset = self.trainer.train_dataloader.dataset
        transform = self.pre_processor.transform if self.pre_processor else None
        images = [dataset[i].image for i in choose_references(dataset, self.num_references, self.seed)]
        if transform is not None:
            images = [transform(image) for image in images]
        self.model.set_references(torch.stack(images).to(self.device))

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Pseudo anomalies from the normal images, then the sum of the four heads' deviation losses."""
        del args, kwargs  # These variables are not used.
        images, labels = pseudo_anomalies(batch.image, batch.gt_label.long(), self.pseudo_generator, self.pseudo_probability)
        loss = dra_loss(self.model(images), labels, self.loss)
        self.log("train_loss", loss.item(), on_epoch=True, prog_bar=True, logger=True)
        return {"loss": loss}

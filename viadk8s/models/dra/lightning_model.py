"""DRA Lightning model: four deviation-loss heads on DRA's own balanced batches, pseudo anomalies made
on the fly.

Paper:
    Title: Catching Both Gray and Black Swans: Open-set Supervised Anomaly Detection
    Authors: Choubo Ding, Guansong Pang, Chunhua Shen
    Venue: CVPR 2022
    URL: https://arxiv.org/abs/2203.14506

A supervised model: it trains on the supervised experiment's labelled anomalies next to the normal
images, in the batches of the official code (:mod:`viadk8s.data.supervised`): 5 reference normal
images, then 32 normal images, then 16 labelled anomalies; each normal image (references included)
becomes a pseudo anomaly with probability 0.5. It scores images only.

See Also:
    :class:`viadk8s.models.dra.torch_model.DraModel`: the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import ClassVar, Unpack

import torch
from anomalib.data import Batch
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch.utils.data import Dataset

from viadk8s.data.supervised import BalancedBatches
from viadk8s.models.components.deviation_training import OFFICIAL_BATCH, STEPS_PER_EPOCH, DeviationTraining
from viadk8s.models.components.module import Processors
from viadk8s.models.components.multiscale import MultiScaleBackbone

from .torch_model import NORMAL, DraModel, dra_loss, pseudo_anomalies

REFERENCES = 5  # the official --nRef


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
        pseudo_probability: chance that a normal training image (or reference image) becomes a
            pseudo anomaly. Defaults to ``0.5``.
        margin: deviation-loss margin, in prior standard deviations. Defaults to ``5.0``.
        learning_rate: Adam's learning rate. Defaults to ``2e-4``.
        weight_decay: Adam's weight decay. Defaults to ``1e-5``.
        seed: seeds the evaluation's reference images, the pseudo anomalies and the deviation loss's
            reference scores (the training batches, their references included, come from the
            loader, seeded with the run seed); ``None``: the seed torch was last given (the run
            seed, set by ``seed_everything`` before the model is built).
        **processors: anomalib's pre-processor (resize and ImageNet normalisation, no crop),
            post-processor, evaluator and visualiser (:class:`~viadk8s.models.components.module.Processors`).
    """

    # the official sampler: 2/3 of a batch normal (half of them become pseudo anomalies), 1/3 labelled
    # anomalies; the reference images come from a second loader of normal images, ``REFERENCES`` a batch
    balanced_batches: ClassVar[BalancedBatches] = BalancedBatches(
        steps_per_epoch=STEPS_PER_EPOCH, batch_size=OFFICIAL_BATCH, normal_share=Fraction(2, 3), references=REFERENCES
    )
    decay_shift: ClassVar[int] = 1  # the official loop steps its StepLR before each epoch

    def __init__(
        self,
        backbone: str = "resnet18.tv_in1k",
        pre_trained: bool = True,
        scales: Sequence[float] = (1.0, 0.5),
        top_k: float = 0.1,
        pseudo_probability: float = 0.5,
        margin: float = 5.0,
        learning_rate: float = 2e-4,
        weight_decay: float = 1e-5,
        seed: int | None = None,
        **processors: Unpack[Processors],
    ) -> None:
        super().__init__(margin, learning_rate, weight_decay, seed, **processors)
        self.model = DraModel(MultiScaleBackbone(backbone, pre_trained, scales), top_k)
        self.pseudo_probability = pseudo_probability
        self.pseudo_generator = torch.Generator().manual_seed(self.seed)

    def on_train_start(self) -> None:
        """The evaluation's reference set, fixed for the run: drawn as a training batch's are (normal
        training images, pre-processed like every batch, each a pseudo anomaly with
        ``pseudo_probability``), from the seed, among the normal training images sorted by path."""
        super().on_train_start()
        dataset = self.trainer.train_dataloader.dataset
        transform = self.pre_processor.transform if self.pre_processor else None
        images = [dataset[i].image for i in choose_references(dataset, REFERENCES, self.seed)]
        if transform is not None:
            images = [transform(image) for image in images]
        references = torch.stack(images)
        normal = torch.full((len(references),), NORMAL)
        references, _ = pseudo_anomalies(references, normal, self.pseudo_generator, self.pseudo_probability)
        self.model.set_references(references.to(self.device))

    def queries_and_references(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A training batch's query images, their labels (0 normal, 1 seen, 2 pseudo anomaly) and its
        reference images: the batch's first ``REFERENCES`` images are its references (normal), the
        rest the queries; every normal image of both becomes a pseudo anomaly with
        ``pseudo_probability``."""
        n = REFERENCES
        if len(batch.image) <= n:
            msg = f"a DRA batch starts with {n} reference images, then its queries: got {len(batch.image)} images"
            raise RuntimeError(msg)
        labels = batch.gt_label.long().clone()
        labels[:n] = NORMAL
        images, labels = pseudo_anomalies(batch.image, labels, self.pseudo_generator, self.pseudo_probability)
        return images[n:], labels[n:], images[:n]

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """The sum of the four heads' deviation losses on the batch's queries, against its references."""
        del args, kwargs  # These variables are not used.
        queries, labels, references = self.queries_and_references(batch)
        return self.logged_loss(dra_loss(self.model(queries, references), labels, self.loss))

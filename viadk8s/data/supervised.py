"""Balanced training batches for supervised models (DRA, DevNet): a fixed share of normal images, the
rest labelled anomalies, and optionally a few extra normal images that a model uses as references.

A supervised run holds many normal train images and a few labelled anomalies (the supervised
experiment's ``k``, or a dataset's own labelled bad images: :func:`viadk8s.data.splits.supervised`).
Shuffled batches would hold almost no anomaly; the deviation networks' recipe instead fills every
batch with a fixed number of normal images and of anomalies (DevNet: half and half; DRA: two thirds
normal), oversampling the few anomalies, and counts an epoch in a fixed number of steps rather than
in passes over the data. DRA also compares every batch with reference normal images that its
official code draws from a second loader, batch after batch: here they come first in each batch,
from their own seeded stream.

A model asks for it by declaring ``balanced_batches = BalancedBatches(...)`` on a
:class:`viadk8s.models.components.balanced.BalancedBatchesModule`; the worker reads it through
``requested_batches`` and its data module serves :func:`balanced_loader` in supervised runs only.
Plain torch/numpy.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler

from viadk8s.errors import SpecError

log = logging.getLogger(__name__)

REFERENCE_STREAM = 1  # second word of the reference draws' seed: a stream apart from the batches' own


@dataclass(frozen=True)
class BalancedBatches:
    """What a model asks of its supervised training data.

    Args:
        steps_per_epoch: batches per epoch (the official DRA/DevNet recipe: 20).
        batch_size: normal images and anomalies per batch (references not counted); ``None``: the
            run's batch size.
        normal_share: share of a batch's images that are normal, rounded down; the rest are labelled
            anomalies (DevNet's official sampler: 1/2, DRA's: 2/3).
        references: normal images drawn, from a stream of their own, ahead of each batch's images.
    """

    steps_per_epoch: int = 20
    batch_size: int | None = None
    normal_share: Fraction | float = Fraction(1, 2)
    references: int = 0


class _Cycle:
    """Endless draws from ``indices``: one seeded permutation after another, so that every index
    is drawn once before any is drawn again (oversampling spreads evenly over the few anomalies)."""

    def __init__(self, indices: np.ndarray, rng: np.random.Generator) -> None:
        self.indices, self.rng = indices, rng
        self.order: np.ndarray = indices[:0]
        self.position = 0

    def take(self, n: int) -> list[int]:
        drawn: list[int] = []
        while len(drawn) < n:
            if self.position == len(self.order):
                self.order, self.position = self.rng.permutation(self.indices), 0
            step = min(n - len(drawn), len(self.order) - self.position)
            drawn += self.order[self.position : self.position + step].tolist()
            self.position += step
        return drawn


class BalancedBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices: ``references`` reference normal images, then
    ``floor(batch_size * normal_share)`` normal images, then the rest of ``batch_size`` in labelled
    anomalies; ``steps_per_epoch`` batches per epoch.

    Draws continue from one epoch to the next, from ``numpy.random.default_rng(seed)`` (normal images
    and anomalies) and ``default_rng([seed, 1])`` (references, so that asking for them leaves the
    other draws as they were): the same seed and labels give the same batches, epoch after epoch.
    Label 0 is normal, any other label an anomaly.

    Raises:
        SpecError: no labelled anomaly (or no normal image) in ``labels``, or a batch size that
            leaves no room for a normal image or an anomaly.
    """

    def __init__(
        self,
        labels: Sequence[int],
        batch_size: int,
        steps_per_epoch: int,
        seed: int,
        normal_share: Fraction | float = Fraction(1, 2),
        references: int = 0,
    ) -> None:
        labels = np.asarray(labels)
        normal, anomalous = np.flatnonzero(labels == 0), np.flatnonzero(labels != 0)
        if len(anomalous) == 0:
            raise SpecError(
                f"supervised batches need labelled anomalies in train, found 0 among {len(labels)} train images: "
                "run the model in the supervised experiment (supervised_k > 0)"
            )
        if len(normal) == 0:
            raise SpecError(f"supervised batches need normal train images, found 0 among {len(labels)}")
        if not 0 < normal_share < 1 or steps_per_epoch < 1 or references < 0:
            raise ValueError(
                f"need 0 < normal_share < 1, steps_per_epoch >= 1, references >= 0: {normal_share}, "
                f"{steps_per_epoch}, {references}"
            )
        self.n_normal = math.floor(batch_size * Fraction(normal_share).limit_denominator(1000))  # 2/3 given as a float too
        self.n_anomalous = batch_size - self.n_normal
        if self.n_normal < 1 or self.n_anomalous < 1:
            raise SpecError(
                f"supervised batches hold normal images and anomalies: batch size {batch_size} gives {self.n_normal} "
                f"normal and {self.n_anomalous} anomalous images; allowed: a size with at least one of each (>= 2)"
            )
        self.n_references = references
        self.steps_per_epoch = steps_per_epoch
        rng = np.random.default_rng(seed)
        self.normal, self.anomalous = _Cycle(normal, rng), _Cycle(anomalous, rng)
        self.references = _Cycle(normal, np.random.default_rng([seed, REFERENCE_STREAM]))
        log.info(
            "balanced batches of %d normal + %d anomalous images (+ %d references) from %d normal images and "
            "%d labelled anomalies, %d steps per epoch: each anomaly about %.1f times an epoch",
            self.n_normal,
            self.n_anomalous,
            references,
            len(normal),
            len(anomalous),
            steps_per_epoch,
            self.n_anomalous * steps_per_epoch / len(anomalous),
        )

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps_per_epoch):
            references = self.references.take(self.n_references)
            yield references + self.normal.take(self.n_normal) + self.anomalous.take(self.n_anomalous)


def balanced_loader(
    dataset: Dataset, labels: Sequence[int], batches: BalancedBatches, batch_size: int, seed: int, **loader_args: Any
) -> DataLoader:
    """A loader of ``dataset`` in balanced batches; ``batch_size`` is the run's, used unless
    ``batches`` sets its own. ``loader_args``: the rest of :class:`~torch.utils.data.DataLoader`'s
    arguments (workers, collate function)."""
    size = batches.batch_size or batch_size
    sampler = BalancedBatchSampler(labels, size, batches.steps_per_epoch, seed, batches.normal_share, batches.references)
    return DataLoader(dataset, batch_sampler=sampler, **loader_args)

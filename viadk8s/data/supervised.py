"""Balanced training batches for supervised models (DRA, DevNet): half normal, half labelled anomalies.

A supervised run holds many normal train images and a few labelled anomalies (the supervised
experiment's ``k``, or a dataset's own labelled bad images: :func:`viadk8s.data.splits.supervised`).
Shuffled batches would hold almost no anomaly; the deviation networks' recipe instead fills every
batch half with normal images and half with anomalies, oversampling the few anomalies, and counts
an epoch in a fixed number of steps rather than in passes over the data.

A model asks for it with a class attribute ``balanced_batches = BalancedBatches(...)``; the worker's
data module reads it and serves :func:`balanced_loader` in supervised runs only. Plain torch/numpy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler

from viadk8s.errors import SpecError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BalancedBatches:
    """What a model asks of its supervised training data.

    Args:
        steps_per_epoch: batches per epoch (the official DRA/DevNet recipe: 20).
        batch_size: images per batch; ``None``: the run's batch size (the protocol's 16).
    """

    steps_per_epoch: int = 20
    batch_size: int | None = None


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
    """Batches of dataset indices: ``batch_size - batch_size // 2`` normal images then
    ``batch_size // 2`` anomalies (exactly half for an even size), ``steps_per_epoch`` per epoch.

    Draws continue from one epoch to the next, from ``numpy.random.default_rng(seed)``: the same
    seed and labels give the same batches, epoch after epoch. Label 0 is normal, any other
    label an anomaly.

    Raises:
        SpecError: no labelled anomaly (or no normal image) in ``labels``, or a batch size below 2.
    """

    def __init__(self, labels: Sequence[int], batch_size: int, steps_per_epoch: int, seed: int) -> None:
        labels = np.asarray(labels)
        normal, anomalous = np.flatnonzero(labels == 0), np.flatnonzero(labels != 0)
        if len(anomalous) == 0:
            raise SpecError(
                f"supervised batches need labelled anomalies in train, found 0 among {len(labels)} train images: "
                "run the model in the supervised experiment (supervised_k > 0)"
            )
        if len(normal) == 0:
            raise SpecError(f"supervised batches need normal train images, found 0 among {len(labels)}")
        if batch_size < 2:
            raise SpecError(f"supervised batches are half normal, half anomalies: batch size {batch_size}; allowed: >= 2")
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.n_anomalous = batch_size // 2
        self.n_normal = batch_size - self.n_anomalous
        self.steps_per_epoch = steps_per_epoch
        rng = np.random.default_rng(seed)
        self.normal, self.anomalous = _Cycle(normal, rng), _Cycle(anomalous, rng)
        repeats = self.n_anomalous * steps_per_epoch / len(anomalous)
        log.info(
            "balanced batches of %d normal + %d anomalous images from %d normal images and %d labelled anomalies, "
            "%d steps per epoch: each anomaly about %.1f times an epoch",
            self.n_normal,
            self.n_anomalous,
            len(normal),
            len(anomalous),
            steps_per_epoch,
            repeats,
        )

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps_per_epoch):
            yield self.normal.take(self.n_normal) + self.anomalous.take(self.n_anomalous)


def balanced_loader(
    dataset: Dataset, labels: Sequence[int], batches: BalancedBatches, batch_size: int, seed: int, **loader_args: Any
) -> DataLoader:
    """A loader of ``dataset`` in balanced batches; ``batch_size`` is the run's, used unless
    ``batches`` sets its own. ``loader_args``: the rest of :class:`~torch.utils.data.DataLoader`'s
    arguments (workers, collate function)."""
    sampler = BalancedBatchSampler(labels, batches.batch_size or batch_size, batches.steps_per_epoch, seed)
    return DataLoader(dataset, batch_sampler=sampler, **loader_args)

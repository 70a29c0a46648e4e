"""How a model asks for balanced supervised batches: the declared interface the worker reads.

A supervised run serves shuffled batches of the run's batch size, with almost no labelled anomaly in
them; DevNet's and DRA's official training instead fills every batch with fixed shares of normal
images and labelled anomalies (:mod:`viadk8s.data.supervised`). A model that wants such batches
derives from :class:`BalancedBatchesModule` and sets :attr:`~BalancedBatchesModule.balanced_batches`;
the worker asks :func:`requested_batches`, so no other model (anomalib's included) is affected.
"""

from __future__ import annotations

from typing import Any, ClassVar

from viadk8s.data.supervised import BalancedBatches, BalancedBatchSampler
from viadk8s.models.components.module import Module


class BalancedBatchesModule(Module):
    """A model trained, in supervised runs, on the balanced batches it declares.

    ``balanced_batches``: what the worker's data module serves it in a supervised run (batch size,
    steps per epoch, normal share, references), whatever the run's batch size. ``model_report``
    records the batches actually served, for ``result.json``, whose spec's batch size they do not
    follow.
    """

    balanced_batches: ClassVar[BalancedBatches]
    model_report: dict[str, Any]

    def on_train_start(self) -> None:
        """Record the batches the training loader serves."""
        sampler = self.trainer.train_dataloader.batch_sampler
        if isinstance(sampler, BalancedBatchSampler):
            batch = {"references": sampler.n_references, "normal": sampler.n_normal, "labelled_anomalies": sampler.n_anomalous}
            self.model_report = {"train_batch": batch, "steps_per_epoch": sampler.steps_per_epoch}


def requested_batches(model: type) -> BalancedBatches | None:
    """The balanced batches a model class asks for; ``None``: the run's plain shuffled batches."""
    if isinstance(model, type) and issubclass(model, BalancedBatchesModule):
        return model.balanced_batches
    return None

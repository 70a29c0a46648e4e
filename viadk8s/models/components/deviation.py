"""DevNet's deviation loss, shared by DevNet and DRA: DRA's official code trains each of its four heads
with DevNet's loss, so both models use this one definition.

Paper: Pang, Ding, Shen, van den Hengel, *Explainable Deep Few-shot Anomaly Detection with Deviation
Networks*, 2021 (https://arxiv.org/abs/2108.00462). Written from the paper and a reading of the
official code (nothing copied).
"""

from __future__ import annotations

import torch
from torch import nn

PRIOR_SAMPLES = 5000
MARGIN = 5.0


class DeviationLoss(nn.Module):
    """DevNet's deviation loss: ``(1 - y)·|dev| + y·max(0, margin - dev)``, batch mean.

    ``dev = (score - mean r) / std r`` for reference scores ``r ~ N(0, 1)``. The references are
    drawn once, from ``seed`` (the official code redraws them at every call, which makes the loss
    itself random); only their mean and standard deviation matter, so only those are kept.

    Args:
        margin: how many prior standard deviations an anomaly's score must reach. Defaults to 5.
        samples: number of reference scores. Defaults to 5000.
        seed: seeds the reference scores. Defaults to 0.
    """

    def __init__(self, margin: float = MARGIN, samples: int = PRIOR_SAMPLES, seed: int = 0) -> None:
        super().__init__()
        self.margin = margin
        reference = torch.randn(samples, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("prior_mean", reference.mean())
        self.register_buffer("prior_std", reference.std())

    def deviation(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores in prior standard deviations from the prior mean (a z-score)."""
        return (scores - self.prior_mean) / self.prior_std

    def forward(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean loss of ``scores`` (B,) for binary ``labels`` (B,): 1 anomaly, 0 normal."""
        deviation = self.deviation(scores)
        labels = labels.to(deviation.dtype)
        return ((1 - labels) * deviation.abs() + labels * (self.margin - deviation).clamp(min=0)).mean()

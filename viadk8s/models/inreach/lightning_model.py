"""InReaCh: fully unsupervised anomaly detection with inter-realization channels.

Training-free, like PatchCore: one pass collects the frozen backbone's patch features of every
training image (labelled or not, possibly contaminated), then the nominal bank is built from the
channels that associate patches across images. Testing scores each patch by its squared distance to
the nearest nominal patch.

Paper: `Inter-Realization Channels: Unsupervised Anomaly Detection Beyond One-Class Classification
<https://openaccess.thecvf.com/content/ICCV2023/html/McIntosh_Inter-Realization_Channels_Unsupervised_Anomaly_Detection_Beyond_One-Class_Classification_ICCV_2023_paper.html>`_
(McIntosh, Albu; ICCV 2023).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Unpack

import torch
from anomalib.data import Batch
from anomalib.models.components import MemoryBankMixin
from anomalib.post_processing import PostProcessor

from viadk8s.models.components.module import Module, Processors
from viadk8s.models.inreach.torch_model import OFFICIAL_TAPS, Association, InreachModel


class Inreach(MemoryBankMixin, Module):
    """InReaCh Lightning module; one-class in anomalib's terms: it trains on the training split, whose
    labels it never reads.

    The pre-processor is anomalib's default: resize to the given size and ImageNet normalisation,
    no centre crop (the protocol's). See :class:`InreachModel` for the arguments shared with it.

    Args:
        seed: seeds the choice of seed images; ``None``: the seed torch was last seeded with (the
            run seed Lightning's ``seed_everything`` set before the model was built).
        **processors: anomalib's pre-processor, post-processor, evaluator and visualiser, instances
            or flags (:class:`~viadk8s.models.components.module.Processors`).
    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2.tv_in1k",
        taps: Sequence[str] = OFFICIAL_TAPS,
        pre_trained: bool = True,
        embedding_dim: int = 1024,
        num_seeds: int = 10,
        association: Association = "official",
        min_channel_members: int = 3,
        max_channel_spread: float = 5.0,
        spread_fallback: bool | None = None,
        position_channels: bool | None = None,
        position_weight: float = 5.0,
        alignment_threshold: float = 1000.0,
        sigma: float = 13.0,
        max_distance_mib: int = 512,
        seed: int | None = None,
        **processors: Unpack[Processors],
    ) -> None:
        super().__init__(**processors)
        self.model = InreachModel(
            backbone=backbone,
            taps=taps,
            pre_trained=pre_trained,
            embedding_dim=embedding_dim,
            num_seeds=num_seeds,
            association=association,
            min_channel_members=min_channel_members,
            max_channel_spread=max_channel_spread,
            spread_fallback=spread_fallback,
            position_channels=position_channels,
            position_weight=position_weight,
            alignment_threshold=alignment_threshold,
            sigma=sigma,
            max_distance_mib=max_distance_mib,
            seed=torch.initial_seed() if seed is None else seed,
        )

    @staticmethod
    def configure_optimizers() -> None:
        """InReaCh learns nothing by gradient."""
        return

    def training_step(self, batch: Batch, *args, **kwargs) -> torch.Tensor:
        """Keep the batch's patch features, by image path (the order of arrival does not matter)."""
        del args, kwargs
        self.model.collect(batch.image, batch.image_path)
        return torch.tensor(0.0, requires_grad=True, device=self.device)  # Lightning wants a loss

    def fit(self) -> None:
        """Build the nominal bank from the collected features (once, at the end of the epoch)."""
        self.model.fit()

    @property
    def model_report(self) -> dict[str, Any]:
        """What the fit found, for ``result.json``: the bank's share of the training patches,
        whether the spread-rule fallback was used, the association and the position channels."""
        return self.model.report

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """One pass over the training images on one device, no gradient clipping, no sanity validation."""
        return {**super().trainer_arguments, "max_epochs": 1, "devices": 1}

    @staticmethod
    def configure_post_processor() -> PostProcessor:
        """Anomalib's default post-processor (the benchmark passes its own, without normalisation)."""
        return PostProcessor()

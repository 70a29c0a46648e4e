"""The one place that knows anomalib's quirks: building a model per protocol, offline.

Models are wired from the catalog's ``init_args`` plus what their constructor asks for (read from
its signature, not from per-model branches). The traps anomalib 2.7 sets for offline runs are
fixed here and nowhere else:

* CS-Flow builds ``efficientnet_b5(weights=IMAGENET1K_V1)`` unconditionally;
* SuperSimpleNet builds its ``TimmFeatureExtractor`` without ``pre_trained`` (so always downloads),
  and its Perlin noise crashes on feature maps smaller than its random scale (inputs < 128 px);
* GLASS's ``configure_optimizers`` calls ``.parameters()`` on the backbone *name* when not pretrained;
* DRAEM and GLASS download DTD unless given a folder of anomaly-source textures.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from anomalib import models as anomalib_models
from anomalib.metrics import AUPRO, Evaluator
from anomalib.metrics.base import AnomalibMetric
from anomalib.models.components import AnomalibModule
from anomalib.models.components.feature_extractors import TimmFeatureExtractor
from anomalib.post_processing import PostProcessor
from torch import optim
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from torchvision import models as tv_models

from viadk8s import metrics
from viadk8s.catalog import ModelEntry
from viadk8s.spec import RunSpec


class _Exact(Metric):
    """Keeps a copy of every prediction and computes one of :mod:`viadk8s.metrics` on the whole set."""

    full_state_update = False

    def __init__(self, compute: Callable[[torch.Tensor, torch.Tensor], float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._compute = compute
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.preds.append(preds.detach().clone())  # nothing that runs later can change what was seen
        self.target.append(target.detach().clone())

    def compute(self) -> torch.Tensor:
        return torch.tensor(self._compute(dim_zero_cat(self.preds), dim_zero_cat(self.target)))


class ExactMetric(AnomalibMetric, _Exact):  # type: ignore[misc]
    """A :mod:`viadk8s.metrics` function as an anomalib metric (fields picked from the batch)."""


class PixelAurocMetric(ExactMetric):
    """Pixel AUROC on the map the test scores it on: the model's pixel-AUROC map where its batches
    carry one (:data:`viadk8s.metrics.PIXEL_AUROC_MAP`), else the anomaly map."""

    def update(self, batch: Any, *args: Any, **kwargs: Any) -> None:
        auroc_map = getattr(batch, metrics.PIXEL_AUROC_MAP, None)
        if auroc_map is None:
            super().update(batch, *args, **kwargs)
        else:
            _Exact.update(self, auroc_map, batch.gt_mask)


def _validation_metric(name: str) -> AnomalibMetric:
    """The metric early stopping monitors, on raw scores of the whole validation set."""
    level, kind = name.split("_", 1)
    fields = ["pred_score", "gt_label"] if level == "image" else ["anomaly_map", "gt_mask"]
    if kind == "AUPRO":  # anomalib's AUPRO is exact already (one sort, no sigmoid)
        return AUPRO(fields=fields, prefix=f"{level}_")
    cls = PixelAurocMetric if name == "pixel_AUROC" else ExactMetric
    metric = cls(compute={"AUROC": metrics.auroc, "F1Max": metrics.f1_max}[kind], fields=fields)
    metric.name = name
    return metric


def evaluator(monitor: str | None = None) -> Evaluator:
    """The validation metric early stopping monitors, if any. Test metrics are not anomalib's:
    the worker computes them from the predictions it keeps (:mod:`viadk8s.metrics`)."""
    return Evaluator(val_metrics=[_validation_metric(monitor)] if monitor else [], test_metrics=[])


@contextlib.contextmanager
def _patched(module: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def _random_efficientnet_b5(*args: Any, **kwargs: Any) -> Any:
    """CS-Flow's backbone without the ImageNet weights it asks for."""
    return tv_models.efficientnet_b5(weights=None)


def _capped_perlin(original: Any) -> Any:
    """SuperSimpleNet's Perlin noise with its random scale capped at the feature-map size."""

    @functools.wraps(original)
    def generate(height: int, width: int, scale: tuple[int, int] | None = None, device: Any = None) -> Any:
        if scale is None:
            top = lambda n: min(6, int(math.log2(n)) + 1)  # noqa: E731 - exclusive upper exponent
            scale = (2 ** int(torch.randint(0, top(height), (1,))), 2 ** int(torch.randint(0, top(width), (1,))))
        return original(height, width, scale=scale, device=device)

    return generate


def model_class(entry: ModelEntry) -> type[AnomalibModule]:
    """The catalog's class: ``Name`` in ``anomalib.models``, or ``package.module:Name`` of our own."""
    path = str(entry.model_class)
    module, _, name = path.rpartition(":")
    return getattr(importlib.import_module(module) if module else anomalib_models, name)


@contextlib.contextmanager
def quirks_fixed(entry: ModelEntry, pretrained: bool) -> Iterator[None]:
    """Fix anomalib's quirks for one model while it is built, trained and tested."""
    cls = model_class(entry)
    with contextlib.ExitStack() as stack:
        if cls is anomalib_models.Csflow and not pretrained:
            from anomalib.models.image.csflow import torch_model as csflow

            stack.enter_context(_patched(csflow, "efficientnet_b5", _random_efficientnet_b5))
        if cls is anomalib_models.Supersimplenet:
            from anomalib.models.image.supersimplenet import anomaly_generator
            from anomalib.models.image.supersimplenet import torch_model as ssn

            stack.enter_context(
                _patched(anomaly_generator, "generate_perlin_noise", _capped_perlin(anomaly_generator.generate_perlin_noise))
            )
            if not pretrained:
                stack.enter_context(
                    _patched(ssn, "TimmFeatureExtractor", functools.partial(TimmFeatureExtractor, pre_trained=False))
                )
        yield


def _glass_optimizers(self: Any) -> list[optim.Optimizer]:
    """GLASS's optimizers, with the backbone's parameters taken from the module, not its name."""
    optimizers = [optim.AdamW(self.model.discriminator.parameters(), lr=self.learning_rate * 2)]
    if self.pre_projection > 0:
        optimizers.append(optim.Adam(self.model.projection.parameters(), lr=self.learning_rate, weight_decay=1e-5))
    if not self.pre_trained:
        extractor = self.model.forward_modules["feature_aggregator"].feature_extractor
        optimizers.append(optim.AdamW(extractor.parameters(), lr=self.learning_rate))
    return optimizers


def build_model(spec: RunSpec, entry: ModelEntry, anomaly_source: Path, monitor: str | None) -> AnomalibModule:
    """The catalog's model with the protocol's input size, raw scores and the early-stop metric.

    Call it, and train and test the model, inside :func:`quirks_fixed`."""
    cls = model_class(entry)
    accepted = inspect.signature(cls.__init__).parameters
    pretrained = spec.weights == "imagenet"
    size = (spec.image_size, spec.image_size)
    wanted: dict[str, Any] = {
        "pre_trained": pretrained,
        "input_shape": size,
        "dtd_dir": str(anomaly_source),
        "anomaly_source_path": str(anomaly_source),
    }
    supervised = entry.supervised_args if spec.variant.supervised_k else {}
    kwargs = {**{k: v for k, v in wanted.items() if k in accepted}, **entry.init_args, **(supervised or {})}
    kwargs.update(
        # the model's own transforms (anomalib 2.7 adds no centre crop) at the protocol's size
        pre_processor=cls.configure_pre_processor(image_size=size),
        post_processor=PostProcessor(enable_normalization=False),  # raw scores, unclipped
        evaluator=evaluator(monitor),
        visualizer=False,
    )
    model = cls(**kwargs)
    if cls is anomalib_models.Glass:
        model.configure_optimizers = _glass_optimizers.__get__(model)
    return model

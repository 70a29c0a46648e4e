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
import inspect
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from anomalib import models as anomalib_models
from anomalib.metrics import AUPRO, AUROC, Evaluator, F1Max, PBn, PGn
from anomalib.models.components import AnomalibModule
from anomalib.models.components.feature_extractors import TimmFeatureExtractor
from anomalib.post_processing import PostProcessor
from torch import optim
from torchvision import models as tv_models

from viadk8s.catalog import ModelEntry
from viadk8s.spec import RunSpec

PG_PB_RATE = 0.02  # the paper's PG2 / PB2


def _validation_metric(name: str) -> AUROC | F1Max | AUPRO:
    level, kind = name.split("_", 1)
    fields = ["pred_score", "gt_label"] if level == "image" else ["anomaly_map", "gt_mask"]
    return {"AUROC": AUROC, "F1Max": F1Max, "AUPRO": AUPRO}[kind](fields=fields, prefix=f"{level}_")


def evaluator(pixel: bool, monitor: str | None = None) -> Evaluator:
    """The protocol's test metrics (pixel ones only when the test set has masks), and the
    validation metric that early stopping monitors, if any."""
    image = ["pred_score", "gt_label"]
    presorted = [PGn(fields=image, fnr=PG_PB_RATE), PBn(fields=image, fpr=PG_PB_RATE)]
    for metric in presorted:  # anomalib names them "PG2"/"PB2" whatever the prefix
        metric.name = f"image_{metric.name}"
    metrics = [AUROC(fields=image, prefix="image_"), F1Max(fields=image, prefix="image_"), *presorted]
    if pixel:
        pixel_fields = ["anomaly_map", "gt_mask"]
        metrics += [
            AUROC(fields=pixel_fields, prefix="pixel_"),
            AUPRO(fields=pixel_fields, prefix="pixel_"),
            F1Max(fields=pixel_fields, prefix="pixel_"),
        ]
    return Evaluator(val_metrics=[_validation_metric(monitor)] if monitor else [], test_metrics=metrics)


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


@contextlib.contextmanager
def quirks_fixed(entry: ModelEntry, pretrained: bool) -> Iterator[None]:
    """Fix anomalib's quirks for one model while it is built, trained and tested."""
    cls = getattr(anomalib_models, str(entry.anomalib_class))
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


def build_model(spec: RunSpec, entry: ModelEntry, anomaly_source: Path, pixel: bool, monitor: str | None) -> AnomalibModule:
    """The catalog's model with the protocol's input size, raw scores and the protocol's metrics.

    Call it, and train and test the model, inside :func:`quirks_fixed`."""
    cls = getattr(anomalib_models, str(entry.anomalib_class))
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
        evaluator=evaluator(pixel, monitor),
        visualizer=False,
    )
    model = cls(**kwargs)
    if cls is anomalib_models.Glass:
        model.configure_optimizers = _glass_optimizers.__get__(model)
    return model

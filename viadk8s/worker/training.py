"""Fit and test one anomalib model on the samples a run was given, timing both.

``last_epoch`` (the protocol) trains for the fixed epochs with no validation at all; the early-stop
strategies validate every ``check_every`` epochs on the run's validation samples, stop after
``patience`` checks without improvement, and test the best checkpoint, recording its epoch.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from anomalib.callbacks.checkpoint import ModelCheckpoint
from anomalib.engine import Engine
from anomalib.models.components import AnomalibModule
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import EarlyStopping

from viadk8s import metrics
from viadk8s.data.samples import SamplesDataModule
from viadk8s.pixel_summary import PixelSummary, summarise
from viadk8s.spec import RunSpec


@dataclass
class Mistake:
    """A test image a model got most wrong, kept with its anomaly map (if the model makes one)."""

    image_path: str
    label: int
    score: float
    anomaly_map: torch.Tensor | None


class PredictionCollector(Callback):
    """Keeps a copy of every test image's raw score and label, and, for pixel metrics, its anomaly
    map and mask (and the model's pixel-AUROC map where its batches carry one,
    :data:`viadk8s.metrics.PIXEL_AUROC_MAP`): the test metrics are computed from exactly these (and
    the scores go to scores.csv)."""

    def __init__(self, pixel: bool, keep: int = 0) -> None:
        self.pixel, self.keep = pixel, keep
        self.rows: list[dict[str, Any]] = []
        self.maps: list[torch.Tensor] = []
        self.auroc_maps: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []
        self.mistakes: dict[int, list[Mistake]] = {0: [], 1: []}  # by label: the worst ``keep`` so far

    def on_test_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        scores = outputs.pred_score.detach().float().cpu().reshape(-1).tolist()
        labels = outputs.gt_label.detach().cpu().reshape(-1).int().tolist()
        self.rows += [
            {"image_path": p, "label": y, "score": s} for p, y, s in zip(outputs.image_path, labels, scores, strict=True)
        ]
        if self.pixel:
            size = outputs.gt_mask.shape[-2:]
            self.maps.append(outputs.anomaly_map.detach().float().reshape(-1, *size).to("cpu", copy=True))
            auroc_map = getattr(outputs, metrics.PIXEL_AUROC_MAP, None)
            if auroc_map is not None:
                self.auroc_maps.append(auroc_map.detach().float().reshape(-1, *size).to("cpu", copy=True))
            self.masks.append(outputs.gt_mask.detach().reshape(-1, *size).to("cpu", torch.bool, copy=True))
        if self.keep:
            self._keep_mistakes(outputs.image_path, labels, scores, outputs.anomaly_map)

    def _keep_mistakes(self, paths: list[str], labels: list[int], scores: list[float], maps: torch.Tensor | None) -> None:
        """The highest-scoring good and lowest-scoring bad images, with their maps (only ``keep`` each)."""
        for i, (path, label, score) in enumerate(zip(paths, labels, scores, strict=True)):
            anomaly_map = None if maps is None else maps[i].detach().float().reshape(maps.shape[-2:]).to("cpu", copy=True)
            self.mistakes[label].append(Mistake(path, label, score, anomaly_map))
        for label, worst in self.mistakes.items():  # good: highest first; bad: lowest first; ties by path
            worst.sort(key=lambda m: (-m.score if label == 0 else m.score, m.image_path))
            del worst[self.keep :]

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["image_path", "label", "score"])

    def metrics(self) -> dict[str, float]:
        """The protocol's test metrics of everything collected (pixel ones only when collected)."""
        frame = self.frame()
        found = metrics.image_metrics(torch.tensor(frame["score"].to_numpy()), torch.tensor(frame["label"].to_numpy()))
        if self.pixel:
            auroc_maps = torch.cat(self.auroc_maps) if self.auroc_maps else None
            found |= metrics.pixel_metrics(torch.cat(self.maps), torch.cat(self.masks), auroc_maps)
        return found

    def summary(self) -> PixelSummary | None:
        """The collected maps counted per image on one grid (:mod:`viadk8s.pixel_summary`), read one
        image at a time from the batches kept; images named as in :meth:`frame`. ``None``: no masks."""
        if not self.pixel:
            return None
        maps, auroc_maps = ([m for batch in kept for m in batch] for kept in (self.maps, self.auroc_maps))
        return summarise(maps, torch.cat(self.masks), self.frame()["image_path"].tolist(), auroc_maps or None)


class EpochTimer(Callback):
    """Seconds of each training epoch: the first one may differ (feature caches fill, warm-up)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.seconds.append(round(time.perf_counter() - self._start, 3))


class ValidationHistory(Callback):
    """The monitored metric after each validation, to show which epoch early stopping chose."""

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor
        self.points: list[dict[str, float]] = []

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and not trainer.sanity_checking:
            self.points.append({"epoch": trainer.current_epoch + 1, self.monitor: round(float(value), 6)})


@dataclass
class Outcome:
    metrics: dict[str, float]
    scores: pd.DataFrame
    mistakes: list[Mistake]
    fit_s: float
    test_s: float
    epochs_run: int
    tested_epoch: int  # the epoch whose weights were tested (early stop: the best on validation)
    validation: list[dict[str, float]]
    epoch_s: list[float]
    pixel_summary: PixelSummary | None = None  # what the pixel metrics are recomputed from (pixel runs)


def accelerator() -> str:
    chosen = os.environ.get("VIADK8S_ACCELERATOR", "auto")
    if chosen == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return chosen


def train_and_test(
    spec: RunSpec, model: AnomalibModule, data: SamplesDataModule, work: Path, pixel: bool, keep: int = 0
) -> Outcome:
    """``keep``: how many of the worst-scored good and bad test images to keep, with their maps."""
    collector = PredictionCollector(pixel, keep)
    variant = spec.variant
    early = variant.validation != "last_epoch"
    history = ValidationHistory(variant.monitor)
    timer = EpochTimer()
    callbacks: list[Callback] = [collector, timer]
    if early:
        best = ModelCheckpoint(dirpath=work / "checkpoints", filename="best", monitor=variant.monitor, mode="max", save_top_k=1)
        callbacks += [history, best, EarlyStopping(monitor=variant.monitor, mode="max", patience=variant.patience)]
        settings: dict[str, Any] = {
            "check_val_every_n_epoch": variant.check_every,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        }
    else:
        settings = {"barebones": True, "limit_val_batches": 0}
    engine = Engine(
        accelerator=accelerator(),
        devices=1,
        max_epochs=spec.epochs,
        default_root_dir=work,
        logger=False,
        callbacks=callbacks,
        **settings,
    )
    start = time.perf_counter()
    engine.fit(model, datamodule=data)
    fit_s = time.perf_counter() - start
    epochs_run = engine.trainer.current_epoch
    tested_epoch = epochs_run
    checkpoint = None
    if early and best.best_model_path:
        checkpoint = best.best_model_path
        tested_epoch = int(torch.load(checkpoint, map_location="cpu", weights_only=False)["epoch"]) + 1
    start = time.perf_counter()
    engine.test(model, datamodule=data, ckpt_path=checkpoint, verbose=False)
    test_s = time.perf_counter() - start
    mistakes = [*collector.mistakes[0], *collector.mistakes[1]]
    found, scores, summary = collector.metrics(), collector.frame(), collector.summary()
    return Outcome(found, scores, mistakes, fit_s, test_s, epochs_run, tested_epoch, history.points, timer.seconds, summary)

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
from anomalib.data import AnomalibDataModule
from anomalib.data.datasets.image.tabular import TabularDataset
from anomalib.data.utils import TestSplitMode, ValSplitMode
from anomalib.engine import Engine
from anomalib.models.components import AnomalibModule
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import EarlyStopping

from viadk8s.data.layout import Sample
from viadk8s.spec import RunSpec


class ScoreCollector(Callback):
    """Keeps every test image's raw score, for scores.csv and the histogram."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def on_test_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        scores = outputs.pred_score.detach().float().cpu().reshape(-1).tolist()
        labels = outputs.gt_label.detach().cpu().reshape(-1).int().tolist()
        self.rows += [
            {"image_path": p, "label": y, "score": s} for p, y, s in zip(outputs.image_path, labels, scores, strict=True)
        ]

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["image_path", "label", "score"])


class ValidationHistory(Callback):
    """The monitored metric after each validation, to show which epoch early stopping chose."""

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor
        self.points: list[dict[str, float]] = []

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and not trainer.sanity_checking:
            self.points.append({"epoch": trainer.current_epoch + 1, self.monitor: round(float(value), 6)})


class SamplesDataModule(AnomalibDataModule):
    """Exactly the train, validation and test samples the worker chose (no splitting of its own)."""

    def __init__(self, name: str, samples: list[Sample], labelled_train: bool, batch_size: int, seed: int) -> None:
        has_val = any(s.split == "val" for s in samples)
        super().__init__(
            train_batch_size=batch_size,
            eval_batch_size=batch_size,
            num_workers=int(os.environ.get("VIADK8S_DATALOADER_WORKERS", "0")),
            val_split_mode=ValSplitMode.FROM_DIR if has_val else ValSplitMode.NONE,
            test_split_mode=TestSplitMode.FROM_DIR,
            seed=seed,
        )
        # set after the base class, which owns attributes such as ``_samples``
        self._name, self.run_samples, self.labelled_train = name, samples, labelled_train

    @property
    def name(self) -> str:
        return self._name

    def _dataset(self, split: str) -> TabularDataset:
        rows = []
        for s in self.run_samples:
            if s.split != split:
                continue
            # train images are fed as good unless the run is supervised: contamination is noise
            label = s.label if split != "train" or self.labelled_train else 0
            # the subset is what a dataset serves; its "split" column is only checked by anomalib, which
            # refuses labelled anomalies in a split named train, so supervised anomalies are not named so
            rows.append(
                {
                    "image_path": s.image_path,
                    "mask_path": s.mask_path or "",
                    "label_index": label,
                    "split": "train" if split == "train" and label == 0 else "test",
                }
            )
        return TabularDataset(name=self._name, samples=pd.DataFrame(rows))

    def _setup(self, _stage: str | None = None) -> None:
        self.train_data = self._dataset("train")
        self.test_data = self._dataset("test")
        if self.val_split_mode == ValSplitMode.FROM_DIR:
            self.val_data = self._dataset("val")


@dataclass
class Outcome:
    metrics: dict[str, float]
    scores: pd.DataFrame
    fit_s: float
    test_s: float
    epochs_run: int
    tested_epoch: int  # the epoch whose weights were tested (early stop: the best on validation)
    validation: list[dict[str, float]]


def accelerator() -> str:
    chosen = os.environ.get("VIADK8S_ACCELERATOR", "auto")
    if chosen == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return chosen


def train_and_test(spec: RunSpec, model: AnomalibModule, data: SamplesDataModule, work: Path) -> Outcome:
    collector = ScoreCollector()
    variant = spec.variant
    early = variant.validation != "last_epoch"
    history = ValidationHistory(variant.monitor)
    callbacks: list[Callback] = [collector]
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
    tested = engine.test(model, datamodule=data, ckpt_path=checkpoint, verbose=False)
    test_s = time.perf_counter() - start
    return Outcome(
        {k: float(v) for k, v in tested[0].items()}, collector.frame(), fit_s, test_s, epochs_run, tested_epoch, history.points
    )

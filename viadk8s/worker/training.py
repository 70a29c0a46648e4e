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
from anomalib import TaskType
from anomalib.callbacks.checkpoint import ModelCheckpoint
from anomalib.data import AnomalibDataModule, ImageItem
from anomalib.data.datasets.image.tabular import TabularDataset
from anomalib.data.transforms.utils import extract_transforms_by_type
from anomalib.data.utils import LabelName, TestSplitMode, ValSplitMode
from anomalib.engine import Engine
from anomalib.models.components import AnomalibModule
from anomalib.utils.attrs import get_nested_attr
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import EarlyStopping
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import Resize
from torchvision.tv_tensors import Image as TvImage
from torchvision.tv_tensors import Mask

from viadk8s import metrics
from viadk8s.data.decoded import DecodedImages, budget_mb, cache_enabled, same_resize
from viadk8s.data.images import to_float
from viadk8s.data.layout import Sample
from viadk8s.data.supervised import BalancedBatches, balanced_loader
from viadk8s.pixel_summary import PixelSummary, summarise
from viadk8s.spec import RunSpec
from viadk8s.worker.env import loader_workers, usable_cpus


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


class SamplesDataset(TabularDataset):
    """anomalib's table of samples, read by :mod:`viadk8s.data.images`: 16-bit images keep their
    range, any non-zero mask pixel is defect, a bad file is a one-line data error naming it.
    Images come out of ``decoded``, already at the model's size (:mod:`viadk8s.data.decoded`)."""

    def __init__(self, name: str, samples: pd.DataFrame, decoded: DecodedImages) -> None:
        super().__init__(name=name, samples=samples)
        self.decoded = decoded

    def needs_mask(self, row: Any) -> bool:
        """Whether the item of ``row`` carries its mask (the others get an empty one)."""
        return self.task == TaskType.SEGMENTATION and row.label_index == LabelName.ABNORMAL

    def __getitem__(self, index: int) -> ImageItem:
        row = self.samples.iloc[index]
        image = TvImage(to_float(self.decoded.image(row.image_path), self.decoded.bit_depth))
        gt_mask = None
        if self.task == TaskType.SEGMENTATION:
            size = tuple(image.shape[-2:])
            gt_mask = Mask(
                torch.tensor(self.decoded.mask(row.mask_path, row.image_path))
                if self.needs_mask(row)
                else torch.zeros(size, dtype=torch.uint8)
            )
        if self.augmentations:  # as anomalib's own datasets do
            if gt_mask is None:
                image = self.augmentations(image)
            else:
                image, gt_mask = self.augmentations(image, gt_mask)
        return ImageItem(
            image=image,
            gt_mask=gt_mask,
            gt_label=torch.tensor(row.label_index),
            image_path=row.image_path,
            mask_path=row.mask_path,
        )


class SamplesDataModule(AnomalibDataModule):
    """Exactly the train, validation and test samples the worker chose (no splitting of its own).
    ``balanced``: a model's request for balanced supervised batches, served in supervised runs.

    Each image is decoded and resized once per run, at setup, into :attr:`decoded`; loaders have
    :func:`~viadk8s.worker.env.loader_workers` workers, with pinned memory (and workers kept
    between epochs) when training on a GPU."""

    def __init__(
        self,
        name: str,
        samples: list[Sample],
        labelled_train: bool,
        batch_size: int,
        seed: int,
        bit_depth: int = 8,
        balanced: BalancedBatches | None = None,
    ) -> None:
        has_val = any(s.split == "val" for s in samples)
        super().__init__(
            train_batch_size=batch_size,
            eval_batch_size=batch_size,
            num_workers=loader_workers(),
            val_split_mode=ValSplitMode.FROM_DIR if has_val else ValSplitMode.NONE,
            test_split_mode=TestSplitMode.FROM_DIR,
            seed=seed,
        )
        # set after the base class, which owns attributes such as ``_samples``
        self._name, self.run_samples, self.labelled_train, self.bit_depth = name, samples, labelled_train, bit_depth
        self.balanced = balanced
        self.decoded: DecodedImages | None = None  # made by setup, which knows the model's size

    @property
    def name(self) -> str:
        return self._name

    def _datasets(self) -> list[SamplesDataset]:
        return [d for d in (getattr(self, f"{s}_data", None) for s in ("train", "val", "test")) if d is not None]

    def setup(self, stage: str | None = None) -> None:
        """anomalib's setup, then every image and mask of the run decoded once, at the model's size,
        into the run's folder (the trainer's root). Without a trainer, images are read at their own
        size on every access."""
        transform = get_nested_attr(self, "trainer.model.pre_processor.transform", None)
        resizes = extract_transforms_by_type(transform, Resize) if transform is not None else []
        resize = resizes[0] if resizes else None  # the model's first Resize: the one anomalib applies before collating
        if self.decoded is None or not same_resize(resize, self.decoded.resize):
            folder = Path(self.trainer.default_root_dir) / "decoded" if self.trainer else Path()
            self.decoded = DecodedImages(self.bit_depth, resize, folder, budget_mb())
        super().setup(stage)
        datasets = self._datasets()
        for dataset in datasets:  # made by an earlier setup, perhaps
            dataset.decoded = self.decoded
        if self.trainer and cache_enabled():
            rows = [(d, row) for d in datasets for row in d.samples.itertuples()]
            masks = [(row.mask_path, row.image_path) for d, row in rows if d.needs_mask(row)]
            self.decoded.fill((row.image_path for _, row in rows), masks, threads=usable_cpus())

    def _update_augmentations(self) -> None:
        """None: anomalib would give each dataset the model's resize, which :meth:`setup` applies once."""

    def _loader(self, dataset: SamplesDataset, shuffle: bool, batch_size: int) -> DataLoader:
        return DataLoader(dataset, shuffle=shuffle, batch_size=batch_size, collate_fn=dataset.collate_fn, **self._loader_args())

    def _loader_args(self) -> dict[str, Any]:
        """Pinned memory on a GPU (faster host-to-device copies); workers kept between epochs there."""
        gpu = accelerator() == "gpu"
        return {"num_workers": self.num_workers, "pin_memory": gpu, "persistent_workers": gpu and self.num_workers > 0}

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_data, False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_data, False, self.eval_batch_size)

    def _dataset(self, split: str) -> SamplesDataset:
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
        assert self.decoded is not None  # setup made it before anomalib's setup calls this
        return SamplesDataset(self._name, pd.DataFrame(rows), self.decoded)

    def train_dataloader(self) -> DataLoader:
        """Half normal, half labelled anomalies (viadk8s.data.supervised) where asked; else shuffled."""
        if not (self.labelled_train and self.balanced):
            return self._loader(self.train_data, True, self.train_batch_size)
        labels = self.train_data.samples.label_index.tolist()
        loader_args = {"collate_fn": self.train_data.collate_fn, **self._loader_args()}
        return balanced_loader(self.train_data, labels, self.balanced, self.train_batch_size, self.seed, **loader_args)

    def _setup(self, _stage: str | None = None) -> None:
        self.train_data = self._dataset("train")
        self.test_data = self._dataset("test")
        if self.val_split_mode == ValSplitMode.FROM_DIR:
            self.val_data = self._dataset("val")


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

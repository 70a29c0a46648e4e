"""The samples a run was given, as anomalib's dataset and data module: exactly the worker's train,
validation and test images, decoded once per run at the model's size (:mod:`viadk8s.data.decoded`),
with balanced supervised batches (:mod:`viadk8s.data.supervised`) where the worker asks for them.

Data, not training: how many loader workers, whether batches go to a GPU, and which model wants
balanced batches are decided by the worker and passed in; nothing here reads the process's
environment or the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch
from anomalib import TaskType
from anomalib.data import AnomalibDataModule, ImageItem
from anomalib.data.datasets.image.tabular import TabularDataset
from anomalib.data.transforms.utils import extract_transforms_by_type
from anomalib.data.utils import LabelName, TestSplitMode, ValSplitMode
from anomalib.utils.attrs import get_nested_attr
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import Resize
from torchvision.tv_tensors import Image as TvImage
from torchvision.tv_tensors import Mask

from viadk8s.data.decoded import DecodedImages, budget_mb, cache_enabled, same_resize
from viadk8s.data.images import to_float
from viadk8s.data.layout import Sample
from viadk8s.data.supervised import BalancedBatches, balanced_loader


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

    Each image is decoded and resized once per run, at setup, into :attr:`decoded` with
    ``decode_threads`` threads; loaders have ``num_workers`` workers, with pinned memory (and
    workers kept between epochs) when ``gpu``."""

    def __init__(
        self,
        name: str,
        samples: list[Sample],
        labelled_train: bool,
        batch_size: int,
        seed: int,
        bit_depth: int = 8,
        balanced: BalancedBatches | None = None,
        num_workers: int = 0,
        gpu: bool = False,
        decode_threads: int = 1,
    ) -> None:
        has_val = any(s.split == "val" for s in samples)
        super().__init__(
            train_batch_size=batch_size,
            eval_batch_size=batch_size,
            num_workers=num_workers,
            val_split_mode=ValSplitMode.FROM_DIR if has_val else ValSplitMode.NONE,
            test_split_mode=TestSplitMode.FROM_DIR,
            seed=seed,
        )
        # set after the base class, which owns attributes such as ``_samples``
        self._name, self.run_samples, self.labelled_train, self.bit_depth = name, samples, labelled_train, bit_depth
        self.balanced, self.gpu, self.decode_threads = balanced, gpu, decode_threads
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
            self.decoded.fill((row.image_path for _, row in rows), masks, threads=self.decode_threads)

    def _update_augmentations(self) -> None:
        """None: anomalib would give each dataset the model's resize, which :meth:`setup` applies once."""

    def _loader(self, dataset: SamplesDataset, shuffle: bool, batch_size: int) -> DataLoader:
        """A shuffled loader draws its order from its own generator, seeded by the run's seed: the
        same on every repeat, whatever random numbers the model drew before (as balanced loaders)."""
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        args = {"collate_fn": dataset.collate_fn, "generator": generator, **self._loader_args()}
        return DataLoader(dataset, shuffle=shuffle, batch_size=batch_size, **args)

    def _loader_args(self) -> dict[str, Any]:
        """Pinned memory on a GPU (faster host-to-device copies); workers kept between epochs there."""
        return {"num_workers": self.num_workers, "pin_memory": self.gpu, "persistent_workers": self.gpu and self.num_workers > 0}

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

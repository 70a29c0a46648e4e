"""Data loading: each image decoded once per run (``viadk8s.data.decoded``) against decoding every epoch.

On a generated VisA-sized category (1500×1000 JPEGs, masks for the bad ones), all measured in this run:

* data seconds per training epoch at 256 px, in the training process: the worker's cached loader
  vs the loader before the cache (decode, scale to float, resize, for every image in every epoch).
  Target ratio <= 0.05. The one-time decoding at setup is in the note.
* a 5-epoch FastFlow fit (ResNet-18 backbone, random weights: a cheap multi-epoch model on 2 CPUs)
  through the worker's data module vs a bare anomalib loop (its ``Folder`` data module, the same
  model, trainer settings and loader workers). Target ratio <= 1.0 (never slower). The note gives
  the share of each epoch spent waiting for data: the bare loop, the worker before the cache
  (no cache, no loader workers: its old defaults) and after. That share is what a GPU gains.

    python benchmarks/data.py [--n-train 60] [--n-test 30] [--epochs 5] [--repeats 2]
"""

from __future__ import annotations

import contextlib
import os
import resource
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from anomalib.data import Folder
from anomalib.engine import Engine
from anomalib.models import Fastflow
from lightning.pytorch import Callback, seed_everything
from PIL import Image
from table import Row, ratio_row, run_alone
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import Resize
from torchvision.tv_tensors import Image as TvImage

from viadk8s import catalog
from viadk8s.data.images import read_image
from viadk8s.data.layout import Sample, scan_category
from viadk8s.data.samples import SamplesDataModule
from viadk8s.spec import RunSpec
from viadk8s.worker.adapters import build_model, quirks_fixed
from viadk8s.worker.env import loader_workers, usable_cpus
from viadk8s.worker.training import accelerator

SIZE = 256
WIDTH, HEIGHT = 1500, 1000  # VisA's images
BATCH = 16
SEED = 3341


def make_category(root: Path, n_train: int, n_test: int) -> Path:
    """Textured 1500×1000 JPEGs (JPEG quality 90, as cameras write), half the test images bad with masks."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    for i in range(n_train + n_test):
        folder = "train/good" if i < n_train else "test/good" if i < n_train + n_test // 2 else "test/bad"
        period = rng.uniform(12, 40, 2)
        base = 128 + 60 * np.sin(xx / period[0])[..., None] * np.cos(yy / period[1])[..., None]
        image = base + rng.normal(0, 12, (HEIGHT, WIDTH, 3)).astype(np.float32)
        path = root / folder / f"{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        if folder == "test/bad":
            top, left = rng.integers(100, 700), rng.integers(100, 1200)
            image[top : top + 120, left : left + 200] = 30
            mask = np.zeros((HEIGHT, WIDTH), np.uint8)
            mask[top : top + 120, left : left + 200] = 255
            (root / "ground_truth" / "bad").mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(root / "ground_truth" / "bad" / f"{i:03d}_mask.png")
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(path, quality=90)
    return root


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class Before(Dataset):
    """The worker's loader before the cache: every read decodes, scales to float and resizes."""

    def __init__(self, paths: list[str], resize: Resize) -> None:
        self.paths, self.resize = paths, resize

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.resize(TvImage(read_image(self.paths[index])))


def epoch_seconds(loader: DataLoader, repeats: int) -> float:
    """The fastest of ``repeats`` full passes over ``loader``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _batch in loader:
            pass
        best = min(best, time.perf_counter() - start)
    return best


def worker_data(samples: list[Sample], work: Path, model: Any = None) -> SamplesDataModule:
    loading = {"num_workers": loader_workers(), "gpu": accelerator() == "gpu", "decode_threads": usable_cpus()}  # as the worker
    data = SamplesDataModule("bench-visa", samples, labelled_train=False, batch_size=BATCH, seed=SEED, **loading)
    if model is None:  # set up as Lightning does, under a model that resizes to SIZE
        model = SimpleNamespace(pre_processor=Fastflow.configure_pre_processor(image_size=(SIZE, SIZE)))
        data.trainer = SimpleNamespace(model=model, default_root_dir=str(work))  # type: ignore[assignment]
        data.setup("fit")
    return data


def data_row(samples: list[Sample], work: Path, repeats: int = 3) -> Row:
    train = [s.image_path for s in samples if s.split == "train"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # both in the training process, on one core: seconds of data work per epoch
    with environment(VIADK8S_DATALOADER_WORKERS="0"):
        before = epoch_seconds(DataLoader(Before(train, Resize((SIZE, SIZE))), batch_size=BATCH), repeats)
        start = time.perf_counter()
        data = worker_data(samples, work)
        fill = time.perf_counter() - start
        cached = epoch_seconds(data.train_dataloader(), repeats)
    torch.set_num_threads(threads)
    return ratio_row(
        f"data s/epoch, {len(train)} 1500x1000 JPEGs at {SIZE} px: decoded once vs every epoch",
        "decode + float + resize every epoch, s",
        before,
        cached,
        0.05,
        f"one-time decoding of all {len(samples)} images and masks at setup (same process): {fill:.2f} s, "
        f"{usable_cpus()} decoding threads",
    )


class DataWait(Callback):
    """Seconds of each training epoch and of its waiting for batches: from the end of one step (or the
    epoch's start) to the start of the next, where Lightning fetches the data."""

    def __init__(self) -> None:
        self.epochs: list[tuple[float, float]] = []
        self._start = self._mark = self._wait = 0.0

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._start = self._mark = time.perf_counter()
        self._wait = 0.0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._wait += time.perf_counter() - self._mark

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._mark = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.epochs.append((time.perf_counter() - self._start, self._wait))

    @property
    def share(self) -> float:
        return sum(w for _, w in self.epochs) / sum(e for e, _ in self.epochs)


def cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (loader workers end with each epoch)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


@dataclass
class Fit:
    wall: float
    cpu: float
    wait: DataWait


def fit(model: Any, datamodule: Any, epochs: int, work: Path) -> Fit:
    """``engine.fit`` with the worker's trainer settings for a last-epoch run."""
    wait = DataWait()
    engine = Engine(
        accelerator=accelerator(),
        devices=1,
        max_epochs=epochs,
        default_root_dir=work,
        logger=False,
        callbacks=[wait],
        barebones=True,
        limit_val_batches=0,
    )
    start, cpu = time.perf_counter(), cpu_seconds()
    engine.fit(model, datamodule=datamodule)
    return Fit(time.perf_counter() - start, cpu_seconds() - cpu, wait)


def fit_rows(root: Path, samples: list[Sample], epochs: int, work: Path, repeats: int) -> list[Row]:
    """The bare loop and the worker alternate ``repeats`` times (the fastest of each counts: a shared
    machine's noise only ever slows a run down); the worker before the cache runs once, for its share."""
    spec = RunSpec(
        sweep="bench", experiment="evaluation", model="fastflow", dataset="bench", category="visa", seed=SEED, weights="random"
    )
    entry = catalog.model("fastflow").model_copy(update={"init_args": {"backbone": "resnet18"}})
    workers = loader_workers()

    def worker(name: str) -> Fit:
        seed_everything(SEED, verbose=False)
        with quirks_fixed(entry, pretrained=False):
            model = build_model(spec, entry, work, monitor=None)
            return fit(model, worker_data(samples, work, model), epochs, work / name)

    def bare(name: str) -> Fit:
        seed_everything(SEED, verbose=False)
        folder = Folder(
            name="bench",
            root=root,
            normal_dir="train/good",
            abnormal_dir="test/bad",
            normal_test_dir="test/good",
            mask_dir="ground_truth/bad",
            train_batch_size=BATCH,
            eval_batch_size=BATCH,
            num_workers=workers,
            seed=SEED,
        )
        return fit(Fastflow(backbone="resnet18", pre_trained=False), folder, epochs, work / name)

    with environment(VIADK8S_DECODE_CACHE="0", VIADK8S_DATALOADER_WORKERS="0"):
        before = worker("before")
    bares, afters = [], []
    for i in range(repeats):
        bares.append(bare(f"bare{i}"))
        afters.append(worker(f"after{i}"))
    bare_fit, after = min(bares, key=lambda f: f.wall), min(afters, key=lambda f: f.wall)
    shares = f"bare {bare_fit.wait.share:.1%}, worker before {before.wait.share:.1%}, after {after.wait.share:.1%}"
    train = sum(s.split == "train" for s in samples)
    return [
        ratio_row(
            f"FastFlow (ResNet-18) fit s, {epochs} epochs, {train} 1500x1000 JPEGs: worker vs bare anomalib",
            f"anomalib Folder + Engine, {workers} loader workers, fastest of {repeats}, s",
            bare_fit.wall,
            after.wall,
            1.0,
            f"share of each epoch waiting for data: {shares}; CPU seconds bare {bare_fit.cpu:.1f}, "
            f"worker {after.cpu:.1f}; worker before the cache (decoding every epoch, no loader workers): "
            f"{before.wall:.2f} s, {before.cpu:.1f} CPU s",
        )
    ]


def measure(n_train: int = 60, n_test: int = 30, epochs: int = 5, repeats: int = 2) -> list[Row]:
    """This benchmark's rows (see the module's docstring), on a category generated in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="viadk8s-bench-data-") as tmp:
        root = make_category(Path(tmp) / "visa", n_train, n_test)
        samples = scan_category(root)
        return [data_row(samples, Path(tmp) / "rows"), *fit_rows(root, samples, epochs, Path(tmp) / "fits", repeats)]


if __name__ == "__main__":
    run_alone(measure, __doc__)

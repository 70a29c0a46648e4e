"""One run, as a pod runs it: stage data, fit and test one anomalib model, measure, store.

Imported only after :func:`viadk8s.worker.env.prepare_process` and the weights cache are set,
because torch, timm and the Hugging Face hub read their environment at import time.
"""

from __future__ import annotations

import os
import platform
import resource
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from anomalib.data import Tabular
from anomalib.engine import Engine
from lightning.pytorch import Callback, seed_everything

from viadk8s import catalog
from viadk8s.catalog import METRICS
from viadk8s.config import Config
from viadk8s.data.layout import Sample, has_pixel_masks, scan_category
from viadk8s.data.resolve import Datasets
from viadk8s.data.synthetic import texture_bank
from viadk8s.errors import SpecError
from viadk8s.results import HISTOGRAM, RESULT, SCORES, DataSummary, RunResult, Timings, run_prefix
from viadk8s.spec import RunSpec
from viadk8s.store import Store
from viadk8s.tracking import log_run
from viadk8s.worker.adapters import build_model
from viadk8s.worker.outputs import write_histogram, write_scores
from viadk8s.worker.weights import cached_weights_only


class ScoreCollector(Callback):
    """Keeps every test image's raw score, for scores.csv and the histogram."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        scores = outputs.pred_score.detach().float().cpu().reshape(-1).tolist()
        labels = outputs.gt_label.detach().cpu().reshape(-1).int().tolist()
        self.rows += [{"image_path": p, "label": y, "score": s} for p, y, s in zip(outputs.image_path, labels, scores, strict=True)]

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["image_path", "label", "score"])


def _samples_frame(samples: list[Sample]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"image_path": s.image_path, "mask_path": s.mask_path or "", "label_index": s.label, "split": s.split} for s in samples]
    )


def _anomaly_source(config: Config, notes: list[str]) -> Path:
    """DTD if the user staged it beside the weights, else a generated texture bank."""
    if config.weights_dir and (Path(config.weights_dir) / "dtd").is_dir():
        return Path(config.weights_dir) / "dtd"
    notes.append("anomaly source: generated textures (stage DTD under $VIADK8S_WEIGHTS_DIR/dtd for the paper's setting)")
    return texture_bank(config.cache_path / "anomaly_source")


def _accelerator() -> str:
    chosen = os.environ.get("VIADK8S_ACCELERATOR", "auto")
    if chosen == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return chosen


def _peak_memory(accelerator: str) -> tuple[float, str]:
    if accelerator == "gpu":
        return torch.cuda.max_memory_allocated() / 2**20, "cuda"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_rss"


def _versions() -> dict[str, str]:
    names = ("viadk8s", "anomalib", "torch", "torchvision", "timm", "lightning")
    return {"python": platform.python_version(), **{n: metadata.version(n) for n in names}}


def execute(spec: RunSpec, config: Config, store: Store) -> RunResult:
    """Train, test, write artifacts, then commit ``result.json`` last."""
    entry = catalog.model(spec.model)
    if not spec.variant.is_default():
        raise SpecError(f"variant {spec.variant.label()!r} of experiment {spec.experiment!r} is not implemented in the worker yet")
    datasets = Datasets(config, store)
    dataset = datasets.entry(spec.dataset)
    samples = scan_category(datasets.resolve(spec.dataset, spec.category))
    pixel = dataset.has_masks and entry.pixel_maps and has_pixel_masks(samples)
    used = [s for s in samples if s.split == "test" or s.label == 0]  # labelled bad train images: supervised only
    notes: list[str] = []
    accelerator = _accelerator()
    if accelerator == "gpu":
        torch.cuda.reset_peak_memory_stats()
    seed_everything(spec.seed, workers=True, verbose=False)
    with cached_weights_only():
        model = build_model(spec, entry, _anomaly_source(config, notes), pixel)
    datamodule = Tabular(
        name=f"{spec.dataset}-{spec.category}", samples=_samples_frame(used), root=None,
        train_batch_size=spec.trainer.batch_size, eval_batch_size=spec.trainer.batch_size,
        num_workers=int(os.environ.get("VIADK8S_DATALOADER_WORKERS", "0")),
        test_split_mode="from_dir", val_split_mode="none", seed=spec.seed,
    )
    collector = ScoreCollector()
    with tempfile.TemporaryDirectory(prefix="viadk8s-run-") as work:
        engine = Engine(
            accelerator=accelerator, devices=1, max_epochs=spec.epochs, default_root_dir=work,
            logger=False, barebones=True, callbacks=[collector], limit_val_batches=0,
        )
        start = time.perf_counter()
        engine.fit(model, datamodule=datamodule)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        tested = engine.test(model, datamodule=datamodule, verbose=False)
        test_s = time.perf_counter() - start
        scores = collector.frame()
        measured = {k: float(v) for k, v in tested[0].items()}
        metrics = {m: (measured.get(m) if pixel or m.startswith("image_") else None) for m in METRICS}
        peak, kind = _peak_memory(accelerator)
        test = [s for s in used if s.split == "test"]
        result = RunResult(
            run_key=spec.run_key, spec=spec, metrics=metrics, epochs=spec.epochs,
            device=torch.cuda.get_device_name() if accelerator == "gpu" else f"cpu ({os.cpu_count()} cores)",
            timings=Timings(fit_s=round(fit_s, 3), test_s=round(test_s, 3),
                            test_images_per_s=round(len(scores) / test_s, 2), peak_memory_mb=round(peak, 1), memory_kind=kind),
            data=DataSummary(n_train=sum(s.split == "train" for s in used), n_test_good=sum(s.label == 0 for s in test),
                             n_test_bad=sum(s.label == 1 for s in test), pixel_masks=pixel),
            versions=_versions(), notes=notes, finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        folder = Path(work)
        write_scores(scores, folder / SCORES)
        write_histogram(scores, spec, folder / HISTOGRAM)
        prefix = run_prefix(spec)
        for name in (SCORES, HISTOGRAM):
            store.upload(f"{prefix}/{name}", folder / name)
        result.tracking = log_run(result, config.tracking_uri, config.store_uri, [folder / SCORES, folder / HISTOGRAM])
        store.write_bytes(f"{prefix}/{RESULT}", result.model_dump_json(indent=2).encode())
    return result

"""One run, as a pod runs it: stage data, prepare the experiment's splits, fit and test one
anomalib model, measure, and commit the result to the store (``result.json`` last).

Imported only after :func:`viadk8s.worker.env.prepare_process` and the weights cache are set,
because torch, timm and the Hugging Face hub read their environment at import time.
"""

from __future__ import annotations

import hashlib
import os
import platform
import resource
import tempfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from viadk8s import catalog
from viadk8s.catalog import METRICS, DatasetEntry
from viadk8s.config import Config
from viadk8s.data.images import detect_bit_depth, inspect
from viadk8s.data.layout import Sample, has_pixel_masks, scan_category
from viadk8s.data.resolve import Datasets
from viadk8s.data.samples import SamplesDataModule
from viadk8s.data.synthetic import texture_bank
from viadk8s.lock import lock_sha256
from viadk8s.metrics import verify
from viadk8s.models.components.balanced import requested_batches
from viadk8s.pixel_summary import PIXEL_SUMMARY, PixelSummary
from viadk8s.results import (
    HISTOGRAM,
    SCORES,
    DataSummary,
    Overlay,
    RunResult,
    Timings,
    Uncertainty,
    commit_result,
    run_prefix,
)
from viadk8s.spec import RunSpec
from viadk8s.stats import METHOD, intervals
from viadk8s.store import Store
from viadk8s.tracking import log_run
from viadk8s.worker.adapters import build_model, model_class, quirks_fixed
from viadk8s.worker.determinism import make_deterministic
from viadk8s.worker.env import loader_workers, usable_cpus
from viadk8s.worker.outputs import scores_frame, write_histogram, write_overlays, write_scores
from viadk8s.worker.training import Outcome, accelerator, train_and_test
from viadk8s.worker.variants import Prepared, prepare
from viadk8s.worker.weights import cached_weights_only


def _anomaly_source(config: Config, notes: list[str]) -> Path:
    """DTD if the user staged it beside the weights, else a generated texture bank."""
    if config.weights_dir and (Path(config.weights_dir) / "dtd").is_dir():
        return Path(config.weights_dir) / "dtd"
    notes.append("anomaly source: generated textures (stage DTD under $VIADK8S_WEIGHTS_DIR/dtd for the paper's setting)")
    return texture_bank(config.cache_path / "anomaly_source")


def _image_summary(dataset: DatasetEntry, samples: list[Sample], notes: list[str]) -> dict[str, Any]:
    """The bit depth images are scaled by (configured, or detected from the train images), and
    masks whose size differs from their image's (resized with nearest neighbour): for result.json."""
    if dataset.bit_depth:
        bit_depth, how = dataset.bit_depth, "configured (datasets.<name>.bit_depth)"
    else:
        bit_depth, how = detect_bit_depth(s.image_path for s in samples if s.split == "train" and s.label == 0)
    resized = [s.mask_path for s in samples if s.mask_path and inspect(s.mask_path).size != inspect(s.image_path).size]
    if resized:
        notes.append(f"{len(resized)} masks differ in size from their image and were resized (nearest), e.g. {resized[0]}")
    return {"bit_depth": bit_depth, "bit_depth_source": how, "masks_resized": len(resized)}


def _peak_memory(device: str) -> tuple[float, str]:
    if device == "gpu":
        return torch.cuda.max_memory_allocated() / 2**20, "cuda"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_rss"


def _versions() -> dict[str, str]:
    names = ("viadk8s", "anomalib", "torch", "torchvision", "timm", "lightning")
    return {"python": platform.python_version(), **{n: metadata.version(n) for n in names}}


@dataclass
class Parts:
    """What the worker collects for a run's result, in the order it learns it: :func:`_result` builds
    the :class:`RunResult` from these once (only the tracking step, which logs the built result, follows)."""

    spec: RunSpec
    prepared: Prepared
    pixel: bool
    images: dict[str, Any]  # bit depth applied and masks resized (:func:`_image_summary`)
    notes: list[str]
    determinism: dict[str, Any]  # what :func:`make_deterministic` set
    outcome: Outcome
    timings: Timings  # measured as training ends (peak memory then)
    device: str
    model_report: dict[str, Any]
    scores_sha256: str
    pixel_summary_sha256: str | None  # None: no masks, no summary
    uncertainty: Uncertainty
    overlays: list[Overlay]


def _timings(outcome: Outcome, device: str) -> Timings:
    peak, kind = _peak_memory(device)
    return Timings(
        fit_s=round(outcome.fit_s, 3),
        epoch_s=outcome.epoch_s,
        test_s=round(outcome.test_s, 3),
        memory_kind=kind,
        test_images_per_s=round(len(outcome.scores) / outcome.test_s, 2),
        peak_memory_mb=round(peak, 1),
    )


def _reported(outcome: Outcome, pixel: bool) -> dict[str, float | None]:
    """Every catalog metric: pixel ones only where the run had masks (else ``None``)."""
    return {m: (outcome.metrics.get(m) if pixel or m.startswith("image_") else None) for m in METRICS}


def _result(parts: Parts) -> RunResult:
    spec, prepared, outcome = parts.spec, parts.prepared, parts.outcome
    test = prepared.split("test")
    return RunResult(
        run_key=spec.run_key,
        spec=spec,
        epochs=spec.epochs,
        epochs_run=outcome.epochs_run,
        tested_epoch=outcome.tested_epoch,
        validation_history=outcome.validation,
        metrics=_reported(outcome, parts.pixel),
        device=torch.cuda.get_device_name() if parts.device == "gpu" else f"cpu ({os.cpu_count()} cores)",
        timings=parts.timings,
        data=DataSummary(
            n_train=len(prepared.split("train")),
            n_val=len(prepared.split("val")),
            n_test_good=sum(s.label == 0 for s in test),
            n_test_bad=sum(s.label == 1 for s in test),
            pixel_masks=parts.pixel,
            changes=prepared.record,
            images=parts.images,
        ),
        versions=_versions(),
        lock_sha256=lock_sha256(),
        notes=parts.notes,
        uncertainty=parts.uncertainty,
        scores_sha256=parts.scores_sha256,
        pixel_summary_sha256=parts.pixel_summary_sha256,
        determinism=parts.determinism,
        overlays=parts.overlays,
        model_report=parts.model_report,
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def _uncertainty(scores: pd.DataFrame, config: Config, seed: int) -> Uncertainty:
    """Intervals from the stored scores, seeded by the run's seed: anyone can recompute them."""
    settings = config.report
    found = intervals(scores, settings.resamples, settings.confidence, seed)
    return Uncertainty(method=METHOD, confidence=settings.confidence, resamples=settings.resamples, seed=seed, intervals=found)


def execute(spec: RunSpec, config: Config, store: Store) -> RunResult:
    """Train, test, write artifacts, then commit ``result.json`` last."""
    entry = catalog.model(spec.model)
    datasets = Datasets(config, store)
    masks_known = datasets.entry(spec.dataset).has_masks and entry.pixel_maps
    samples = scan_category(datasets.resolve(spec.dataset, spec.category))
    notes: list[str] = []
    device = accelerator()
    if device == "gpu":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix="viadk8s-run-") as tmp:
        work = Path(tmp)
        images = _image_summary(datasets.entry(spec.dataset), samples, notes)
        prepared = prepare(spec, samples, work, images["bit_depth"])
        pixel = masks_known and has_pixel_masks(prepared.split("test"))
        monitor = spec.variant.monitor if spec.variant.validation != "last_epoch" else None
        determinism = make_deterministic(spec.seed)
        data = SamplesDataModule(
            f"{spec.dataset}-{spec.category}",
            prepared.samples,
            prepared.labelled_train,
            spec.trainer.batch_size,
            spec.seed,
            images["bit_depth"],
            balanced=requested_batches(model_class(entry)),  # a model's own batch recipe
            num_workers=loader_workers(),
            gpu=device == "gpu",
            decode_threads=usable_cpus(),
        )
        with quirks_fixed(entry, spec.weights == "imagenet"), cached_weights_only():
            model = build_model(spec, entry, _anomaly_source(config, notes), monitor)
            outcome = train_and_test(spec, model, data, work, pixel, keep=config.report.overlays)
        timings = _timings(outcome, device)
        tested = prepared.split("test")
        write_scores(scores_frame(outcome.scores, tested), work / SCORES)
        stored = pd.read_csv(work / SCORES)
        summary = None
        if outcome.pixel_summary is not None:  # its images named as in scores.csv, checked as stored
            replace(outcome.pixel_summary, images=stored["image_path"].to_numpy(str)).write(work / PIXEL_SUMMARY)
            summary = PixelSummary.from_bytes((work / PIXEL_SUMMARY).read_bytes())
        verify(_reported(outcome, pixel), stored, summary)  # what we report is what scores.csv (and the pixel summary) give
        write_histogram(stored, spec, work / HISTOGRAM)
        overlays = write_overlays(outcome.mistakes, tested, images["bit_depth"], work / "overlays")
        artifacts = [work / SCORES, work / HISTOGRAM, *prepared.files, *(path for path, _ in overlays)]
        artifacts += [work / PIXEL_SUMMARY] if summary is not None else []
        prefix = run_prefix(spec)
        for path in artifacts:
            store.upload(f"{prefix}/{path.name}", path)
        result = _result(
            Parts(
                spec,
                prepared,
                pixel,
                images,
                notes,
                determinism,
                outcome,
                timings,
                device,
                model_report=dict(getattr(model, "model_report", {})),
                scores_sha256=hashlib.sha256((work / SCORES).read_bytes()).hexdigest(),
                pixel_summary_sha256=hashlib.sha256((work / PIXEL_SUMMARY).read_bytes()).hexdigest() if summary else None,
                uncertainty=_uncertainty(stored, config, spec.seed),
                overlays=[overlay for _, overlay in overlays],
            )
        )
        result = result.model_copy(update={"tracking": log_run(result, config.tracking_uri, config.store_uri, artifacts)})
        commit_result(store, result)
    return result

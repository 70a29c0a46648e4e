"""Pixel metrics a reader can recompute: each run's anomaly maps summed up on one threshold grid.

Why: pixel AUROC, F1Max and AUPRO need every pixel of every map, which a run cannot store (a
category at 256 px is ~10 M floats). What they need of the pixels is far less: how many good pixels
of each image, and how much of each defect region, lie above each threshold. On one grid per run,
those counts are a few hundred kB, and every pixel curve is a cumulative sum of them: the metrics
can be recomputed from the store (``viadk8s verify``, the worker's pre-commit check), and, as the
counts are per image, bootstrapped over images like the image metrics (intervals, paired compares).

The grid's thresholds are values of the maps themselves, so each binned curve point *is* a point of
the exact curve: the binned curve is the exact one with points left out. F1Max can only be lower,
AUROC and AUPRO are trapezoids over fewer points. Thresholds sit at quantiles of the defect pixels
(every 1/2048 of recall), of the good pixels in AUPRO's range (every 0.3/768 of false positive rate)
and more sparsely below (every 0.7/512), so no bin holds much of either class. A trapezoid over one
bin misses at most half its rectangle, hence at most: AUROC 0.7/1024, AUPRO 1/1536, F1Max 2/2048
(all under :data:`PIXEL_TOLERANCE`, 0.1 points); measured errors are a fifth of that or less
(tests/test_pixel_summary.py). Two passes over the maps: one to set the grid, one to count.

Regions are AUPRO's: 8-connected components of each mask (anomalib's ``cv2.connectedComponents``).
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from viadk8s.catalog import PIXEL_METRICS
from viadk8s.errors import SpecError
from viadk8s.results import PIXEL_SUMMARY, RunResult, run_prefix
from viadk8s.stats import Difference, _bootstrap, percentile_interval
from viadk8s.store import Store

FPR_LIMIT = 0.3  # AUPRO's, as :func:`viadk8s.metrics.aupro` integrates it
#: reported (exact) vs recomputed from the summary (binned): 0.1 points on the 0..100 scale
PIXEL_TOLERANCE = 1e-3
BAD_LEVELS = 2048  # thresholds at quantiles of the defect pixels: F1Max within 2/2048
FPR_LEVELS = 768  # at good-pixel quantiles within FPR [0, 0.3]: AUPRO within 1/(2*768)
LOW_LEVELS = 512  # and below, FPR (0.3, 1]: AUROC within 0.7/(2*512)
SAMPLE = 1 << 22  # at most this many values of each class set the grid (a strided subsample)
FORMAT = 1  # the summary's layout version, stored in the file
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity, as cv2.connectedComponents
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PixelSummary:
    """Per-bin pixel counts of one run's test maps. Bin ``b`` holds values ``v`` with exactly ``b``
    thresholds ``<= v`` (``grid`` ascending), so the pixels at or above ``grid[k]`` are bins ``> k``.

    ``good``: good pixels per image and bin; ``regions``: defect pixels per region and bin, the
    region's image in ``region_image``. Where the model scores pixel AUROC on a map of its own
    (:data:`viadk8s.metrics.PIXEL_AUROC_MAP`), ``auroc`` holds that map's grid, good and bad counts."""

    images: np.ndarray  # names, as scores.csv's image_path, in its row order
    grid: np.ndarray
    good: np.ndarray
    regions: np.ndarray
    region_image: np.ndarray
    auroc: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def defective(self) -> np.ndarray:
        """Which images have defect pixels: the bootstrap's two strata."""
        return np.bincount(self.region_image, minlength=len(self.images)) > 0

    def metrics(self) -> dict[str, float]:
        """Pixel AUROC, AUPRO and F1Max of the whole test set, from the counts."""
        values = metrics_batch(self, np.ones((1, len(self.images))))
        return {m: float(v[0]) for m, v in zip(PIXEL_METRICS, values, strict=True)}

    def disagreements(self, reported: Mapping[str, float | None]) -> list[str]:
        """Each reported pixel metric farther than :data:`PIXEL_TOLERANCE` from its recomputation."""
        return [
            f"{name} reported {reported.get(name)!r}, recomputed from {PIXEL_SUMMARY} {value!r}"
            for name, value in self.metrics().items()
            if reported.get(name) is None or not math.isclose(float(reported[name]), value, abs_tol=PIXEL_TOLERANCE)  # type: ignore[arg-type]
        ]

    def to_bytes(self) -> bytes:
        arrays = {
            "format": np.array(FORMAT),
            "images": self.images.astype(str),
            "grid": self.grid,
            "good": self.good,
            "regions": self.regions,
            "region_image": self.region_image,
        }
        if self.auroc is not None:
            arrays |= dict(zip(("auroc_grid", "auroc_good", "auroc_bad"), self.auroc, strict=True))
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, raw: bytes) -> PixelSummary:
        """A stored summary; ``ValueError`` (one line) when it is not one."""
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as f:
                if int(f["format"]) != FORMAT:
                    raise ValueError(f"summary format {int(f['format'])}, this viadk8s reads {FORMAT}")
                auroc = (f["auroc_grid"], f["auroc_good"], f["auroc_bad"]) if "auroc_grid" in f else None
                found = cls(f["images"], f["grid"], f["good"], f["regions"], f["region_image"], auroc)
        except (OSError, KeyError, EOFError, ValueError) as err:  # a broken zip is an OSError, bytes a ValueError
            raise ValueError(f"not a pixel summary: {err}") from None
        bins = len(found.grid) + 1
        if found.good.shape != (len(found.images), bins) or found.regions.shape != (len(found.region_image), bins):
            raise ValueError("not a pixel summary: its counts do not match its grid and images")
        return found

    def write(self, path: Path) -> None:
        """Write under a temporary name, then rename (a reader never sees half a file)."""
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(self.to_bytes())
        tmp.replace(path)


def _strided(values: np.ndarray, total: int) -> np.ndarray:
    """Every ``ceil(total / SAMPLE)``-th value: a deterministic subsample of at most ~SAMPLE overall."""
    return values[:: max(1, math.ceil(total / SAMPLE))]


def _at_levels(ordered: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Values of a sorted array at quantile ``levels`` (0..1), each one of its values."""
    return ordered[np.round(levels * (len(ordered) - 1)).astype(np.int64)] if len(ordered) else ordered


def threshold_grid(good: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """The run's thresholds, ascending and distinct: quantiles of the defect pixels ``bad`` and
    of the good pixels ``good``, dense where AUPRO integrates (the highest 30 % of good values)."""
    good, bad = np.sort(good), np.sort(bad)
    upper = 1 - np.linspace(0, FPR_LIMIT, FPR_LEVELS + 1)  # good quantiles: FPR 0 .. 0.3
    lower = np.linspace(0, 1 - FPR_LIMIT, LOW_LEVELS + 1)
    return np.unique(np.concatenate([_at_levels(bad, np.linspace(0, 1, BAD_LEVELS + 1)), _at_levels(good, np.r_[upper, lower])]))


def _numpy(maps: torch.Tensor | np.ndarray) -> np.ndarray:
    return maps.detach().float().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps, np.float32)


def _image_counts(grid: np.ndarray, values: np.ndarray, labels: np.ndarray | int, groups: int) -> np.ndarray:
    """``(groups, bins)`` counts of ``values`` per bin, grouped by ``labels`` (0..groups-1)."""
    bins = len(grid) + 1
    found = np.searchsorted(grid, values, side="right")
    return np.bincount(labels * bins + found, minlength=groups * bins).reshape(groups, bins)


Maps = torch.Tensor | np.ndarray | Sequence[torch.Tensor]  # (N, H, W), or N maps (H, W)


def summarise(
    maps: Maps, masks: torch.Tensor | np.ndarray, images: Sequence[str], auroc_maps: Maps | None = None
) -> PixelSummary:
    """The summary of anomaly maps against binary masks ``(N, H, W)``, images named ``images``.

    Two passes over the maps: the first takes a strided subsample of each class to set the grid,
    the second counts each image on it; neither copies all maps (one image at a time), so the
    worker passes the maps it keeps for the exact metrics as they are, one view per image."""
    masks = masks.detach().cpu().numpy().astype(bool) if isinstance(masks, torch.Tensor) else np.asarray(masks, bool)
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} image names for {len(masks)} masks")
    main = _histograms(maps, masks, regions=True)
    auroc = None if auroc_maps is None else _histograms(auroc_maps, masks, regions=False)[:3]
    grid, good, regions, region_image = main
    return PixelSummary(np.asarray(images, dtype=str), grid, good, regions, region_image, auroc)


def _histograms(maps: Maps, masks: np.ndarray, regions: bool) -> tuple[np.ndarray, ...]:
    """``(grid, good, defect, owner)``: per image good counts; defect counts per region (``regions``,
    ``owner`` its image) or per image (``owner`` empty)."""
    shapes = {tuple(m.shape) for m in maps}
    if len(maps) != len(masks) or shapes != {masks.shape[1:]}:
        raise ValueError(f"{len(maps)} anomaly maps of shapes {sorted(shapes)} and masks {masks.shape} differ in shape")
    n_good, n_bad = int((~masks).sum()), int(masks.sum())
    samples_good, samples_bad = [], []
    for i in range(len(masks)):
        values = _numpy(maps[i])
        samples_good.append(_strided(values[~masks[i]], n_good))
        samples_bad.append(_strided(values[masks[i]], n_bad))
    grid = threshold_grid(np.concatenate(samples_good), np.concatenate(samples_bad))
    good, defect, owner = [], [], []
    for i in range(len(masks)):
        values = _numpy(maps[i])
        good.append(_image_counts(grid, values[~masks[i]], 0, 1)[0])
        if regions:
            labels, count = ndimage.label(masks[i], structure=_EIGHT)
            inside = labels > 0
            defect.append(_image_counts(grid, values[inside], labels[inside] - 1, count))
            owner += [i] * count
        else:
            defect.append(_image_counts(grid, values[masks[i]], 0, 1))
    bins = len(grid) + 1
    stacked = np.concatenate(defect) if defect else np.zeros((0, bins), np.int64)
    return grid, _compact(np.stack(good)), _compact(stacked), np.asarray(owner, np.int32)


def _compact(counts: np.ndarray) -> np.ndarray:
    """The smallest unsigned integer type that holds the counts."""
    return counts.astype(np.min_scalar_type(int(counts.max()) if counts.size else 0))


def _above(counts: np.ndarray) -> np.ndarray:
    """Counts at or above each threshold, highest first, from 0 (nothing flagged) to all."""
    cumulative = np.cumsum(counts[..., ::-1], axis=-1, dtype=np.float64)
    return np.concatenate([np.zeros((*cumulative.shape[:-1], 1)), cumulative], axis=-1)


def _auroc(fp: np.ndarray, tp: np.ndarray) -> np.ndarray:
    """Trapezoids between the curve's points (ties count half), as :func:`viadk8s.metrics.auroc`."""
    twice = ((fp[:, 1:] - fp[:, :-1]) * (tp[:, 1:] + tp[:, :-1])).sum(-1)
    return twice / (2 * fp[:, -1] * tp[:, -1])


def _aupro(fpr: np.ndarray, pro: np.ndarray, limit: float = FPR_LIMIT) -> np.ndarray:
    """Area under ``pro`` over ``fpr`` up to ``limit`` divided by the last FPR integrated, with the
    point at ``limit`` interpolated: anomalib's ``_AUPRO`` on each row."""
    inside = fpr <= limit
    last = inside.sum(-1) - 1  # fpr[:, 0] == 0
    segments = (fpr[:, 1:] - fpr[:, :-1]) * (pro[:, 1:] + pro[:, :-1]) / 2
    area = np.where(inside[:, 1:], segments, 0.0).sum(-1)
    rows = np.arange(len(fpr))
    nxt = np.minimum(last + 1, fpr.shape[1] - 1)
    f1, f2, p1, p2 = fpr[rows, last], fpr[rows, nxt], pro[rows, last], pro[rows, nxt]
    partial = (f1 < limit) & (nxt > last)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_lim = np.where(partial, p1 + (p2 - p1) * (limit - f1) / np.where(partial, f2 - f1, 1), 0.0)
    area += np.where(partial, (limit - f1) * (p1 + p_lim) / 2, 0.0)
    return area / np.where(partial, limit, f1)


def metrics_batch(summary: PixelSummary, weights: np.ndarray) -> np.ndarray:
    """``(3, R)``: pixel AUROC, AUPRO and F1Max (:data:`PIXEL_METRICS` order) of each row of
    ``weights`` ``(R, images)``, how often each image is drawn (all ones: the test set itself)."""
    weights = np.asarray(weights, np.float64)
    bad_per_image = np.zeros((len(summary.images), summary.regions.shape[1]))
    np.add.at(bad_per_image, summary.region_image, summary.regions)
    fp, tp = _above(weights @ summary.good), _above(weights @ bad_per_image)
    if summary.auroc is None:
        auroc = _auroc(fp, tp)
    else:
        _, auroc_good, auroc_bad = summary.auroc
        auroc = _auroc(_above(weights @ auroc_good), _above(weights @ auroc_bad))
    f1 = (2 * tp / (tp + fp + tp[:, -1:])).max(-1)
    overlap = _above(summary.regions) / summary.regions.sum(-1, keepdims=True)  # (regions, points)
    drawn = weights[:, summary.region_image]  # (R, regions)
    with np.errstate(invalid="ignore", divide="ignore"):
        pro = (drawn @ overlap) / drawn.sum(-1, keepdims=True)
        aupro = _aupro(fp / fp[:, -1:], pro)
    return np.stack([auroc, aupro, f1])


def _weights(indices: np.ndarray, images: np.ndarray, n: int) -> np.ndarray:
    """``(R, n)`` draw counts of each image from ``(R, k)`` indices into ``images``."""
    flat = indices.reshape(-1, indices.shape[-1]).astype(np.intp)
    picked = images[flat] + n * np.arange(len(flat))[:, None]
    return np.bincount(picked.ravel(), minlength=n * len(flat)).reshape(len(flat), n)


def _strata(summary: PixelSummary) -> tuple[np.ndarray, np.ndarray]:
    defective = summary.defective
    good, bad = np.flatnonzero(~defective), np.flatnonzero(defective)
    if not len(good) or not len(bad):
        raise SpecError("a pixel interval needs images with and without defect pixels")
    return good, bad


def distribution(summary: PixelSummary, resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """``(3, resamples)`` pixel metrics of test sets resampled over images, images with and without
    defect pixels apart (as :func:`viadk8s.stats.distribution` resamples good and bad images)."""
    return _image_bootstrap(summary, resamples, 0.95, seed).bootstrap_distribution


def _image_bootstrap(summary: PixelSummary, resamples: int, confidence: float, seed: int):  # noqa: ANN202
    good, bad = _strata(summary)
    n = len(summary.images)

    def statistic(gi: np.ndarray, bi: np.ndarray, axis: int = -1) -> np.ndarray:
        lead = gi.shape[:-1]
        weights = _weights(gi, good, n) + _weights(bi, bad, n)
        return metrics_batch(summary, weights).reshape(len(PIXEL_METRICS), *lead)

    return _bootstrap((np.arange(len(good)), np.arange(len(bad))), statistic, resamples, confidence, seed)


def intervals(summary: PixelSummary, resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict[str, list[float]]:
    """``{metric: [low, high]}`` percentile intervals of the pixel metrics."""
    values = distribution(summary, resamples, seed)
    return {m: list(percentile_interval(v, confidence)) for m, v in zip(PIXEL_METRICS, values, strict=True)}


def paired_difference(
    a: PixelSummary, b: PixelSummary, metric: str, resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Difference:
    """``metric(a) - metric(b)`` with a paired bootstrap over the same test images (matched by name);
    images without defect pixels and with them are resampled apart."""
    row = PIXEL_METRICS.index(metric)
    if set(a.images) != set(b.images) or len(set(a.images)) != len(a.images):
        raise SpecError("the two runs were tested on different images; only runs on the same test set pair")
    order_b = pd.Index(b.images).get_indexer(a.images)
    if not (a.defective == b.defective[order_b]).all():
        raise SpecError("the two runs' masks differ on the same test images; only runs on the same test set pair")
    good, bad = _strata(a)
    n = len(a.images)

    def difference(gi: np.ndarray, bi: np.ndarray, axis: int = -1) -> np.ndarray:
        weights = _weights(gi, good, n) + _weights(bi, bad, n)
        found = metrics_batch(a, weights)[row] - metrics_batch(b, weights[:, np.argsort(order_b)])[row]
        return found.reshape(gi.shape[:-1])

    low, high = _bootstrap(
        (np.arange(len(good)), np.arange(len(bad))), difference, resamples, confidence, seed
    ).confidence_interval
    point_a, point_b = a.metrics()[metric], b.metrics()[metric]
    return Difference(metric, point_a, point_b, float(low), float(high), len(good), len(bad))


def read_summary(store: Store, result: RunResult) -> PixelSummary | None:
    """A run's stored summary; ``None`` where it has none (no masks, or written before summaries)."""
    try:
        return PixelSummary.from_bytes(store.read_bytes(f"{run_prefix(result.spec)}/{PIXEL_SUMMARY}"))
    except FileNotFoundError:
        return None


def load_summaries(store: Store, results: Sequence[RunResult]) -> dict[str, PixelSummary]:
    """Each pixel-metric run's summary by run key (read concurrently); runs without one are left out."""

    def read(result: RunResult) -> PixelSummary | None:
        try:
            return read_summary(store, result)
        except ValueError as err:
            log.warning("warning: run %s: %s is unreadable (%s); no pixel intervals for it", result.run_key, PIXEL_SUMMARY, err)
            return None

    pixel = [r for r in results if r.data.pixel_masks]
    with ThreadPoolExecutor(max_workers=16) as pool:
        found = dict(zip((r.run_key for r in pixel), pool.map(read, pixel), strict=True))
    return {key: summary for key, summary in found.items() if summary is not None}

"""The protocol's metrics, computed once from the predictions a run keeps, and checked again.

Why not anomalib's test metrics: its AUROC and F1Max are torchmetrics' binary curves, which apply a
sigmoid to every *batch* whose scores leave [0, 1]. Raw scores (the protocol's) that straddle 1.0
are therefore scored partly raw and partly squashed, depending on batch boundaries; and scores
above ~17 all squash to exactly 1.0 in float32, a tie. Here every metric sees the whole test set
at once, unchanged: exact curves from one sort (integer counts, float64 at the end).

:func:`image_metrics` and :func:`pixel_metrics` are what the worker reports;
:func:`recompute_image_metrics` is an independent computation (scikit-learn and numpy) from the
``scores.csv`` a run stores, which the worker runs before committing a result (:func:`verify`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from viadk8s.catalog import IMAGE_METRICS
from viadk8s.errors import Viadk8sError

if TYPE_CHECKING:  # pixel_summary imports stats, which imports this module
    from viadk8s.pixel_summary import PixelSummary

PG_PB_RATE = 0.02  # the paper's PG2 / PB2
#: The name of a batch attribute a model may set beside ``anomaly_map``: a second ``(B, H, W)`` map
#: that gives pixel AUROC alone (AUPRO and F1Max stay on ``anomaly_map``), for a model whose official
#: evaluation scores pixel AUROC on another map (MSFlow's addition map).
PIXEL_AUROC_MAP = "pixel_auroc_map"
TOLERANCE = 1e-6  # reported vs recomputed: float32 scores, float64 arithmetic, different algorithms


class MetricMismatch(Viadk8sError):
    """A reported metric differs from its recomputation from ``scores.csv``: never store it (exit 1)."""


def _counts(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cumulative true/false positives at each distinct threshold, highest score first."""
    scores, labels = scores.reshape(-1), labels.reshape(-1).to(torch.int64)
    order = torch.argsort(scores, descending=True, stable=True)
    ranked = scores[order]
    tp = torch.cumsum(labels[order], 0)
    fp = torch.arange(1, len(ranked) + 1, device=ranked.device) - tp
    last = torch.ones_like(ranked, dtype=torch.bool)  # the last position of each run of tied scores
    last[:-1] = ranked[:-1] != ranked[1:]
    return tp[last], fp[last]


def _both_classes(labels: torch.Tensor, what: str) -> tuple[int, int]:
    positives = int(labels.sum())
    negatives = labels.numel() - positives
    if positives == 0 or negatives == 0:
        raise ValueError(f"{what} needs both classes; got {positives} positive and {negatives} negative")
    return positives, negatives


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve (ties count half), exact: integer trapezoids over one sort."""
    positives, negatives = _both_classes(labels, "AUROC")
    tp, fp = _counts(scores, labels)
    zero = tp.new_zeros(1)
    tp, fp = torch.cat([zero, tp]), torch.cat([zero, fp])
    twice_area = int(((fp[1:] - fp[:-1]) * (tp[1:] + tp[:-1])).sum())
    return twice_area / (2 * positives * negatives)


def f1_max(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """The best F1 over all thresholds (F1 = 2TP / (TP + FP + P))."""
    positives, _ = _both_classes(labels, "F1Max")
    tp, fp = _counts(scores, labels)
    return float((2 * tp.double() / (tp + fp + positives).double()).max())


def presorted_good(scores: torch.Tensor, labels: torch.Tensor, fnr: float = PG_PB_RATE) -> float:
    """PGn: share of good images below the threshold that misses ``fnr`` of the bad ones."""
    scores, labels = scores.double().reshape(-1), labels.reshape(-1).bool()
    threshold = torch.quantile(scores[labels], fnr)
    return float((scores[~labels] < threshold).double().mean())


def presorted_bad(scores: torch.Tensor, labels: torch.Tensor, fpr: float = PG_PB_RATE) -> float:
    """PBn: share of bad images above the threshold that rejects ``fpr`` of the good ones."""
    scores, labels = scores.double().reshape(-1), labels.reshape(-1).bool()
    threshold = torch.quantile(scores[~labels], 1 - fpr)
    return float((scores[labels] > threshold).double().mean())


def image_metrics(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Image AUROC, F1Max, PG2 and PB2 of the test set's raw scores (:data:`IMAGE_METRICS`)."""
    computed = (auroc, f1_max, presorted_good, presorted_bad)
    return {name: compute(scores, labels) for name, compute in zip(IMAGE_METRICS, computed, strict=True)}


def aupro(maps: torch.Tensor, masks: torch.Tensor, fpr_limit: float = 0.3) -> float:
    """Per-region overlap up to ``fpr_limit``, normalised (anomalib's exact, sort-based AUPRO)."""
    from anomalib.metrics.aupro import _AUPRO  # the one heavy import, only where pixel metrics exist

    metric = _AUPRO(fpr_limit=fpr_limit)
    metric.update(maps.float(), masks.to(torch.uint8))
    return float(metric.compute())


def pixel_metrics(maps: torch.Tensor, masks: torch.Tensor, auroc_maps: torch.Tensor | None = None) -> dict[str, float]:
    """Pixel AUROC, AUPRO and F1Max of whole anomaly maps ``(N, H, W)`` against binary masks;
    ``auroc_maps``, where a model gives them (:data:`PIXEL_AUROC_MAP`), replace ``maps`` for AUROC."""
    auroc_maps = maps if auroc_maps is None else auroc_maps
    for name, found in (("anomaly maps", maps), ("pixel-AUROC maps", auroc_maps)):
        if found.shape != masks.shape:
            raise ValueError(f"{name} {tuple(found.shape)} and masks {tuple(masks.shape)} differ in shape")
    masks = masks.bool()
    return {"pixel_AUROC": auroc(auroc_maps, masks), "pixel_AUPRO": aupro(maps, masks), "pixel_F1Max": f1_max(maps, masks)}


def recompute_image_metrics(scores: pd.DataFrame) -> dict[str, float]:
    """The image metrics again, from a ``scores.csv`` frame, with scikit-learn and numpy only."""
    from sklearn.metrics import precision_recall_curve, roc_auc_score

    y = scores["label"].to_numpy().astype(bool)
    s = scores["score"].to_numpy(dtype=np.float64)
    precision, recall, _ = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    good, bad = s[~y], s[y]
    return {
        "image_AUROC": float(roc_auc_score(y, s)),
        "image_F1Max": float(f1.max()),
        "image_PG2": float(np.mean(good < np.quantile(bad, PG_PB_RATE))),
        "image_PB2": float(np.mean(bad > np.quantile(good, 1 - PG_PB_RATE))),
    }


def disagreements(reported: Mapping[str, float | None], scores: pd.DataFrame) -> list[str]:
    """Each reported image metric that is not what ``scores`` give, naming both values."""
    again = recompute_image_metrics(scores)
    return [
        f"{name} reported {reported.get(name)!r}, recomputed from scores.csv {value!r}"
        for name, value in again.items()
        if reported.get(name) is None or not math.isclose(float(reported[name]), value, abs_tol=TOLERANCE)  # type: ignore[arg-type]
    ]


def verify(reported: Mapping[str, float | None], scores: pd.DataFrame, summary: PixelSummary | None = None) -> None:
    """Raise :class:`MetricMismatch` naming both values if a reported image metric is not what
    ``scores`` give, or a pixel metric not what the pixel ``summary`` gives (within its binning's
    tolerance, :data:`viadk8s.pixel_summary.PIXEL_TOLERANCE`)."""
    wrong = disagreements(reported, scores) + (summary.disagreements(reported) if summary is not None else [])
    if wrong:
        raise MetricMismatch("metrics disagree with the stored scores, result not stored: " + "; ".join(wrong))

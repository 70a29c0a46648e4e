"""The metrics a run reports, against scikit-learn/numpy, on the cases that broke anomalib's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import precision_recall_curve, roc_auc_score

from viadk8s import metrics
from viadk8s.errors import Viadk8sError


def _f1_max(y: np.ndarray, s: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(y, s)
    return float(np.max(2 * precision * recall / np.clip(precision + recall, 1e-12, None)))


@pytest.mark.parametrize(
    "scale",
    [1.0, 1e3, 1e6],  # raw scores around 1 (PatchCore), in the thousands and millions (flows' NLL)
)
@pytest.mark.parametrize("seed", range(5))
def test_image_metrics_equal_sklearn_with_ties_and_any_range(seed: int, scale: float) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    labels[:2] = (0, 1)
    scores = (rng.normal(0.8, 0.4, 60) + 0.5 * labels).round(1) * scale  # rounding makes ties
    found = metrics.image_metrics(torch.tensor(scores, dtype=torch.float32), torch.tensor(labels))
    s32 = scores.astype(np.float32).astype(np.float64)  # what a float32 model writes to scores.csv
    assert found["image_AUROC"] == pytest.approx(roc_auc_score(labels, s32), abs=1e-12)
    assert found["image_F1Max"] == pytest.approx(_f1_max(labels, s32), abs=1e-12)
    good, bad = s32[labels == 0], s32[labels == 1]
    assert found["image_PG2"] == pytest.approx(np.mean(good < np.quantile(bad, 0.02)))
    assert found["image_PB2"] == pytest.approx(np.mean(bad > np.quantile(good, 0.98)))
    assert found == pytest.approx(metrics.recompute_image_metrics(pd.DataFrame({"label": labels, "score": s32})))


def test_scores_straddling_one_in_batches_are_not_squashed() -> None:
    """The bug anomalib's AUROC had: a sigmoid on each batch whose scores leave [0, 1]. Good images
    score 0.5-0.9, bad ones 0.95-1.6, batched so that one batch stays inside [0, 1]: raw, they
    separate perfectly."""
    good = torch.linspace(0.5, 0.9, 8)
    bad = torch.tensor([0.95, 0.97, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6])
    scores, labels = torch.cat([good, bad]), torch.cat([torch.zeros(8), torch.ones(8)])
    assert metrics.auroc(scores, labels) == 1.0 and metrics.f1_max(scores, labels) == 1.0
    assert metrics.presorted_good(scores, labels) == 1.0 and metrics.presorted_bad(scores, labels) == 1.0
    from torchmetrics.classification import BinaryAUROC  # under anomalib's AUROC: the root cause

    batched = BinaryAUROC()
    batched.update(torch.cat([good, bad[:2]]), labels[:10].int())  # inside [0, 1]: kept raw
    batched.update(bad[2:], labels[10:].int())  # beyond 1: a sigmoid squashes them below the good 0.9
    assert float(batched.compute()) < 1.0


def test_huge_scores_do_not_tie() -> None:
    """float32 sigmoid of scores above ~17 is exactly 1.0: exact sorting keeps them apart."""
    scores = torch.tensor([100.0, 101.0, 102.0, 103.0, 104.0, 105.0])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    assert torch.sigmoid(scores).unique().numel() == 1
    assert metrics.auroc(scores, labels) == 1.0


def test_pixel_metrics_equal_sklearn_on_whole_maps() -> None:
    rng = np.random.default_rng(3)
    masks = np.zeros((6, 16, 16), dtype=bool)
    masks[3:, 4:9, 5:11] = True
    masks[4, 12:15, 1:3] = True
    maps = rng.normal(0, 1, masks.shape) + 2.5 * masks + 3.0  # raw map values above 1
    found = metrics.pixel_metrics(torch.tensor(maps, dtype=torch.float32), torch.tensor(masks))
    m32 = maps.astype(np.float32).astype(np.float64).ravel()
    assert found["pixel_AUROC"] == pytest.approx(roc_auc_score(masks.ravel(), m32), abs=1e-12)
    assert found["pixel_F1Max"] == pytest.approx(_f1_max(masks.ravel(), m32), abs=1e-12)
    assert 0.5 < found["pixel_AUPRO"] <= 1.0
    perfect = metrics.pixel_metrics(torch.tensor(masks, dtype=torch.float32), torch.tensor(masks))
    assert perfect["pixel_AUPRO"] == pytest.approx(1.0) and perfect["pixel_AUROC"] == 1.0


def test_one_class_only_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="needs both classes"):
        metrics.auroc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1]))


def test_verify_refuses_a_number_the_scores_do_not_give() -> None:
    scores = pd.DataFrame({"label": [0, 0, 1, 1], "score": [0.1, 0.4, 0.35, 0.8]})
    right = metrics.recompute_image_metrics(scores)
    metrics.verify(right, scores)  # agrees: no error
    with pytest.raises(metrics.MetricMismatch, match=r"image_AUROC reported 0\.9.*recomputed from scores.csv 0\.75") as err:
        metrics.verify({**right, "image_AUROC": 0.9}, scores)
    assert isinstance(err.value, Viadk8sError) and err.value.exit_code == 1

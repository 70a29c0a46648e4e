"""Independent checks of what a run reports: scikit-learn and numpy on the stored scores.csv."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import precision_recall_curve, roc_auc_score


def presorted(scores: pd.DataFrame, n: float = 2) -> tuple[float, float]:
    """PG_n and PB_n exactly as protocol.md defines them."""
    good = scores.loc[scores.label == 0, "score"].to_numpy()
    bad = scores.loc[scores.label == 1, "score"].to_numpy()
    pg = float(np.mean(good < np.quantile(bad, n / 100)))
    pb = float(np.mean(bad > np.quantile(good, 1 - n / 100)))
    return pg, pb


def assert_image_metrics_match_scores(result_path: Path) -> dict:
    """The result's image metrics equal their recomputation from the run's own scores.csv."""
    result = json.loads(result_path.read_text())
    scores = pd.read_csv(result_path.parent / "scores.csv")
    metrics = result["metrics"]
    assert metrics["image_AUROC"] == pytest.approx(roc_auc_score(scores.label, scores.score), abs=1e-6)
    precision, recall, _ = precision_recall_curve(scores.label, scores.score)
    f1 = np.max(2 * precision * recall / np.clip(precision + recall, 1e-12, None))
    assert metrics["image_F1Max"] == pytest.approx(f1, abs=1e-6)
    pg, pb = presorted(scores)
    assert (metrics["image_PG2"], metrics["image_PB2"]) == (pytest.approx(pg, abs=1e-9), pytest.approx(pb, abs=1e-9))
    return result

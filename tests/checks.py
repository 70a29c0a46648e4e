"""Independent checks of what a run reports: scikit-learn and numpy on the stored scores.csv."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import precision_recall_curve, roc_auc_score

from viadk8s.results import DataSummary, RunResult, Timings
from viadk8s.spec import RunSpec


def made_up_result(spec: RunSpec, auroc: float = 0.9) -> RunResult:
    """A valid result of ``spec`` with made-up numbers, as a finished run would leave it."""
    return RunResult(
        run_key=spec.run_key,
        spec=spec,
        metrics={"image_AUROC": auroc, "image_F1Max": 0.8, "image_PG2": 0.5, "image_PB2": 0.6},
        timings=Timings(fit_s=1, test_s=1, test_images_per_s=10, peak_memory_mb=100, memory_kind="cpu_rss"),
        data=DataSummary(n_train=10, n_test_good=6, n_test_bad=6, pixel_masks=False),
        epochs=1,
        device="cpu",
        versions={},
        finished_at="2026-11-23T00:00:00+00:00",
    )


def stored_result(spec: RunSpec) -> bytes:
    """The bytes of a valid result.json of ``spec``."""
    return made_up_result(spec).model_dump_json().encode()


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


def run_tiny(cli: Callable[..., CompletedProcess[str]], config: Path, model: str, *flags: str) -> tuple[dict, pd.DataFrame]:
    """One model through ``viadk8s run --experiment evaluation`` on the ``tiny`` dataset (64 px, random
    weights, 2 epochs unless ``flags`` say otherwise): its checked result and its scores."""
    defaults = {"--categories": "tiles", "--seeds": "5", "--image-size": "64", "--weights": "random", "--max-epochs": "2"}
    chosen = dict(zip(flags[::2], flags[1::2], strict=True))
    args = [item for pair in ({**defaults, **chosen}).items() for item in pair]
    done = cli(
        *("run", "--experiment", "evaluation", "--models", model, "--datasets", "tiny", *args, "--config", str(config)),
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (path,) = (Path(yaml.safe_load(config.read_text())["store"]) / "runs" / "evaluation").glob("*/result.json")
    result = assert_image_metrics_match_scores(path)
    assert result["spec"]["model"] == model and result["epochs_run"] == result["epochs"]  # the last epoch was tested
    assert all(value is not None and 0 <= value <= 1 for value in result["metrics"].values()), result["metrics"]
    return result, pd.read_csv(path.parent / "scores.csv")

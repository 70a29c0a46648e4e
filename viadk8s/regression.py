"""Compare a sweep's results with a stored baseline: the nightly benchmark's regression gate.

The baseline is a ``runs.csv`` as ``viadk8s aggregate --out DIR`` writes it (one raw row per run),
kept in the repository or in the object store (``s3://BUCKET/KEY``, e.g. for the chart's nightly
CronJob). Both sides are reduced as the paper's tables are (mean over seeds per
category, then the unweighted mean over a dataset's categories) for each model and setting, and
every metric is compared in points (x100): a drop of more than ``tolerance`` points, or a baseline
value with no current counterpart, is a regression.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from viadk8s.aggregate import runs_frame
from viadk8s.catalog import METRICS
from viadk8s.config import S3Settings
from viadk8s.errors import SpecError, one_of
from viadk8s.results import RunResult
from viadk8s.store import open_store

#: What identifies a compared cell: the model, the dataset and the setting that changes results.
KEYS = ("model", "dataset", "image_size", "weights", "epochs", "variant")


@dataclass(frozen=True)
class Regression:
    model: str
    dataset: str
    setting: str
    metric: str
    baseline: float
    current: float | None

    def __str__(self) -> str:
        where = f"{self.model} on {self.dataset} ({self.setting}) {self.metric}"
        if self.current is None:
            return f"{where}: baseline {self.baseline:.1f}, no result now"
        return f"{where}: {self.baseline:.1f} -> {self.current:.1f} ({self.current - self.baseline:+.1f} points)"


def per_dataset(frame: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Points (x100) per model, dataset and setting: seeds averaged per category, then categories."""
    frame = frame.assign(variant=frame["variant"].astype("string").fillna("").astype(str))
    per_category = frame.groupby([*KEYS, "category"])[list(metrics)].mean()
    return per_category.groupby(list(KEYS))[list(metrics)].mean() * 100


def read_baseline(source: str | Path, s3: S3Settings | None = None) -> pd.DataFrame:
    """A baseline ``runs.csv`` from a path or ``s3://BUCKET/KEY``; a missing file or column is a one-line error."""
    source = str(source)
    path: str | io.BytesIO = source
    try:
        if source.startswith("s3://"):
            folder, _, key = source.rpartition("/")
            settings = s3 or S3Settings()
            path = io.BytesIO(open_store(folder, settings.addressing_style, settings.max_attempts).read_bytes(key))
        frame = pd.read_csv(path, dtype={"category": str, "dataset": str, "model": str, "weights": str, "variant": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise SpecError(f"cannot read baseline {source!r}: {err}") from None
    missing = [c for c in (*KEYS, "category") if c not in frame.columns]
    if missing:
        raise SpecError(
            f"baseline {str(path)!r} lacks columns {', '.join(missing)}; expected the runs.csv of `viadk8s aggregate --out`"
        )
    return frame


def compare(baseline: pd.DataFrame, current: pd.DataFrame, metrics: Sequence[str], tolerance: float) -> list[Regression]:
    """Every (model, dataset, setting, metric) of the baseline that dropped by more than ``tolerance`` points."""
    if tolerance < 0 or not math.isfinite(tolerance):
        raise SpecError(f"tolerance {tolerance} is not allowed; allowed: a finite number of points >= 0")
    for metric in metrics:
        if metric not in METRICS:
            raise one_of("metric", metric, METRICS)
    usable = [m for m in metrics if m in baseline.columns]
    before, now = per_dataset(baseline, usable), per_dataset(current, usable)
    regressions = []
    for key, row in before.iterrows():
        model, dataset, image_size, weights, epochs, variant = key
        setting = ", ".join(p for p in (f"{image_size}px", str(weights), f"epochs={epochs}", str(variant)) if p)
        for metric in usable:
            old = row[metric]
            if pd.isna(old):
                continue
            new = now.loc[key, metric] if key in now.index else float("nan")
            if pd.isna(new) or new < old - tolerance:
                regressions.append(Regression(model, dataset, setting, metric, float(old), None if pd.isna(new) else float(new)))
    return regressions


def check(
    baseline: str | Path, results: Sequence[RunResult], metrics: Sequence[str], tolerance: float, s3: S3Settings | None = None
) -> list[Regression]:
    """The regressions of ``results`` against a baseline ``runs.csv`` (empty: no regression)."""
    if not results:
        raise SpecError("no finished run to compare with the baseline")
    return compare(read_baseline(baseline, s3), runs_frame(results), metrics, tolerance)

"""How sure a number is: bootstrap intervals per run, paired differences, rank tests, per defect.

A test set of 16 bad images gives an AUROC whose 95 % interval spans several points; these
functions say so. Resampling is scipy's :func:`scipy.stats.bootstrap` (percentile intervals); the
good and the bad images are resampled apart (stratified by label: every resample keeps the test
set's class sizes, so every metric stays defined). The metrics are computed for all resamples at
once (:func:`image_metrics_batch`), so 1,000 resamples cost milliseconds, not a loop of 1,000 calls.
Everything here is a pure function of a run's ``scores.csv`` and a seed: recomputable from the store.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from viadk8s.errors import SpecError
from viadk8s.metrics import IMAGE_METRICS, PG_PB_RATE

METHOD = "percentile bootstrap over test images, stratified by label (scipy.stats.bootstrap)"
BATCH = 250  # resamples evaluated at once: bounds memory to BATCH x test images per array


def image_metrics_batch(good: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """AUROC, F1Max, PG2 and PB2 (rows, in :data:`~viadk8s.metrics.IMAGE_METRICS` order) of each
    row of ``good`` ``(..., n_good)`` against the same row of ``bad`` ``(..., n_bad)``.

    Same definitions as :mod:`viadk8s.metrics` (ties count half in AUROC; F1 only at the last of
    tied scores; linear quantiles), vectorised over the leading axes."""
    n_good, n_bad = good.shape[-1], bad.shape[-1]
    both = np.concatenate([bad, good], axis=-1).astype(np.float64)
    ranks = sps.rankdata(both, axis=-1)  # average ranks: a tie counts half
    auroc = (ranks[..., :n_bad].sum(-1) - n_bad * (n_bad + 1) / 2) / (n_bad * n_good)
    labels = np.r_[np.ones(n_bad), np.zeros(n_good)]
    order = np.argsort(-both, axis=-1, kind="stable")
    ranked = np.take_along_axis(both, order, axis=-1)
    tp = np.cumsum(labels[order], axis=-1)
    flagged = np.arange(1, both.shape[-1] + 1)  # tp + fp at each position
    last = np.ones_like(ranked, dtype=bool)
    last[..., :-1] = ranked[..., :-1] != ranked[..., 1:]
    f1 = np.where(last, 2 * tp / (flagged + n_bad), 0.0).max(-1)
    pg = (good < np.quantile(bad, PG_PB_RATE, axis=-1, keepdims=True)).mean(-1)
    pb = (bad > np.quantile(good, 1 - PG_PB_RATE, axis=-1, keepdims=True)).mean(-1)
    return np.stack([auroc, f1, pg, pb])


def _split(scores: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    labels = scores["label"].to_numpy().astype(bool)
    values = scores["score"].to_numpy(dtype=np.float64)
    if labels.all() or not labels.any():
        raise SpecError("an interval needs good and bad test images; the scores have only one class")
    return values[~labels], values[labels]


def _bootstrap(samples: tuple[np.ndarray, ...], statistic, resamples: int, confidence: float, seed: int):  # noqa: ANN001, ANN202
    with warnings.catch_warnings():  # a degenerate distribution (AUROC 1.0 every time) is a valid answer
        warnings.simplefilter("ignore", sps.DegenerateDataWarning)
        return sps.bootstrap(
            samples,
            statistic,
            n_resamples=resamples,
            confidence_level=confidence,
            method="percentile",
            vectorized=True,
            batch=BATCH,
            random_state=np.random.default_rng(seed),
        )


def _image_bootstrap(scores: pd.DataFrame, resamples: int, confidence: float, seed: int):  # noqa: ANN202
    good, bad = _split(scores)
    return _bootstrap((good, bad), lambda g, b, axis=-1: image_metrics_batch(g, b), resamples, confidence, seed)


def intervals(scores: pd.DataFrame, resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict[str, list[float]]:
    """``{metric: [low, high]}`` for every image metric of one run's ``scores.csv`` frame."""
    low, high = _image_bootstrap(scores, resamples, confidence, seed).confidence_interval
    return {m: [float(lo), float(hi)] for m, lo, hi in zip(IMAGE_METRICS, low, high, strict=True)}


def distribution(scores: pd.DataFrame, resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """The resampled image metrics behind :func:`intervals` (same seed, same resamples), shape
    ``(metrics, resamples)``: averaged over runs, they give the interval of a mean over categories."""
    return _image_bootstrap(scores, resamples, 0.95, seed).bootstrap_distribution


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """What scipy's percentile method reports for a bootstrap distribution ``values``."""
    tail = (1 - confidence) / 2
    low, high = np.percentile(values, [100 * tail, 100 * (1 - tail)])
    return float(low), float(high)


@dataclass(frozen=True)
class Estimate:
    """One cell's number (0..1): the mean over seeds, their spread, and with bootstrap replicates
    the percentile interval of that mean."""

    mean: float
    std: float
    seeds: int
    interval: tuple[float, float] | None


def estimates(values: pd.DataFrame, by: list[str], metrics: list[str], confidence: float | None = None) -> pd.DataFrame:
    """Per group of ``by`` and metric, one row: ``mean``, ``std`` and count (``seeds``) of the
    point rows (``resample`` < 0, one per seed), and with ``confidence`` the percentile interval
    (``low``, ``high``) of the replicates' means (rows with ``resample`` >= 0). Vectorised over all
    groups; NaN (a metric a run lacks) is left out as :meth:`pandas.DataFrame.mean` does."""
    values = values.astype(dict.fromkeys(metrics, float))  # a metric no run has is a column of None
    replicated = "resample" in values
    point = values[values["resample"] < 0] if replicated else values
    grouped = point.groupby(by, sort=False)[metrics]
    parts = {"mean": grouped.mean(), "std": grouped.std(ddof=0), "seeds": grouped.count()}
    if confidence is not None and replicated:
        replicas = values[values["resample"] >= 0].groupby([*by, "resample"], sort=False)[metrics].mean()
        tail = (1 - confidence) / 2
        spread = replicas.groupby(level=list(range(len(by))), sort=False)
        parts |= {"low": spread.quantile(tail), "high": spread.quantile(1 - tail)}  # what percentile_interval gives
    long = pd.concat({k: v.stack(future_stack=True) for k, v in parts.items()}, axis=1)
    long.index = long.index.set_names([*by, "metric"])
    long = long[long["seeds"] > 0].reset_index()
    for column in ("low", "high"):
        if column not in long:
            long[column] = np.nan
    return long


def estimate(values: pd.DataFrame, metric: str, confidence: float | None = None) -> Estimate | None:
    """:func:`estimates` of all ``values`` as one group; ``None`` when no seed has ``metric``."""
    found = estimates(values.assign(_all=0), ["_all"], [metric], confidence)
    if found.empty:
        return None
    row = found.iloc[0]
    interval = None if np.isnan(row["low"]) else (float(row["low"]), float(row["high"]))
    return Estimate(float(row["mean"]), float(row["std"]), int(row["seeds"]), interval)


@dataclass(frozen=True)
class Difference:
    """Model A minus model B on the same test images: the point estimate, its interval, a verdict."""

    metric: str
    a: float
    b: float
    low: float
    high: float
    n_good: int
    n_bad: int

    @property
    def estimate(self) -> float:
        return self.a - self.b

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "no detectable difference"


def paired_difference(
    a: pd.DataFrame, b: pd.DataFrame, metric: str = "image_AUROC", resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Difference:
    """Paired, stratified bootstrap of ``metric(a) - metric(b)``: each resample draws the same
    test images for both models. ``a`` and ``b`` are ``scores.csv`` frames of the same test set
    (matched on ``image_path``); a different test set is a :class:`SpecError`."""
    if metric not in IMAGE_METRICS:
        raise SpecError(f"metric {metric!r} cannot be compared per image; use one of {', '.join(IMAGE_METRICS)}")
    row = IMAGE_METRICS.index(metric)
    found = paired_bootstrap(a, b, resamples, confidence, seed)
    low, high = found.intervals[row]
    return Difference(metric, float(found.a[row]), float(found.b[row]), float(low), float(high), found.n_good, found.n_bad)


@dataclass(frozen=True)
class PairedBootstrap:
    """Every image metric of two runs on one test set (rows in :data:`IMAGE_METRICS` order): their
    point values, and the bootstrap distribution and intervals of the difference ``a - b``."""

    a: np.ndarray  # (metrics,)
    b: np.ndarray
    distribution: np.ndarray  # (metrics, resamples)
    intervals: np.ndarray  # (metrics, 2)
    n_good: int
    n_bad: int


def paired_bootstrap(
    a: pd.DataFrame, b: pd.DataFrame, resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> PairedBootstrap:
    """The bootstrap behind :func:`paired_difference`, for all image metrics at once (the same
    resampled images for each: one bootstrap serves every metric)."""
    left, right = a.set_index("image_path"), b.set_index("image_path")
    if set(left.index) != set(right.index) or left.index.has_duplicates:
        only = sorted(set(left.index) ^ set(right.index))[:3]
        raise SpecError(f"the two runs were tested on different images (e.g. {only}); only runs on the same test set pair")
    right = right.loc[left.index]
    if not (left["label"].to_numpy() == right["label"].to_numpy()).all():
        raise SpecError("the two runs label the same test images differently; only runs on the same test set pair")
    labels = left["label"].to_numpy().astype(bool)
    sa, sb = left["score"].to_numpy(np.float64), right["score"].to_numpy(np.float64)
    good_a, bad_a, good_b, bad_b = sa[~labels], sa[labels], sb[~labels], sb[labels]

    def difference(gi: np.ndarray, bi: np.ndarray, axis: int = -1) -> np.ndarray:
        gi, bi = gi.astype(np.intp), bi.astype(np.intp)
        return image_metrics_batch(good_a[gi], bad_a[bi]) - image_metrics_batch(good_b[gi], bad_b[bi])

    indices = (np.arange(len(good_a)), np.arange(len(bad_a)))  # resampling indices pairs the models
    found = _bootstrap(indices, difference, resamples, confidence, seed)
    intervals = np.column_stack(found.confidence_interval)
    point_a, point_b = image_metrics_batch(good_a, bad_a), image_metrics_batch(good_b, bad_b)
    return PairedBootstrap(point_a, point_b, found.bootstrap_distribution, intervals, len(good_a), len(bad_a))


def mean_difference(
    found: Sequence[PairedBootstrap], weights: Sequence[float], metric: str, confidence: float = 0.95
) -> Difference:
    """The weighted mean over test sets (categories) of ``metric(a) - metric(b)`` from each one's
    :func:`paired_bootstrap`, taken resample by resample: the interval is that of the mean, as a
    table's "D" is."""
    row = IMAGE_METRICS.index(metric)
    w = np.asarray(weights, dtype=np.float64)
    low, high = percentile_interval(w @ np.stack([f.distribution[row] for f in found]), confidence)
    point_a, point_b = (float(w @ np.array([getattr(f, side)[row] for f in found])) for side in ("a", "b"))
    return Difference(metric, point_a, point_b, low, high, sum(f.n_good for f in found), sum(f.n_bad for f in found))


@dataclass(frozen=True)
class RankTest:
    """Friedman's test over categories (blocks) and models, with Nemenyi's post-hoc p-values."""

    statistic: float
    p_value: float
    mean_ranks: pd.Series  # rank 1 = best, per model
    pairwise_p: pd.DataFrame  # Nemenyi p-values, models x models
    critical_difference: float
    n_blocks: int


def rank_test(table: pd.DataFrame, alpha: float = 0.05) -> RankTest:
    """``table``: one row per category, one column per model, higher is better."""
    import scikit_posthocs as sp

    table = table.dropna()
    n, k = table.shape
    if k < 3 or n < 2:
        raise SpecError(f"a rank test needs at least 3 models and 2 categories with results; got {k} models, {n} categories")
    statistic, p_value = sps.friedmanchisquare(*(table[c].to_numpy() for c in table.columns))
    ranks = table.rank(axis=1, ascending=False).mean()
    pairwise = sp.posthoc_nemenyi_friedman(table.to_numpy())
    pairwise.index = pairwise.columns = table.columns
    q_alpha = sps.studentized_range.ppf(1 - alpha, k, np.inf) / np.sqrt(2)
    cd = float(q_alpha * np.sqrt(k * (k + 1) / (6 * n)))
    return RankTest(float(statistic), float(p_value), ranks.sort_values(), pairwise, cd, n)


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold rule: ``fnr=0.02`` misses 2 % of the bad images (PG2's), ``fpr=0.01`` rejects
    1 % of the good ones (PB2's at 2 %)."""

    kind: str  # "fnr" or "fpr"
    rate: float

    @classmethod
    def parse(cls, text: str) -> OperatingPoint:
        match = re.fullmatch(r"\s*(fnr|fpr)\s*=\s*(\d*\.?\d+)\s*", text)
        rate = float(match.group(2)) if match else -1.0
        if not 0 <= rate < 1:
            raise SpecError(f"operating point {text!r} is not valid; use fnr=R or fpr=R with 0 <= R < 1 (e.g. fnr=0.02)")
        return cls(match.group(1), rate)

    def __str__(self) -> str:
        return f"{self.kind}={self.rate:g}"

    def threshold(self, good: np.ndarray, bad: np.ndarray) -> float:
        return float(np.quantile(bad, self.rate) if self.kind == "fnr" else np.quantile(good, 1 - self.rate))

    def flagged(self, values: np.ndarray, threshold: float) -> np.ndarray:
        """Rejected as bad: PGn passes a good image strictly below its threshold, PBn catches a
        bad one strictly above."""
        return values >= threshold if self.kind == "fnr" else values > threshold


DEFAULT_POINTS = (OperatingPoint("fnr", PG_PB_RATE), OperatingPoint("fpr", PG_PB_RATE))


def defect_breakdown(scores: pd.DataFrame, points: tuple[OperatingPoint, ...] = DEFAULT_POINTS) -> pd.DataFrame:
    """One row per defect type of one run: its image count, its AUROC against all good images,
    and the share of its images rejected at each operating point (set on the whole test set): a
    defect type's recall, and for the ``good`` row the false-alarm rate."""
    if "defect" not in scores:
        raise SpecError("scores.csv has no defect column (written by viadk8s < protocol 2 report support); re-run to get one")
    good, bad = _split(scores)
    thresholds = {p: p.threshold(good, bad) for p in points}
    rows = []
    groups = dict(list(scores.groupby("defect", sort=True)))
    for defect in sorted(groups, key=lambda d: (d != "good", d)):  # good first: its row is the false alarms
        part = groups[defect]
        values = part["score"].to_numpy(np.float64)
        is_good = bool((part["label"] == 0).all())
        row = {"defect": defect, "images": len(values)}
        row["AUROC"] = np.nan if is_good else float(image_metrics_batch(good, values)[0])
        for point, threshold in thresholds.items():
            row[f"rejected@{point}"] = float(point.flagged(values, threshold).mean())
        rows.append(row)
    return pd.DataFrame(rows)

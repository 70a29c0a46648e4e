"""From committed run results to the paper's tables and plots.

Aggregation follows protocol.md: per category, then the unweighted mean per dataset, then the
unweighted mean over the datasets of a table ("D"); with several seeds, mean ± std over seeds
(of the dataset means). Values are reported x100 with one decimal, metrics joined by "/"; a metric
a dataset cannot have (no masks) is "–".

An experiment with an axis (input size, contamination, drift, validation strategy) gets the shape
of the supplement's tables 13–15: rows method × dataset, one column per axis value; and a summary
(tables 11/12): rows method, the mean "D" per axis value, datasets reported apart (AeBAD) beside it.

:func:`summarise` is the one entry for ``viadk8s aggregate`` and ``viadk8s report``: it builds the
runs frame once and computes every table, estimate and plot from it.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from viadk8s import catalog, pixel_summary, stats  # noqa: E402
from viadk8s.catalog import IMAGE_METRICS, abbrev  # noqa: E402
from viadk8s.errors import SpecError, one_of  # noqa: E402
from viadk8s.results import RunResult  # noqa: E402
from viadk8s.spec import COLUMNS, column  # noqa: E402
from viadk8s.stats import estimates  # noqa: E402

FORMATS = {"md": "md", "csv": "csv", "latex": "tex"}
MISSING = "–"
log = logging.getLogger(__name__)
MEAN_COLUMN = "D"
#: Fields that tell two methods' settings apart when they vary within a sweep (the axis excepted):
#: the spec's (:data:`viadk8s.spec.COLUMNS`), and the epochs a result ran (capped by ``max_epochs``).
IDENTITY = (*(f for f, c in COLUMNS.items() if c.identity), "epochs")


def _reported_dataset(dataset: str, category: str) -> str:
    """A real-drift subset (AeBAD's) is reported as ``<dataset>+dr``, apart from its no-drift part."""
    entry = catalog.datasets().get(dataset)
    return f"{dataset}+dr" if entry and category in entry.drift_categories else dataset


def runs_frame(results: Sequence[RunResult]) -> pd.DataFrame:
    """One row per run: its identity, its setting and its raw metrics (0..1)."""
    rows = []
    for r in results:
        s = r.spec
        rows.append(
            {
                "run_key": r.run_key,
                "model": s.model,
                "dataset": _reported_dataset(s.dataset, s.category),
                "category": s.category,
                "seed": s.seed,
                "image_size": s.image_size,
                "weights": s.weights,
                "epochs": r.epochs,
                "variant": s.variant.label(),
                **s.variant.model_dump(),
                **{m: r.metrics.get(m) for m in catalog.METRICS},
                "tested_epoch": r.tested_epoch,
                "fit_s": r.timings.fit_s,
                "test_s": r.timings.test_s,
                "test_images_per_s": r.timings.test_images_per_s,
                "peak_memory_mb": r.timings.peak_memory_mb,
            }
        )
    return pd.DataFrame(rows)


def resampled_frame(
    results: Sequence[RunResult],
    scores: dict[str, pd.DataFrame],
    default_resamples: int = 1000,
    summaries: dict[str, pixel_summary.PixelSummary] | None = None,
) -> pd.DataFrame:
    """Each run's bootstrap distribution of its image metrics, one row per (run, resample),
    recomputed from its scores.csv with the settings its result stored (the run's seed otherwise);
    with its pixel summary in ``summaries`` (:func:`viadk8s.pixel_summary.load_summaries`), its
    pixel metrics' too, resampled over images with the same settings."""
    parts = []
    for result in results:
        if result.run_key not in scores:
            continue
        kept = result.uncertainty
        resamples, seed = (kept.resamples, kept.seed) if kept else (default_resamples, result.spec.seed)
        values = stats.distribution(scores[result.run_key], resamples, seed)
        replicas = pd.DataFrame(values.T, columns=list(IMAGE_METRICS))
        if summaries and result.run_key in summaries:
            replicas[list(pixel_summary.PIXEL_METRICS)] = pixel_summary.distribution(summaries[result.run_key], resamples, seed).T
        parts.append(replicas.assign(run_key=result.run_key, resample=range(resamples)))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["run_key", "resample", *IMAGE_METRICS])


def with_methods(frame: pd.DataFrame, axis: str | None) -> pd.DataFrame:
    # a setting names a method only where it varies for one model (epochs differ between models by protocol)
    varying = [f for f in IDENTITY if f != axis and frame.groupby("model")[f].nunique().max() > 1]
    names = {k: m.name for k, m in catalog.models().items()}

    def label(row: pd.Series) -> str:
        extra = [f"{f}={row[f]}" for f in varying]
        return f"{names[row['model']]} ({', '.join(extra)})" if extra else names[row["model"]]

    order = {k: i for i, k in enumerate(catalog.models())}
    frame = frame.assign(method=frame.apply(label, axis=1), _order=frame["model"].map(order))
    return frame.sort_values(["_order", "method"], kind="stable")


def _text(row: Any) -> str:
    """'95.1', '95.1±0.3' with several seeds, then ' [93.0, 97.2]' with an interval."""
    text = f"{100 * row.mean:.1f}±{100 * row.std:.1f}" if row.seeds > 1 else f"{100 * row.mean:.1f}"
    return text + (f" [{100 * row.low:.1f}, {100 * row.high:.1f}]" if not np.isnan(row.low) else "")


def _pivot(
    per_seed: pd.DataFrame,
    rows: list[str],
    column: str,
    metrics: Sequence[str],
    columns: list[Any],
    confidence: float | None = None,
) -> pd.DataFrame:
    """Cells '95.1/76.9' (metrics joined by "/", :func:`_text` each) of ``rows`` x ``column``; with
    ``confidence`` (rows with ``resample`` >= 0 hold bootstrap replicates) each with its interval."""
    by = [*rows, column]
    found = estimates(per_seed, by, list(metrics), confidence)
    texts = dict(zip(zip(*(found[c] for c in [*by, "metric"]), strict=True), map(_text, found.itertuples()), strict=True))
    groups = list(per_seed[by].drop_duplicates().itertuples(index=False, name=None))
    cells = pd.Series(
        ["/".join(texts.get((*g, m), MISSING) for m in metrics) for g in groups],
        index=pd.MultiIndex.from_tuples(groups, names=by),
    )
    table = cells.unstack(column).reindex(columns=columns).fillna(MISSING)
    table.columns.name = None
    return table


def _check(metrics: Sequence[str]) -> None:
    for metric in metrics:
        if metric not in catalog.METRICS:
            raise one_of("metric", metric, catalog.METRICS)


def with_replicas(frame: pd.DataFrame, resampled: pd.DataFrame | None) -> pd.DataFrame:
    """:func:`runs_frame` rows (``resample`` -1) and each run's bootstrap replicates of its image
    metrics (:func:`resampled_frame`; pixel metrics have none)."""
    if resampled is None:
        return frame
    replicas = frame.drop(columns=list(catalog.METRICS)).merge(resampled, on="run_key")
    return pd.concat([frame.assign(resample=-1), replicas], ignore_index=True)


def category_means(frame: pd.DataFrame, axis: str | None, metrics: Sequence[str]) -> tuple[list[str], pd.DataFrame, pd.DataFrame]:
    """The protocol's first two means: per category, then the unweighted mean per dataset, kept
    apart per method, axis value, seed (and replicate); returns those keys and both frames."""
    keys = ["method", *([axis] if axis else []), "seed", *(["resample"] if "resample" in frame else [])]
    per_category = frame.groupby([*keys, "dataset", "category"], sort=False)[list(metrics)].mean().reset_index()
    per_dataset = per_category.groupby([*keys, "dataset"], sort=False)[list(metrics)].mean().reset_index()
    return keys, per_category, per_dataset


@dataclass(frozen=True)
class _Levels:
    """The protocol's means of a frame: per category, per dataset, and "D" over the datasets not
    reported apart (all of them where each is), kept apart per ``keys``."""

    keys: list[str]
    per_category: pd.DataFrame
    per_dataset: pd.DataFrame
    mean: pd.DataFrame
    apart: list[str]
    averaged: list[str]


def _levels(frame: pd.DataFrame, axis: str | None, metrics: Sequence[str], separate: Sequence[str]) -> _Levels:
    keys, per_category, per_dataset = category_means(frame, axis, metrics)
    datasets = list(dict.fromkeys(per_dataset["dataset"]))
    apart = [d for d in datasets if d.split("+")[0] in separate]
    averaged = [d for d in datasets if d not in apart]
    part = per_dataset[per_dataset["dataset"].isin(averaged or datasets)]
    mean = part.groupby(keys, sort=False)[list(metrics)].mean().reset_index().assign(dataset=MEAN_COLUMN)
    return _Levels(keys, per_category, per_dataset, mean, apart, averaged)


def as_frame(runs: Sequence[RunResult] | pd.DataFrame) -> pd.DataFrame:
    if isinstance(runs, pd.DataFrame):
        return runs
    if not runs:
        raise SpecError("no finished run to aggregate")
    return runs_frame(runs)


def tables(
    runs: Sequence[RunResult] | pd.DataFrame,
    metrics: Sequence[str],
    axis: str | None = None,
    summary_metrics: Sequence[str] | None = None,
    separate: Sequence[str] = (),
    resampled: pd.DataFrame | None = None,
    confidence: float = 0.95,
) -> dict[str, pd.DataFrame]:
    """The tables of a sweep (its results, or their :func:`runs_frame` already built), shaped by
    its experiment's axis (``None``: methods x datasets).

    ``resampled`` (:func:`resampled_frame`): every cell also gets its ``confidence`` interval; a
    mean over categories and datasets is taken replicate by replicate, as the point value is."""
    frame = as_frame(runs)
    summary_metrics = list(summary_metrics or metrics)
    _check([*metrics, *summary_metrics])
    if axis is not None and frame[axis].nunique() < 2:
        axis = None  # a sweep narrowed to one value of its axis reads best as the plain table
    frame = with_replicas(with_methods(frame, axis), resampled)
    shown = confidence if resampled is not None else None
    wanted = sorted(set(metrics) | set(summary_metrics), key=catalog.METRICS.index)
    means = _levels(frame, axis, wanted, separate)
    per_category, per_dataset = means.per_category, means.per_dataset
    with_mean = pd.concat([per_dataset, means.mean]) if len(means.averaged) > 1 else per_dataset
    index_name = "/".join(abbrev(m) for m in metrics)
    if axis is None:
        per_category["column"] = per_category["dataset"] + "/" + per_category["category"]
        datasets_order, categories_order = list(dict.fromkeys(with_mean["dataset"])), list(dict.fromkeys(per_category["column"]))
        named = {
            "per_dataset": _pivot(with_mean, ["method"], "dataset", metrics, datasets_order, shown),
            "per_category": _pivot(per_category, ["method"], "column", metrics, categories_order, shown),
        }
    else:
        values = sorted(frame[axis].unique(), key=lambda v: (str(type(v)), v))
        label = column(axis).label
        for part in (per_dataset, per_category, with_mean):
            part["column"] = part[axis].map(label)
        columns = [label(v) for v in values]
        summary = with_mean[with_mean["dataset"].isin([MEAN_COLUMN, *means.apart])].copy()
        summary["column"] = summary["dataset"].map(lambda d: "" if d == MEAN_COLUMN else f"{d} ") + summary["column"]
        summary_columns = [f"{prefix}{c}" for prefix in ["", *(f"{d} " for d in means.apart)] for c in columns]
        named = {
            "per_dataset": _pivot(per_dataset, ["method", "dataset"], "column", metrics, columns, shown),
            "summary": _pivot(summary, ["method"], "column", summary_metrics, summary_columns, shown),
            "per_category": _pivot(per_category, ["method", "dataset", "category"], "column", metrics, columns, shown),
        }
        named["summary"].index.name = "/".join(abbrev(m) for m in summary_metrics)
    for name, table in named.items():
        if name != "summary":
            table.index.names = [index_name, *table.index.names[1:]] if table.index.nlevels > 1 else [index_name]
    return named


def defect_table(
    runs: Sequence[RunResult] | pd.DataFrame,
    scores: dict[str, pd.DataFrame],
    points: Sequence[stats.OperatingPoint] = stats.DEFAULT_POINTS,
) -> pd.DataFrame:
    """Per method, category and defect type: the image count, the AUROC of that defect type against
    the good images, and the share rejected at each operating point (a defect's recall; the good
    row's false-alarm rate), x100, mean over seeds. Runs whose scores.csv has no defect column
    (written before viadk8s kept one) are left out with a warning."""
    frame = with_methods(as_frame(runs), None)
    parts = []
    for run in frame.itertuples():
        table = scores.get(run.run_key)
        if table is None or "defect" not in table:
            if table is not None:
                log.warning("warning: %s: scores.csv has no defect column; left out of the per-defect table", run.run_key)
            continue
        breakdown = stats.defect_breakdown(table, tuple(points))
        parts.append(breakdown.assign(method=run.method, dataset=run.dataset, category=run.category))
    if not parts:
        raise SpecError("no run has per-image scores with defect types; re-run the sweep with this viadk8s")
    rows = pd.concat(parts, ignore_index=True)
    table = rows.groupby(["method", "dataset", "category", "defect"], sort=False).mean(numeric_only=True)
    rates = [c for c in table.columns if c != "images"]
    table[rates] = (100 * table[rates]).round(1)
    return table.astype({"images": int}).fillna(MISSING)


def _plots(frame: pd.DataFrame, metrics: Sequence[str], axis: str | None) -> dict[str, bytes]:
    """Metric vs a numeric axis (input size, contamination), one line per method, mean over
    datasets: ``{file name: PNG}``."""
    if axis not in ("image_size", "contamination"):
        return {}
    pictures = {}
    for metric in metrics:
        per_dataset = (
            frame.groupby(["method", axis, "dataset", "category"], sort=False)[metric]
            .mean()
            .groupby(["method", axis, "dataset"], sort=False)
            .mean()
        )
        curve = per_dataset.groupby(["method", axis], sort=False).mean().dropna()
        if curve.empty:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.4), dpi=100)
        for method, points in curve.groupby(level="method", sort=False):
            xs = points.index.get_level_values(axis).astype(float)
            ax.plot(xs * (100 if axis == "contamination" else 1), 100 * points.to_numpy(), marker="o", label=method)
        ax.set_xlabel("input size (px)" if axis == "image_size" else "bad images in train (%)")
        ax.set_ylabel(abbrev(metric))
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png")
        plt.close(fig)
        pictures[f"{metric}_vs_{axis}.png"] = png.getvalue()
    return pictures


#: The levels of :attr:`Summary.estimates`: per category, per dataset, and the mean over datasets.
LEVELS = ("category", "dataset", "mean")


@dataclass(frozen=True)
class Summary:
    """Everything ``viadk8s aggregate`` prints and ``viadk8s report`` shows, computed from one
    runs frame (:func:`summarise`)."""

    frame: pd.DataFrame  # one row per run (runs_frame), with its method (with_methods, the axis apart)
    axis: str | None  # the experiment's axis, None for the plain table
    confidence: float | None  # the intervals' level; None: no scores, no intervals
    tables: dict[str, pd.DataFrame]  # the paper-shaped tables
    estimates: pd.DataFrame  # long: level, method, axis value, dataset, category, metric, mean, std, seeds, low, high
    per_dataset: pd.DataFrame  # per method, axis value, seed, replicate and dataset (the paper comparison's)
    keys: list[str]  # the keys per_dataset keeps apart beside "dataset"
    plots: dict[str, bytes]  # file name: PNG of a metric against a numeric axis


def summarise(
    results: Sequence[RunResult],
    experiment: str,
    metrics: Sequence[str] | None = None,
    scores: dict[str, pd.DataFrame] | None = None,
    tables_with_intervals: bool = True,
    summaries: dict[str, pixel_summary.PixelSummary] | None = None,
) -> Summary:
    """A sweep's tables, estimates and plots from one runs frame, shaped by its ``experiment``
    (:func:`experiment_shape`; ``metrics`` default to the experiment's). With ``scores`` (per run
    key) every estimate has its bootstrap interval at the level the runs stored (95 % otherwise),
    and the tables too unless ``tables_with_intervals`` is False; pixel metrics have intervals where
    ``summaries`` holds the run's pixel summary."""
    frame = as_frame(results)
    shape = experiment_shape(experiment)
    axis, summary_metrics, separate = shape["axis"], shape["summary_metrics"], shape["separate"]
    metrics = list(metrics or catalog.experiment(experiment).metrics)
    confidence = next((r.uncertainty.confidence for r in results if r.uncertainty), 0.95) if scores else None
    resampled = resampled_frame(results, scores, summaries=summaries) if scores else None
    shown = resampled if tables_with_intervals else None
    named = tables(frame, metrics, axis, summary_metrics, separate, shown, confidence or 0.95)
    methods = with_methods(frame, axis)
    present = [m for m in catalog.METRICS if methods[m].notna().any()]
    means = _levels(with_replicas(methods, resampled), axis, present, separate)
    group = ["method", *([axis] if axis else [])]
    long = pd.concat(
        [
            estimates(means.per_category, [*group, "dataset", "category"], present, confidence).assign(level="category"),
            estimates(means.per_dataset, [*group, "dataset"], present, confidence).assign(level="dataset", category=""),
            estimates(means.mean, [*group, "dataset"], present, confidence).assign(level="mean", category=""),
        ],
        ignore_index=True,
    )
    return Summary(methods, axis, confidence, named, long, means.per_dataset, means.keys, _plots(methods, metrics, axis))


def render(table: pd.DataFrame, fmt: str) -> str:
    if fmt == "md":
        return table.reset_index().to_markdown(index=False, disable_numparse=True)  # "88.0" stays "88.0", not 88
    if fmt == "csv":
        return table.to_csv()
    if fmt == "latex":
        return table.to_latex(escape=True)
    raise one_of("format", fmt, list(FORMATS))


def write(
    out: Path,
    runs: Sequence[RunResult] | pd.DataFrame,
    named: dict[str, pd.DataFrame],
    fmt: str,
    pictures: dict[str, bytes] | None = None,
) -> list[Path]:
    """Write each table, ``runs.csv`` (one raw row per run) and ``pictures`` (file name: PNG), via temporary files."""
    out.mkdir(parents=True, exist_ok=True)
    frame = as_frame(runs).drop(columns=["method", "_order"], errors="ignore")
    texts: dict[str, bytes] = {f"{name}.{FORMATS[fmt]}": (render(table, fmt) + "\n").encode() for name, table in named.items()}
    texts["runs.csv"] = (frame.replace({np.nan: None}).to_csv(index=False) + "\n").encode()
    written = []
    for name, data in {**texts, **(pictures or {})}.items():
        tmp = out / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(out / name)
        written.append(out / name)
    return written


def experiment_shape(experiment: str) -> dict[str, Any]:
    """The axis, summary metrics and separately reported datasets of an experiment's tables."""
    entry = catalog.experiment(experiment)
    axis = next(iter(entry.axes), None)
    if axis is not None:
        column(axis)  # an axis without a table column fails here, naming the fields that have one
    return {
        "axis": axis,
        "summary_metrics": entry.summary_metrics or None,
        "separate": entry.separate,
    }

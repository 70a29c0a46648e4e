"""From committed run results to the paper's tables and plots.

Aggregation follows protocol.md: per category, then the unweighted mean per dataset, then the
unweighted mean over the datasets of a table ("D"); with several seeds, mean ± std over seeds
(of the dataset means). Values are reported x100 with one decimal, metrics joined by "/"; a metric
a dataset cannot have (no masks) is "–".

An experiment with an axis (input size, contamination, drift, validation strategy) gets the shape
of the supplement's tables 13–15: rows method × dataset, one column per axis value; and a summary
(tables 11/12): rows method, the mean "D" per axis value, datasets reported apart (AeBAD) beside it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from viadk8s import catalog, stats  # noqa: E402
from viadk8s.errors import SpecError, one_of  # noqa: E402
from viadk8s.metrics import IMAGE_METRICS  # noqa: E402
from viadk8s.results import RunResult  # noqa: E402
from viadk8s.spec import Variant  # noqa: E402

FORMATS = {"md": "md", "csv": "csv", "latex": "tex"}
MISSING = "–"
log = logging.getLogger(__name__)
MEAN_COLUMN = "D"
#: Fields that tell two methods' settings apart when they vary within a sweep (the axis excepted).
IDENTITY = (
    "image_size",
    "weights",
    "epochs",
    "contamination",
    "drift",
    "validation",
    "supervised_k",
    "monitor",
    "patience",
    "check_every",
)
AXIS_LABELS: dict[str, Callable[[Any], str]] = {
    "image_size": lambda v: f"Size {v}",
    "contamination": lambda v: f"{round(100 * float(v))}%",
    "drift": lambda v: {"none": "No drift", "synthetic": "Drift"}.get(v, str(v)),
    "validation": str,
    "supervised_k": lambda v: f"k={v}",
}


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


def resampled_frame(results: Sequence[RunResult], scores: dict[str, pd.DataFrame], default_resamples: int = 1000) -> pd.DataFrame:
    """Each run's bootstrap distribution of its image metrics, one row per (run, resample),
    recomputed from its scores.csv with the settings its result stored (the run's seed otherwise)."""
    parts = []
    for result in results:
        if result.run_key not in scores:
            continue
        kept = result.uncertainty
        resamples, seed = (kept.resamples, kept.seed) if kept else (default_resamples, result.spec.seed)
        values = stats.distribution(scores[result.run_key], resamples, seed)
        replicas = pd.DataFrame(values.T, columns=list(IMAGE_METRICS))
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


@dataclass(frozen=True)
class Estimate:
    """One cell's number (0..1): the mean over seeds, their spread, and with bootstrap replicates
    the percentile interval of that mean."""

    mean: float
    std: float
    seeds: int
    interval: tuple[float, float] | None


def estimate(values: pd.DataFrame, metric: str, confidence: float | None = None) -> Estimate | None:
    """``metric`` of per-seed ``values`` (rows with ``resample`` >= 0 are bootstrap replicates, used
    with ``confidence``); ``None`` when no seed has it."""
    point = values[values["resample"] < 0] if "resample" in values else values
    column = point[metric].astype(float)
    if column.isna().all():
        return None
    replicas = values.loc[values["resample"] >= 0, ["resample", metric]].dropna() if confidence else None
    interval = None
    if replicas is not None and not replicas.empty:
        interval = stats.percentile_interval(replicas.groupby("resample")[metric].mean().to_numpy(), confidence)
    return Estimate(float(column.mean()), float(column.std(ddof=0)), int(column.count()), interval)


def _cell(values: pd.DataFrame, metrics: Sequence[str], confidence: float | None = None) -> str:
    """'95.1/76.9' from per-seed values; '95.1±0.3/…' when there are several seeds. With
    ``confidence`` (rows with ``resample`` >= 0 hold bootstrap replicates): '95.1 [93.0, 97.2]', the
    percentile interval of the replicates' mean over seeds."""
    parts = []
    for metric in metrics:
        found = estimate(values, metric, confidence)
        if found is None:
            parts.append(MISSING)
            continue
        text = f"{100 * found.mean:.1f}±{100 * found.std:.1f}" if found.seeds > 1 else f"{100 * found.mean:.1f}"
        if found.interval:
            text += f" [{100 * found.interval[0]:.1f}, {100 * found.interval[1]:.1f}]"
        parts.append(text)
    return "/".join(parts)


def _pivot(
    per_seed: pd.DataFrame,
    rows: list[str],
    column: str,
    metrics: Sequence[str],
    columns: list[Any],
    confidence: float | None = None,
) -> pd.DataFrame:
    cells = per_seed.groupby([*rows, column], sort=False).apply(lambda g: _cell(g, metrics, confidence), include_groups=False)
    table = cells.unstack(column).reindex(columns=columns).fillna(MISSING)
    table.columns.name = None
    return table


def abbrev(metric: str) -> str:
    level, name = metric.split("_", 1)
    return f"{'im' if level == 'image' else 'pix'}.{name}"


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


def tables(
    results: Sequence[RunResult],
    metrics: Sequence[str],
    axis: str | None = None,
    summary_metrics: Sequence[str] | None = None,
    separate: Sequence[str] = (),
    resampled: pd.DataFrame | None = None,
    confidence: float = 0.95,
) -> dict[str, pd.DataFrame]:
    """The tables of a sweep, shaped by its experiment's axis (``None``: methods x datasets).

    ``resampled`` (:func:`resampled_frame`): every cell also gets its ``confidence`` interval; a
    mean over categories and datasets is taken replicate by replicate, as the point value is."""
    if not results:
        raise SpecError("no finished run to aggregate")
    summary_metrics = list(summary_metrics or metrics)
    _check([*metrics, *summary_metrics])
    frame = with_replicas(runs_frame(results), resampled)
    if axis is not None and frame[axis].nunique() < 2:
        axis = None  # a sweep narrowed to one value of its axis reads best as the plain table
    frame = with_methods(frame, axis)
    shown = confidence if resampled is not None else None
    wanted = sorted(set(metrics) | set(summary_metrics), key=catalog.METRICS.index)
    keys, per_category, per_dataset = category_means(frame, axis, wanted)
    datasets = list(dict.fromkeys(per_dataset["dataset"]))
    apart = [d for d in datasets if d.split("+")[0] in separate]
    averaged = [d for d in datasets if d not in apart]
    mean = per_dataset[per_dataset["dataset"].isin(averaged)].groupby(keys, sort=False)[wanted].mean().reset_index()
    with_mean = pd.concat([per_dataset, mean.assign(dataset=MEAN_COLUMN)]) if len(averaged) > 1 else per_dataset
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
        label = AXIS_LABELS[axis]
        for part in (per_dataset, per_category, with_mean):
            part["column"] = part[axis].map(label)
        columns = [label(v) for v in values]
        summary = with_mean[with_mean["dataset"].isin([MEAN_COLUMN, *apart])].copy()
        summary["column"] = summary["dataset"].map(lambda d: "" if d == MEAN_COLUMN else f"{d} ") + summary["column"]
        summary_columns = [f"{prefix}{c}" for prefix in ["", *(f"{d} " for d in apart)] for c in columns]
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
    results: Sequence[RunResult], scores: dict[str, pd.DataFrame], points: Sequence[stats.OperatingPoint] = stats.DEFAULT_POINTS
) -> pd.DataFrame:
    """Per method, category and defect type: the image count, the AUROC of that defect type against
    the good images, and the share rejected at each operating point (a defect's recall; the good
    row's false-alarm rate), x100, mean over seeds. Runs whose scores.csv has no defect column
    (written before viadk8s kept one) are left out with a warning."""
    frame = with_methods(runs_frame(results), None)
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


def plots(results: Sequence[RunResult], metrics: Sequence[str], axis: str | None, out: Path) -> list[Path]:
    """Metric vs a numeric axis (input size, contamination), one line per method, mean over datasets."""
    if axis not in ("image_size", "contamination"):
        return []
    frame = with_methods(runs_frame(results), axis)
    written = []
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
        path = out / f"{metric}_vs_{axis}.png"
        tmp = out / f".{path.name}.tmp.png"
        fig.savefig(tmp)
        plt.close(fig)
        tmp.replace(path)
        written.append(path)
    return written


def render(table: pd.DataFrame, fmt: str) -> str:
    if fmt == "md":
        return table.reset_index().to_markdown(index=False, disable_numparse=True)  # "88.0" stays "88.0", not 88
    if fmt == "csv":
        return table.to_csv()
    if fmt == "latex":
        return table.to_latex(escape=True)
    raise one_of("format", fmt, list(FORMATS))


def write(out: Path, results: Sequence[RunResult], named: dict[str, pd.DataFrame], fmt: str) -> list[Path]:
    """Write each table, plus ``runs.csv`` (one raw row per run), via temporary files."""
    out.mkdir(parents=True, exist_ok=True)
    texts = {f"{name}.{FORMATS[fmt]}": render(table, fmt) for name, table in named.items()}
    texts["runs.csv"] = runs_frame(results).replace({np.nan: None}).to_csv(index=False)
    written = []
    for name, text in texts.items():
        tmp = out / f".{name}.tmp"
        tmp.write_text(text + "\n")
        tmp.replace(out / name)
        written.append(out / name)
    return written


def experiment_shape(experiment: str) -> dict[str, Any]:
    """The axis, summary metrics and separately reported datasets of an experiment's tables."""
    entry = catalog.experiment(experiment)
    axis = next(iter(entry.axes), None)
    return {
        "axis": axis if axis in (*Variant.model_fields, "image_size") else None,
        "summary_metrics": entry.summary_metrics or None,
        "separate": entry.separate,
    }

"""A sweep's numbers beside the paper's (supplement Tables 11-15, ``catalog/paper.yaml``).

Why: before trusting a cluster's numbers on their own data, a user wants to know whether it
reproduces the published ones, and "different" only means something against the spread our own
test set allows. So each of our cells comes with its bootstrap interval (the same replicates as
``aggregate --ci``: means over categories and datasets taken replicate by replicate), and the row
says whether the paper's value lies inside it. Our value is aggregated as the paper's tables are
(:mod:`viadk8s.aggregate`): per category, per dataset, "D" over the table's ``mean_of`` datasets
(only where a method has all of them), mean over seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from viadk8s import catalog
from viadk8s.catalog import PAPER_MEAN, PaperCell, abbrev
from viadk8s.results import RunResult
from viadk8s.spec import column
from viadk8s.stats import Estimate, estimate

if TYPE_CHECKING:
    from viadk8s.aggregate import Summary

COLUMNS = ["method", "dataset", "setting", "metric", "paper", "ours", "interval", "difference", "paper inside"]


@dataclass(frozen=True)
class Comparison:
    """One table per paper table with cells to compare (``paper_table_<n>``), and one-line notes."""

    tables: dict[str, pd.DataFrame]
    notes: list[str]


def _measurable(cell: PaperCell) -> bool:
    """The paper prints 0.0 for pixel metrics of a dataset without masks (VAD): not a value."""
    entry = catalog.datasets().get(cell.dataset.removesuffix("+dr"))
    return not (cell.metric.startswith("pixel_") and entry is not None and not entry.has_masks)


def _with_paper_means(per_dataset: pd.DataFrame, keys: list[str], metrics: list[str], mean_of: Sequence[str]) -> pd.DataFrame:
    """``per_dataset`` plus the paper's "D": the mean over exactly ``mean_of`` (a method missing
    one of them has no D: a mean over fewer datasets is another number)."""
    if not mean_of:
        return per_dataset
    part = per_dataset[per_dataset["dataset"].isin(mean_of)]
    complete = part.groupby(keys, sort=False)["dataset"].transform("nunique") == len(mean_of)
    means = part[complete].groupby(keys, sort=False)[metrics].mean().reset_index().assign(dataset=PAPER_MEAN)
    return pd.concat([per_dataset, means], ignore_index=True)


def _rows(
    cells: list[PaperCell], per_dataset: pd.DataFrame, axis: str, methods: dict[str, str], confidence: float | None
) -> pd.DataFrame:
    """One row per cell of the paper's grid (its models and ours x its datasets x its columns x its
    metrics) that the paper or the sweep has; what one side lacks stays empty."""
    label = column(axis).label
    published = {(c.model, c.dataset, label(c.value), c.metric): c.paper for c in cells if _measurable(c)}
    datasets = list(dict.fromkeys(c.dataset for c in cells))
    settings = list(dict.fromkeys(label(c.value) for c in cells))
    metrics = list(dict.fromkeys(c.metric for c in cells))
    ours = per_dataset.assign(setting=per_dataset[axis].map(label))
    ours = ours[ours["dataset"].isin(datasets) & ours["setting"].isin(settings)]
    groups = {key: group for key, group in ours.groupby(["method", "dataset", "setting"], sort=False)}
    names = {k: m.name for k, m in catalog.models().items()}
    order = list(catalog.models())
    paper_only = {c.model for c in cells} - set(methods.values())
    rows_of = sorted([*methods.items(), *((names[m], m) for m in paper_only)], key=lambda mm: (order.index(mm[1]), mm[0]))
    rows = []
    for method, model in rows_of:
        for dataset in datasets:
            for setting in settings:
                group = groups.get((method, dataset, setting))
                for metric in metrics:
                    paper = published.get((model, dataset, setting, metric))
                    found = estimate(group, metric, confidence) if group is not None and metric in group else None
                    if paper is None and found is None:
                        continue
                    rows.append(_row(method, dataset, setting, metric, paper, found))
    return pd.DataFrame(rows, columns=COLUMNS).set_index(COLUMNS[:4]) if rows else pd.DataFrame()


def _row(method: str, dataset: str, setting: str, metric: str, paper: float | None, found: Estimate | None) -> list[str]:
    """x100, one decimal; difference = ours - paper; "yes"/"no" only where both and an interval exist."""
    row = [method, dataset, setting, abbrev(metric), "" if paper is None else f"{100 * paper:.1f}", "", "", "", ""]
    if found is not None:
        row[5] = f"{100 * found.mean:.1f}" + (f"±{100 * found.std:.1f}" if found.seeds > 1 else "")
        if found.interval is not None:
            low, high = found.interval
            row[6] = f"[{100 * low:.1f}, {100 * high:.1f}]"
        if paper is not None:
            row[7] = f"{100 * (found.mean - paper):+.1f}"
            if found.interval is not None:
                # the paper prints one decimal: its value lies inside if inside once both are rounded alike
                row[8] = "yes" if round(100 * low, 1) <= round(100 * paper, 1) <= round(100 * high, 1) else "no"
    return row


def against_paper(results: Sequence[RunResult], summary: Summary) -> Comparison:
    """The sweep's ``results`` beside every paper table of their experiment, our cells from their
    ``summary`` (:func:`viadk8s.aggregate.summarise`; with scores, our cells have intervals).
    A sweep the paper has no table for, or whose datasets it did not report, is one note, no table."""
    experiment = results[0].spec.experiment
    cells = [c for c in catalog.paper_cells() if c.experiment == experiment]
    if not cells:
        return Comparison({}, [f"the paper's Tables 11-15 do not report the {experiment} experiment: nothing to compare"])
    tables = sorted({c.table for c in cells}, key=int)
    mean_of = {t: catalog.paper()[t].mean_of for t in tables}
    ran = sorted({r.spec.dataset for r in results})
    reported = {c.dataset.removesuffix("+dr") for c in cells} | {d for t in tables for d in mean_of[t]}
    if not reported & set(ran):
        shown = ", ".join(sorted(reported - {PAPER_MEAN}))
        note = f"this sweep ran on {', '.join(ran)}; the paper's Tables {', '.join(tables)} report {shown}: nothing to compare"
        return Comparison({}, [note])
    axis = next(iter(catalog.experiment(experiment).axes))
    methods = dict(summary.frame[["method", "model"]].drop_duplicates().itertuples(index=False, name=None))
    metrics = [m for m in catalog.METRICS if m in summary.per_dataset and any(c.metric == m for c in cells)]
    keys, per_dataset, confidence = summary.keys, summary.per_dataset, summary.confidence
    named, notes = {}, []
    for table in tables:
        own = [c for c in cells if c.table == table]
        rows = _rows(own, _with_paper_means(per_dataset, keys, metrics, mean_of[table]), axis, methods, confidence)
        if rows.empty:
            notes.append(f"Table {table}: no cell in common with this sweep")
            continue
        named[f"paper_table_{table}"] = rows
        compared = rows[(rows["paper"] != "") & (rows["ours"] != "")]
        inside = (compared["paper inside"] == "yes").sum()
        notes.append(
            f"Table {table} ({catalog.paper()[table].title}): {len(compared)} cells compared, "
            + (
                f"the paper's value inside our {100 * confidence:g} % interval in {inside}"
                if confidence
                else "no intervals: no scores.csv"
            )
        )
    unmeasurable = sorted({c.dataset for c in cells if not _measurable(c)})
    if unmeasurable:
        notes.append(f"pixel metrics on {', '.join(unmeasurable)}: printed 0.0 in the paper, the dataset has no masks; left out")
    return Comparison(named, notes)

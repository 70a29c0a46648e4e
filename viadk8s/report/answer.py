"""The top of the report, which answers first: per headline metric each method's mean over
categories with its interval (a dot-and-whisker chart, inline SVG), and one sentence naming the
best method and those that cannot be told apart from it; then tables with one metric per column.

"Cannot be told apart" is the paired test of :func:`viadk8s.compare.against_best`: the interval of
the difference from the best, both scored on the same test images resampled alike and averaged as
the chart's mean is, contains 0. Everything is computed from :class:`viadk8s.aggregate.Summary`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

import numpy as np
import pandas as pd
from markupsafe import Markup

from viadk8s import catalog, compare, cost, stats
from viadk8s.results import RunResult
from viadk8s.spec import column

ROW, LEFT, PLOT, RIGHT, TOP = 24, 260, 480, 60, 26  # chart geometry, px
TICKS = (1, 2, 5, 10, 20, 25)  # tick steps, points x100


@dataclass(frozen=True)
class Point:
    """One row of a chart: a method (at one axis value), its mean (0..1) and interval."""

    label: str
    mean: float
    low: float | None
    high: float | None


def _x(value: float, low: float, high: float) -> float:
    return LEFT + PLOT * (value - low) / (high - low)


def chart(points: Sequence[Point], metric: str) -> Markup:
    """A dot (the mean) and whisker (the interval) per row on a shared x100 scale, as inline SVG."""
    ends = [v for p in points for v in (p.mean, p.low, p.high) if v is not None]
    pad = max(0.01, 0.08 * (max(ends) - min(ends)))
    low, high = max(0.0, min(ends) - pad), min(1.0, max(ends) + pad)
    low = min(low, high - 0.02)
    step = next((t for t in TICKS if 100 * (high - low) / t <= 6), 25)
    height = TOP + ROW * len(points) + 8
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{LEFT + PLOT + RIGHT}" height="{height}" '
        f'role="img" aria-label="{escape(metric)} per method, mean and interval">'
    ]
    for tick in np.arange(np.ceil(100 * low / step) * step, 100 * high + 1e-9, step):
        x = _x(tick / 100, low, high)
        parts.append(f'<line x1="{x:.1f}" y1="{TOP - 6}" x2="{x:.1f}" y2="{height - 6}" class="grid"/>')
        parts.append(f'<text x="{x:.1f}" y="{TOP - 10}" class="tick">{tick:g}</text>')
    for i, p in enumerate(points):
        y = TOP + ROW * i + ROW / 2
        parts.append(f'<text x="{LEFT - 10}" y="{y + 4:.1f}" class="label">{escape(p.label)}</text>')
        if p.low is not None and p.high is not None:
            x1, x2 = _x(p.low, low, high), _x(p.high, low, high)
            parts.append(f'<line x1="{x1:.1f}" y1="{y:.1f}" x2="{x2:.1f}" y2="{y:.1f}" class="whisker"/>')
            for x in (x1, x2):
                parts.append(f'<line x1="{x:.1f}" y1="{y - 5:.1f}" x2="{x:.1f}" y2="{y + 5:.1f}" class="whisker"/>')
        parts.append(f'<circle cx="{_x(p.mean, low, high):.1f}" cy="{y:.1f}" r="4.5" class="dot"/>')
        parts.append(f'<text x="{LEFT + PLOT + 10}" y="{y + 4:.1f}" class="value">{100 * p.mean:.1f}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text inside is escaped above


def _signed(value: float) -> str:
    return f"{100 * value:+.1f}".replace("-", "−")


def sentence(metric: str, best: str, means: dict[str, float], versus: Sequence[compare.Versus], confidence: float) -> str:
    """'Best on im.AUROC: A (95.1). Cannot be told apart from it: B (−1.2 [−3.0, +0.6]). Below it: C (…).'"""
    text = f"Best on {catalog.abbrev(metric)}: {best} ({100 * means[best]:.1f})."
    if not versus:
        return text + " No other method ran."
    tied, below, unpaired = [], [], []
    for v in sorted(versus, key=lambda v: -v.difference.estimate if v.difference else 0):  # the closest first
        d = v.difference
        if d is None:
            unpaired.append(v.method)
            continue
        shown = f"{v.method} ({_signed(d.estimate)} [{_signed(d.low)}, {_signed(d.high)}])"
        (tied if d.low <= 0 <= d.high else below).append(shown)
    text += f" Cannot be told apart from it (difference from {best} and its {100 * confidence:g} % interval): "
    text += f"{', '.join(tied) if tied else 'none'}."
    if below:
        text += f" Below it: {', '.join(below)}."
    if unpaired:
        text += f" Not compared (no test set in common with {best}): {', '.join(unpaired)}."
    return text


def headline(
    estimates: pd.DataFrame,
    runs: pd.DataFrame,
    scores: dict[str, pd.DataFrame],
    metric: str,
    axis: str | None,
    datasets: Sequence[str],
    confidence: float,
    kept: dict[tuple[str, str], stats.PairedBootstrap],
) -> dict[str, object]:
    """The chart of ``metric`` (rows: methods, at each axis value) and its sentences (one per axis
    value): the best by mean, and the paired comparison of every other method against it (``kept``:
    the pairs' bootstraps, shared by the metrics)."""
    rows = estimates[(estimates["level"] == "mean") & (estimates["metric"] == metric)]
    values = sorted(rows[axis].unique(), key=lambda v: (str(type(v)), v)) if axis else [None]
    points, sentences = [], []
    for value in values:
        part = rows[rows[axis] == value] if axis else rows
        if part.empty:
            continue
        prefix = f"{column(axis).label(value)}: " if axis else ""
        for r in part.sort_values("mean", ascending=False, kind="stable").itertuples():  # the best on top
            interval = (None, None) if np.isnan(r.low) else (float(r.low), float(r.high))
            points.append(Point(f"{r.method} · {column(axis).label(value)}" if axis else r.method, float(r.mean), *interval))
        means = dict(zip(part["method"], part["mean"].astype(float), strict=True))
        best = max(means, key=lambda m: means[m])
        if metric in catalog.IMAGE_METRICS and scores:
            chosen = runs[runs["dataset"].isin(datasets)]
            chosen = chosen[chosen[axis] == value] if axis else chosen
            versus = compare.against_best(chosen, scores, metric, best, confidence=confidence, kept=kept)
            sentences.append(prefix + sentence(metric, best, means, versus, confidence))
        else:
            reason = "pixel metrics are paired per image by `viadk8s compare`" if scores else "no scores.csv to pair"
            sentences.append(
                f"{prefix}Best on {catalog.abbrev(metric)}: {best} ({100 * means[best]:.1f}); not paired here ({reason})."
            )
    return {"metric": metric, "chart": chart(points, catalog.abbrev(metric)) if points else None, "sentences": sentences}


@dataclass(frozen=True)
class Table:
    """A table with one metric per column; each cell a value and, in smaller grey text, its interval."""

    header: list[str]
    rows: list[tuple[list[str], list[tuple[str, str]]]]


def _cell(r: pd.Series) -> tuple[str, str]:
    value = f"{100 * r['mean']:.1f}" + (f" ± {100 * r['std']:.1f}" if r["seeds"] > 1 else "")
    interval = "" if np.isnan(r["low"]) else f"[{100 * r['low']:.1f}, {100 * r['high']:.1f}]"
    return value, interval


def metric_table(estimates: pd.DataFrame, level: str, metrics: Sequence[str], axis: str | None) -> Table:
    """``level`` ("dataset", "category") of :attr:`Summary.estimates` (with "D", the mean over
    datasets, after each method's datasets when there are several): rows method, axis value,
    dataset (category), one column per metric."""
    keys = ["method", *([axis] if axis else []), "dataset", *(["category"] if level == "category" else [])]
    part = estimates[estimates["level"] == level]
    if level == "dataset" and part["dataset"].nunique() > 1:
        part = pd.concat([part, estimates[estimates["level"] == "mean"]])
    cells = {(*(r[k] for k in keys), r["metric"]): _cell(r) for _, r in part.iterrows()}
    groups = list(dict.fromkeys(part[keys].itertuples(index=False, name=None)))
    if axis:
        position = {v: i for i, v in enumerate(sorted(part[axis].unique(), key=lambda v: (str(type(v)), v)))}
        methods = {m: i for i, m in enumerate(dict.fromkeys(part["method"]))}
        groups.sort(key=lambda g: (methods[g[0]], position[g[1]]))
    header = [
        "method",
        *([axis] if axis else []),
        "dataset",
        *(["category"] if level == "category" else []),
        *map(catalog.abbrev, metrics),
    ]
    rows = []
    for g in groups:
        shown = [str(g[0]), *([column(axis).label(g[1])] if axis else []), *map(str, g[1 + bool(axis) :])]
        rows.append((shown, [cells.get((*g, m), ("–", "")) for m in metrics]))
    return Table(header, rows)


def cost_check(results: Sequence[RunResult], table_path: str | None = None) -> tuple[pd.DataFrame, str]:
    """Per model: the cost model's seconds for the work each run did (:func:`viadk8s.cost.done_work`,
    start-up outside ``result.json``'s timings left out, as calibration does) against the measured
    fit + test seconds. A ratio far from 1 means the table was measured on another device: calibrate."""
    tables, where = cost.load_tables(table_path)
    table = tables[0]
    rows: dict[str, dict[str, float]] = {}
    for r in results:
        found = table.lookup(r.spec.model, r.spec.image_size)
        row = rows.setdefault(r.spec.model, {"runs": 0, "estimated s": 0.0, "actual s": 0.0, "not in the table": 0})
        row["runs"] += 1
        if found is None:
            row["not in the table"] += 1
            continue
        row["estimated s"] += cost.done_work(r).seconds(found[0], 0.0)
        row["actual s"] += r.timings.fit_s + r.timings.test_s  # of the runs the table estimates
    frame = pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")
    estimated = frame["runs"] > frame["not in the table"]
    frame[["estimated s", "actual s"]] = frame[["estimated s", "actual s"]].where(estimated)  # "–": nothing to set beside
    frame["actual / estimated"] = (frame["actual s"] / frame["estimated s"].where(frame["estimated s"] > 0)).round(2)
    frame[["estimated s", "actual s"]] = frame[["estimated s", "actual s"]].round(1)
    devices = ", ".join(sorted({r.device for r in results}))
    return frame.astype(
        {"runs": int, "not in the table": int}
    ), f"cost table: {where}, measured on {table.device}; runs on {devices}"

"""From committed run results to the paper's tables: methods x datasets, metrics joined by '/'.

Aggregation follows protocol.md: per category, then the unweighted mean per dataset, then the
unweighted mean over the datasets of a table ("D"); with several seeds, mean ± std over seeds.
Values are reported x100 with one decimal; a metric a dataset cannot have (no masks) is "–".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from viadk8s import catalog
from viadk8s.errors import SpecError, one_of
from viadk8s.results import RunResult

FORMATS = {"md": "md", "csv": "csv", "latex": "tex"}
MISSING = "–"
MEAN_COLUMN = "D"
#: Spec fields that tell two methods' settings apart when they vary within a sweep.
SETTING_FIELDS = ("image_size", "weights", "epochs", "variant")


def runs_frame(results: Sequence[RunResult]) -> pd.DataFrame:
    """One row per run: its identity, its setting and its raw metrics (0..1)."""
    rows = []
    for r in results:
        s = r.spec
        setting = {"image_size": s.image_size, "weights": s.weights, "epochs": r.epochs, "variant": s.variant.label()}
        rows.append({"run_key": r.run_key, "model": s.model, "dataset": s.dataset, "category": s.category,
                     "seed": s.seed, **setting, **{m: r.metrics.get(m) for m in catalog.METRICS},
                     "fit_s": r.timings.fit_s, "test_s": r.timings.test_s,
                     "peak_memory_mb": r.timings.peak_memory_mb})
    frame = pd.DataFrame(rows)
    varying = [f for f in SETTING_FIELDS if f in frame and frame[f].nunique() > 1]
    frame["method"] = frame.apply(lambda row: _method(row, varying), axis=1)
    return frame


def _method(row: pd.Series, varying: list[str]) -> str:
    name = catalog.models()[row["model"]].name
    extra = [str(row[f]) if f == "variant" else f"{f}={row[f]}" for f in varying if row[f] != ""]
    return f"{name} ({', '.join(extra)})" if extra else name


def _method_order(method: str) -> tuple[int, str]:
    """Catalog order of the model behind a method label, then the label (settings)."""
    names = [m.name for m in catalog.models().values()]
    base = method.split(" (", 1)[0]
    return (names.index(base) if base in names else len(names), method)


def _cell(values: pd.DataFrame, metrics: Sequence[str]) -> str:
    """'95.1/76.9' from per-seed values; '95.1±0.3/…' when there are several seeds."""
    parts = []
    for metric in metrics:
        column = values[metric].astype(float)
        if column.isna().all():
            parts.append(MISSING)
            continue
        mean = 100 * column.mean()
        parts.append(f"{mean:.1f}±{100 * column.std(ddof=0):.1f}" if column.count() > 1 else f"{mean:.1f}")
    return "/".join(parts)


def _table(per_seed: pd.DataFrame, column: str, metrics: Sequence[str]) -> pd.DataFrame:
    cells = per_seed.groupby(["method", column], sort=False).apply(lambda g: _cell(g, metrics), include_groups=False)
    table = cells.unstack(column).fillna(MISSING)
    table = table.loc[sorted(table.index, key=_method_order)]
    table.index.name = "/".join(_abbrev(m) for m in metrics)
    table.columns.name = None
    return table


def tables(results: Sequence[RunResult], metrics: Sequence[str]) -> dict[str, pd.DataFrame]:
    """The per-dataset (with the mean column D) and the per-category tables."""
    if not results:
        raise SpecError("no finished run to aggregate")
    for metric in metrics:
        if metric not in catalog.METRICS:
            raise one_of("metric", metric, catalog.METRICS)
    frame = runs_frame(results)
    keys = ["method", "seed"]
    per_category = frame.groupby([*keys, "dataset", "category"], sort=False)[list(metrics)].mean()
    per_category = per_category.reset_index()
    per_category["dataset/category"] = per_category["dataset"] + "/" + per_category["category"]
    per_dataset = per_category.groupby([*keys, "dataset"], sort=False)[list(metrics)].mean().reset_index()
    columns = [per_dataset]
    if per_dataset["dataset"].nunique() > 1:
        mean = per_dataset.groupby(keys, sort=False)[list(metrics)].mean().reset_index()
        columns.append(mean.assign(dataset=MEAN_COLUMN))
    return {
        "per_dataset": _table(pd.concat(columns), "dataset", metrics),
        "per_category": _table(per_category, "dataset/category", metrics),
    }


def _abbrev(metric: str) -> str:
    level, name = metric.split("_", 1)
    return f"{'im' if level == 'image' else 'pix'}.{name}"


def render(table: pd.DataFrame, fmt: str) -> str:
    if fmt == "md":
        return table.to_markdown()
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

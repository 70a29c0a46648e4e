"""Catalogs of models, datasets and experiments, and the paper's published numbers: data (YAML
beside this file), not code branches.

Adding a model, dataset or experiment is an edit of a YAML file; the types below validate it.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from viadk8s.errors import one_of

#: The one list of metric names, in table order: the catalog's experiments and paper tables, the
#: early-stopping monitor (:class:`viadk8s.spec.Variant`), the worker's computation
#: (:mod:`viadk8s.metrics`) and the bootstrap (:mod:`viadk8s.stats`) all read it.
Metric = Literal["image_AUROC", "image_F1Max", "pixel_AUROC", "pixel_AUPRO", "pixel_F1Max", "image_PG2", "image_PB2"]
METRICS: tuple[str, ...] = get_args(Metric)
#: Computed from a run's per-image scores (``scores.csv``): recomputable and resampled per image.
IMAGE_METRICS = tuple(m for m in METRICS if m.startswith("image_"))
#: Computed from a run's anomaly maps; recomputable from its pixel summary (:mod:`viadk8s.pixel_summary`).
PIXEL_METRICS = tuple(m for m in METRICS if m.startswith("pixel_"))
#: What early stopping can monitor: a curve over one validation set. PG2 and PB2 are not: each
#: is a count at a quantile threshold, flat over most epochs, a poor signal to stop on.
MONITORED = tuple(m for m in METRICS if m not in ("image_PG2", "image_PB2"))


def abbrev(metric: str) -> str:
    """``image_AUROC`` -> ``im.AUROC``, as the paper's table headings print it."""
    level, name = metric.split("_", 1)
    return f"{'im' if level == 'image' else 'pix'}.{name}"


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    key: str = ""
    name: str
    abbrev: str = ""
    note: str = ""


class ModelEntry(_Entry):
    group: Literal["one_class", "unsupervised", "supervised"]
    model_class: str  # "Patchcore" (in anomalib.models) or "viadk8s.models.simplenet:Simplenet"
    epochs: int = Field(ge=1)
    init_args: dict[str, Any] = {}
    pixel_maps: bool = True
    min_image_size: int = 64  # smaller inputs leave its feature pyramid empty
    supervised_args: dict[str, Any] | None = None  # init_args of its supervised mode, if it has one


class SyntheticOptions(BaseModel):
    """How the built-in generator makes a dataset (see viadk8s.data.synthetic)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    categories: list[str] = ["tiles", "fabric"]
    n_train: int = Field(default=40, ge=2)
    n_test_good: int = Field(default=16, ge=1)
    n_test_bad: int = Field(default=16, ge=1)
    size: int = Field(default=128, ge=32, le=1024)


BitDepth = Literal[8, 10, 12, 14, 16]


COUNTED = ("train good", "test good", "test bad")


class PublishedCounts(BaseModel):
    """Per-category image counts a publisher states, as :data:`COUNTED`; ``datasets check`` compares."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str  # where the numbers are published
    categories: dict[str, tuple[int, int, int]]


class DatasetEntry(_Entry):
    masks: Literal["pixel", "image"] = "pixel"
    bit_depth: BitDepth | None = None  # what a 16-bit container holds (12-bit cameras); None: detect
    categories: list[str] = []
    synthetic: SyntheticOptions | None = None
    path: str | None = None
    drift_categories: list[str] = []  # real-drift subsets, reported as "<key>+dr" apart from the rest
    prepare: str = ""  # how the archive its publisher ships becomes the MVTec layout
    counts: PublishedCounts | None = None

    @property
    def has_masks(self) -> bool:
        return self.masks == "pixel"

    @model_validator(mode="after")
    def _counted_categories_exist(self) -> DatasetEntry:
        unknown = sorted(set(self.counts.categories) - set(self.categories)) if self.counts else []
        if unknown:
            raise ValueError(f"counts name categories {unknown} that are not among {self.categories}")
        return self


class Rule(BaseModel):
    """Spec fields set on the runs that match ``when`` (a value or a list of allowed values)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    when: dict[str, Any]
    set: dict[str, Any]

    def matches(self, fields: dict[str, Any]) -> bool:
        return all(fields.get(k) in (v if isinstance(v, list) else [v]) for k, v in self.when.items())


class ExperimentEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    key: str = ""
    title: str
    datasets: list[str]
    models: list[str]
    seeds: list[int]
    axes: dict[str, list[Any]] = {}
    metrics: list[str]
    summary_metrics: list[str] = []
    separate: list[str] = []
    rules: list[Rule] = []


def _load(file: str, entry: type[BaseModel]) -> dict[str, Any]:
    text = resources.files(__package__).joinpath(file).read_text()
    return {key: entry.model_validate({**value, "key": key}) for key, value in yaml.safe_load(text).items()}


@cache
def models() -> dict[str, ModelEntry]:
    return _load("models.yaml", ModelEntry)


@cache
def datasets() -> dict[str, DatasetEntry]:
    return _load("datasets.yaml", DatasetEntry)


@cache
def experiments() -> dict[str, ExperimentEntry]:
    return _load("experiments.yaml", ExperimentEntry)


PAPER_MEAN = "D"  # the paper's mean over a table's `mean_of` datasets


class PaperColumn(BaseModel):
    """A printed column: the experiment's axis value, and in a summary table the dataset it holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    header: str
    value: Any
    dataset: str | None = None  # None: the row's dataset (per-dataset tables)


class PaperTable(BaseModel):
    """One of the supplement's Tables 11-15 as printed: rows of "a/b/c" cells (x100), see paper.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    key: str = ""
    title: str
    experiment: str
    metrics: list[str]
    mean_of: list[str] = []
    columns: list[PaperColumn]
    rows: dict[str, list[str] | dict[str, list[str]]]  # model: cells, or model: {dataset: cells}


class PaperCell(BaseModel):
    """One published number, 0..1 (the paper prints x100)."""

    model_config = ConfigDict(frozen=True)
    table: str
    experiment: str
    model: str
    dataset: str  # a catalog key, "<key>+dr" (a real-drift part) or PAPER_MEAN
    metric: str
    axis: str
    value: Any  # the axis value
    paper: float


def _paper_cells(table: PaperTable) -> list[PaperCell]:
    """``table``'s cells, checked against the catalog: a wrong name or a short cell fails loudly."""
    axis = next(iter(experiment(table.experiment).axes))
    cells = []
    for model_key, row in table.rows.items():
        model(model_key)
        for dataset, printed in row.items() if isinstance(row, dict) else [(None, row)]:
            if len(printed) != len(table.columns):
                raise ValueError(f"paper table {table.key}, {model_key}: {len(printed)} cells for {len(table.columns)} columns")
            for column, cell in zip(table.columns, printed, strict=True):
                where = column.dataset or dataset
                if where is None or (where != PAPER_MEAN and where.removesuffix("+dr") not in datasets()):
                    raise ValueError(f"paper table {table.key}, {model_key}: unknown dataset {where!r}")
                parts = cell.split("/")
                if len(parts) != len(table.metrics):
                    raise ValueError(f"paper table {table.key}, {model_key}: cell {cell!r} is not {'/'.join(table.metrics)}")
                for metric, part in zip(table.metrics, parts, strict=True):
                    if metric not in METRICS:
                        raise one_of("metric", metric, METRICS)
                    cells.append(
                        PaperCell(
                            table=table.key,
                            experiment=table.experiment,
                            model=model_key,
                            dataset=where,
                            metric=metric,
                            axis=axis,
                            value=column.value,
                            paper=float(part) / 100,
                        )
                    )
    return cells


@cache
def paper() -> dict[str, PaperTable]:
    return _load("paper.yaml", PaperTable)


@cache
def paper_cells() -> tuple[PaperCell, ...]:
    """Every number of the supplement's Tables 11-15, one cell per (table, model, dataset, metric, axis value)."""
    return tuple(cell for table in paper().values() for cell in _paper_cells(table))


def model(key: str) -> ModelEntry:
    """The catalog entry of a model; a clear error naming the allowed keys otherwise."""
    entry = models().get(key)
    if entry is None:
        raise one_of("model", key, list(models()))
    return entry


def experiment(key: str) -> ExperimentEntry:
    entry = experiments().get(key)
    if entry is None:
        raise one_of("experiment", key, list(experiments()))
    return entry

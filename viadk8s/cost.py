"""What a sweep costs before it is submitted: a per-run time model, its calibration from stored
results, and the estimate that ``plan --estimate`` and ``submit --estimate`` print.

A run's seconds = overhead + start + epochs × train units × train cost + test images × test cost.
A train unit is an image per epoch, except for models whose epoch is a fixed number of steps
(catalog group ``supervised``: DRA and DevNet draw 20 batches whatever the dataset's size), where it
is the epoch itself. Test images include the validation passes of early stopping, which cost what
testing costs. ``start`` is the fit and test set-up that ``result.json`` times; ``overhead`` is what
it does not time (process start, imports, staging): it is not fitted, the table states it.
"""

from __future__ import annotations

import heapq
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from viadk8s import catalog
from viadk8s.config import Config
from viadk8s.data.layout import scan_category
from viadk8s.data.splits import VAL_FRACTION
from viadk8s.errors import SpecError, validation_message
from viadk8s.spec import RunSpec

if TYPE_CHECKING:  # results (pandas) and scipy are for calibration: an estimate answers without them
    from viadk8s.results import RunResult

DEFAULT_TABLE = "costs.yaml"  # in viadk8s/catalog, shipped with the package
#: Per category (train good, test good, test bad) where nothing better is known: MVTec AD's mean
#: (3,629 train, 467 good and 1,258 bad test images over 15 categories).
DEFAULT_COUNTS = (242, 31, 84)
TOP = 10  # the longest runs listed


class Coefficients(BaseModel):
    """One model at one image size on the table's device."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    model: str
    image_size: int
    start_s: float = Field(ge=0)
    train_s: float = Field(ge=0, description="per train unit: an image per epoch, or an epoch of a fixed-step model")
    test_s: float = Field(ge=0, description="per test or validation image")
    runs: int = Field(ge=0, description="results it was fitted on")


class CostTable(BaseModel):
    """The coefficients measured on one kind of device (the worker's ``device`` string)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    device: str
    source: str
    overhead_s: float = Field(ge=0, description="per run, outside result.json's timings")
    coefficients: list[Coefficients]

    def lookup(self, model: str, image_size: int) -> tuple[Coefficients, str] | None:
        """The model's coefficients at this size; else at its nearest measured size with the
        per-image costs scaled by pixel area (a note says so); ``None`` for an unmeasured model."""
        measured = [c for c in self.coefficients if c.model == model]
        if not measured:
            return None
        near = min(measured, key=lambda c: (abs(c.image_size - image_size), c.image_size))
        if near.image_size == image_size:
            return near, ""
        area = (image_size / near.image_size) ** 2
        scaled = near.model_copy(update={"train_s": near.train_s * area, "test_s": near.test_s * area, "image_size": image_size})
        return scaled, f"{model} at {image_size} px: scaled by pixel area from {near.image_size} px"


def load_tables(path: str | Path | None = None) -> tuple[list[CostTable], str]:
    """The tables of a calibration file (most runs first, as ``calibrate`` writes them), or the
    shipped default; with where they came from."""
    if path is None:
        text = resources.files("viadk8s.catalog").joinpath(DEFAULT_TABLE).read_text()
        where = f"the shipped default table (viadk8s/catalog/{DEFAULT_TABLE}; no calibration given)"
    else:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise SpecError(f"cannot read cost table {str(path)!r}: {err.strerror}") from None
        where = f"calibration {path}"
    try:
        tables = [CostTable.model_validate(t) for t in yaml.safe_load(text) or []]
    except (ValidationError, yaml.YAMLError, TypeError) as err:
        detail = validation_message(err) if isinstance(err, ValidationError) else str(err).splitlines()[0]
        raise SpecError(f"invalid cost table {where}: {detail}") from None
    if not tables:
        raise SpecError(f"cost table {where} holds no table")
    return tables, where


def dump_tables(tables: Sequence[CostTable]) -> str:
    """The YAML :func:`load_tables` reads, coefficients to 4 significant digits (timings are not more precise)."""
    rounded = [
        t.model_copy(
            update={
                "coefficients": [c.model_copy(update={k: float(f"{getattr(c, k):.4g}") for k in _COSTS}) for c in t.coefficients]
            }
        )
        for t in tables
    ]
    return yaml.safe_dump([t.model_dump() for t in rounded], sort_keys=False)


_COSTS = ("start_s", "train_s", "test_s")


# --- what a run processes ---------------------------------------------------------------------


@dataclass(frozen=True)
class Work:
    epochs: int
    units: float  # train units per epoch
    test_images: float  # test plus validation images over the run

    def seconds(self, c: Coefficients, overhead_s: float) -> float:
        return overhead_s + c.start_s + self.epochs * self.units * c.train_s + self.test_images * c.test_s


def _fixed_epoch(model: str) -> bool:
    return catalog.model(model).group == "supervised"


def done_work(result: RunResult) -> Work:
    """What a finished run processed, from its result."""
    d = result.data
    validations = len(result.validation_history) * d.n_val
    units = 1.0 if _fixed_epoch(result.spec.model) else float(d.n_train)
    return Work(result.epochs_run or result.epochs, units, d.n_test_good + d.n_test_bad + validations)


def planned_work(spec: RunSpec, counts: tuple[int, int, int]) -> Work:
    """What a planned run will process, from its category's (train good, test good, test bad)
    counts and the variant's moves (:mod:`viadk8s.worker.variants`); early stopping is assumed to
    run every epoch (an upper bound)."""
    train, good, bad = counts
    v = spec.variant
    if v.supervised_k:
        train, bad = train + v.supervised_k, max(1, bad - v.supervised_k)
    if v.contamination:
        moved = min(bad - 1, round(v.contamination * train / (1 - v.contamination)))
        train, bad = train + moved, bad - moved
    train = max(1, round(train * v.train_fraction))
    val = 0
    if v.validation == "test_early_stop":
        val = good + bad
    elif v.validation == "val_early_stop":  # carved out of the test set, stratified
        val_good, val_bad = max(1, round(VAL_FRACTION * good)), max(1, round(VAL_FRACTION * bad))
        good, bad, val = good - val_good, bad - val_bad, val_good + val_bad
    elif v.validation == "synthetic_val_early_stop":
        held = max(1, round(VAL_FRACTION * train))
        train, val = train - held, 2 * held  # held-out goods and as many synthetic anomalies
    epochs = spec.epochs
    units = 1.0 if _fixed_epoch(spec.model) else float(train)
    return Work(epochs, units, good + bad + val * (epochs // v.check_every))


_SPLITS = (("train", 0), ("test", 0), ("test", 1))  # catalog.COUNTED's order


class ImageCounts:
    """Per-category image counts known without running: a synthetic dataset's options, the
    catalog's published counts, a declared folder's files, else :data:`DEFAULT_COUNTS`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.defaulted: set[str] = set()
        self.sources: dict[str, str] = {}
        self._known: dict[tuple[str, str], tuple[int, int, int]] = {}

    def get(self, dataset: str, category: str) -> tuple[int, int, int]:
        if (dataset, category) not in self._known:
            self._known[(dataset, category)] = self._count(dataset, category)
        return self._known[(dataset, category)]

    def _count(self, dataset: str, category: str) -> tuple[int, int, int]:
        entry = self.config.dataset(dataset) if dataset in catalog.datasets() or dataset in self.config.datasets else None
        if entry is not None and entry.synthetic is not None:
            s = entry.synthetic
            self.sources[dataset] = "synthetic options"
            return s.n_train, s.n_test_good, s.n_test_bad
        if entry is not None and entry.path is not None and (Path(entry.path).expanduser() / category).is_dir():
            samples = scan_category(Path(entry.path).expanduser() / category)
            self.sources[dataset] = f"counted in {entry.path}"
            count = [sum(s.split == split and s.label == label for s in samples) for split, label in _SPLITS]
            return count[0], count[1], count[2]
        if entry is not None and entry.counts is not None and category in entry.counts.categories:
            self.sources[dataset] = f"published counts ({entry.counts.source})"
            return entry.counts.categories[category]
        self.defaulted.add(dataset)
        return DEFAULT_COUNTS


# --- calibration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fitted:
    """A run the fit saw: its measured and modelled seconds (overhead excluded: it is not timed)."""

    result: RunResult
    actual_s: float
    model_s: float

    @property
    def error(self) -> float:
        return (self.model_s - self.actual_s) / self.actual_s if self.actual_s else 0.0


@dataclass
class Calibration:
    tables: list[CostTable]
    fitted: list[Fitted]
    notes: list[str] = field(default_factory=list)


def _separable(x: np.ndarray) -> bool:
    return len(set(x.tolist())) > 1


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Non-negative intercept and slope of ``y ≈ a + b·x``; through the origin when ``x`` takes one value."""
    from scipy.optimize import nnls

    if not _separable(x):
        return 0.0, float(max(0.0, (x @ y) / (x @ x))) if x @ x else 0.0
    (a, b), _ = nnls(np.column_stack([np.ones_like(x), x]), y)
    return float(a), float(b)


def _train_line(runs: Sequence[RunResult], work: Sequence[Work], fit_y: np.ndarray) -> tuple[float, float]:
    """Start-up and cost per train unit from fit seconds; when every run did the same amount of
    training, the slope comes from the epoch times instead (after the first epoch, which fills caches)."""
    x = np.array([w.epochs * w.units for w in work])
    epochs = [(r.timings.epoch_s[1:] or r.timings.epoch_s, w.units) for r, w in zip(runs, work, strict=True)]
    if _separable(x) or not all(seconds for seconds, _ in epochs):
        return _line(x, fit_y)
    slope = statistics.median(s / units for seconds, units in epochs for s in seconds)
    return max(0.0, float(np.mean(fit_y - x * slope))), slope


def fit(results: Sequence[RunResult], overhead_s: float, source: str) -> Calibration:
    """Coefficients per device × model × image size by non-negative least squares: test seconds
    on test images first, then fit seconds (less its validation passes at the test cost) on train
    units × epochs; the two intercepts make ``start_s``."""
    groups: dict[tuple[str, str, int], list[RunResult]] = defaultdict(list)
    for r in results:
        groups[(r.device, r.spec.model, r.spec.image_size)].append(r)
    by_device: dict[str, list[Coefficients]] = defaultdict(list)
    counted: dict[str, int] = defaultdict(int)
    fitted: list[Fitted] = []
    notes: list[str] = []
    for (device, model, size), runs in sorted(groups.items()):
        work = [done_work(r) for r in runs]
        tested = np.array([w.test_images - len(r.validation_history) * r.data.n_val for w, r in zip(work, runs, strict=True)])
        validated = np.array([w.test_images for w in work]) - tested
        test_a, test_b = _line(tested, np.array([r.timings.test_s for r in runs]))
        fit_y = np.array([r.timings.fit_s for r in runs]) - test_b * validated
        fit_a, fit_b = _train_line(runs, work, np.maximum(fit_y, 0.0))
        c = Coefficients(model=model, image_size=size, start_s=fit_a + test_a, train_s=fit_b, test_s=test_b, runs=len(runs))
        if not _separable(tested) or not _separable(np.array([w.epochs * w.units for w in work])):
            notes.append(
                f"{model} at {size} px on {device}: its {len(runs)} run(s) do not vary the amount of training or testing; "
                "train cost from epoch times, test cost through the origin"
            )
        by_device[device].append(c)
        counted[device] += len(runs)
        fitted += [Fitted(r, r.timings.fit_s + r.timings.test_s, w.seconds(c, 0.0)) for r, w in zip(runs, work, strict=True)]
    tables = [
        CostTable(device=d, source=source, overhead_s=overhead_s, coefficients=by_device[d])
        for d in sorted(by_device, key=lambda d: -counted[d])
    ]
    return Calibration(tables, fitted, notes)


def calibration_lines(cal: Calibration) -> list[str]:
    """Per run its relative error, then the median and maximum of their absolute values."""
    lines = [f"{'run':<18} {'model':<22} {'px':>4} {'actual s':>10} {'model s':>10} {'error':>8}"]
    for f in sorted(cal.fitted, key=lambda f: (f.result.spec.model, f.result.run_key)):
        s = f.result.spec
        lines.append(
            f"{f.result.run_key:<18} {s.model:<22} {s.image_size:>4} {f.actual_s:>10.2f} {f.model_s:>10.2f} {f.error:>+8.1%}"
        )
    errors = [abs(f.error) for f in cal.fitted]
    lines.append(f"relative error over {len(errors)} runs: median {statistics.median(errors):.1%}, max {max(errors):.1%}")
    return lines + [f"note: {n}" for n in cal.notes]


# --- the estimate -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunCost:
    spec: RunSpec
    seconds: float


@dataclass
class Estimate:
    table: CostTable
    where: str
    runs: list[RunCost]
    missing: list[RunSpec]  # models the table has no coefficients for
    notes: list[str]

    @property
    def total_s(self) -> float:
        return sum(r.seconds for r in self.runs)

    def wall_s(self, parallel: int) -> float:
        """Longest-first onto the least loaded of ``parallel`` slots (within 4/3 of the optimum)."""
        slots = [0.0] * max(1, parallel)
        for r in sorted(self.runs, key=lambda r: -r.seconds):
            heapq.heapreplace(slots, slots[0] + r.seconds)
        return max(slots)

    def by_model(self) -> dict[str, float]:
        shares: dict[str, float] = defaultdict(float)
        for r in self.runs:
            shares[r.spec.model] += r.seconds
        return dict(sorted(shares.items(), key=lambda kv: -kv[1]))


def estimate(runs: Sequence[RunSpec], config: Config, table_path: str | Path | None = None) -> Estimate:
    """Each run's seconds on the first table's device; runs of unmeasured models are listed apart."""
    tables, where = load_tables(table_path)
    table = tables[0]
    counts = ImageCounts(config)
    costed, missing, notes = [], [], []
    for spec in runs:
        found = table.lookup(spec.model, spec.image_size)
        if found is None:
            missing.append(spec)
            continue
        coefficients, note = found
        if note and note not in notes:
            notes.append(note)
        work = planned_work(spec, counts.get(spec.dataset, spec.category))
        costed.append(RunCost(spec, work.seconds(coefficients, table.overhead_s)))
    if len(tables) > 1:
        notes.append(f"the calibration also has tables for {', '.join(t.device for t in tables[1:])}: not used")
    for dataset, source in sorted(counts.sources.items()):
        notes.append(f"image counts of {dataset}: {source}")
    if counts.defaulted:
        notes.append(
            f"image counts of {', '.join(sorted(counts.defaulted))}: unknown here, assumed {DEFAULT_COUNTS} "
            "(train good, test good, test bad) per category, MVTec AD's mean"
        )
    return Estimate(table, where, costed, missing, notes)


def _duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def estimate_lines(est: Estimate, parallel: int, parallel_source: str, gpus_per_run: int = 1) -> list[str]:
    """The report: totals, wall time, the longest runs, the share per model, and its assumptions."""
    total = est.total_s
    lines = [
        f"cost table: {est.where}, measured on {est.table.device}",
        f"{len(est.runs)} runs: {total * gpus_per_run / 3600:.2f} GPU-hours ({gpus_per_run} per run), "
        f"wall {_duration(est.wall_s(parallel))} at {parallel} in parallel ({parallel_source})",
        f"longest {min(TOP, len(est.runs))} runs:",
    ]
    for r in sorted(est.runs, key=lambda r: -r.seconds)[:TOP]:
        s = r.spec
        what = f"{s.model} {s.dataset}/{s.category} {s.image_size}px {s.variant.label()}".rstrip()
        lines.append(f"  {_duration(r.seconds):>8}  {s.run_key}  {what}")
    lines.append("share per model:")
    for model, seconds in est.by_model().items():
        lines.append(f"  {model:<22} {seconds / total if total else 0:>6.1%}  {seconds / 3600:.2f} h")
    if est.missing:
        names = sorted({s.model for s in est.missing})
        lines.append(f"not estimated: {len(est.missing)} runs of {', '.join(names)} (no coefficients on {est.table.device})")
    return lines + [f"note: {n}" for n in est.notes]

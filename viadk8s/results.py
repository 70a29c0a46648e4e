"""What a finished run leaves in the store, and where: the worker writes it, aggregate reads it."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, ValidationError

from viadk8s.errors import Viadk8sError, validation_message
from viadk8s.spec import RunSpec, Sweep
from viadk8s.store import Store

RESULT = "result.json"
SCORES = "scores.csv"
PIXEL_SUMMARY = "pixel_summary.npz"  # per-image pixel counts on one threshold grid (viadk8s.pixel_summary)
HISTOGRAM = "scores.png"
OVERLAY = "overlay-{kind}-{rank:02d}.png"  # kind: "good" (scored highest) or "bad" (scored lowest)
INDEX = ".index"  # remote stores: runs/<sweep>/.index/<shard>.json, results by key with their versions
log = logging.getLogger(__name__)


class Timings(BaseModel):
    fit_s: float
    epoch_s: list[float] = []  # each training epoch (the first may differ: caches fill)
    test_s: float
    test_images_per_s: float
    peak_memory_mb: float
    memory_kind: str  # "cuda" (peak allocated) or "cpu_rss" (peak resident set)


class DataSummary(BaseModel):
    n_train: int
    n_test_good: int
    n_test_bad: int
    pixel_masks: bool
    n_val: int = 0
    changes: dict[str, Any] = {}  # what the experiment's variant did: moved images, drift, validation set
    images: dict[str, Any] = {}  # bit depth applied (and how it was found), masks resized to their image


class Uncertainty(BaseModel):
    """Bootstrap intervals of the image metrics: recomputable from scores.csv with these settings
    (:func:`viadk8s.stats.intervals`)."""

    method: str
    confidence: float
    resamples: int
    seed: int
    intervals: dict[str, list[float]]  # metric: [low, high]


class Overlay(BaseModel):
    """One kept picture of a mistake: an artifact beside the result."""

    file: str
    image: str  # relative to the category folder
    defect: str
    label: int
    score: float


class RunResult(BaseModel):
    model_config = ConfigDict(extra="ignore")  # a newer viadk8s may add fields: read, not refused
    run_key: str
    spec: RunSpec
    metrics: dict[str, float | None]
    timings: Timings
    data: DataSummary
    epochs: int  # planned (the protocol's, capped by max_epochs)
    epochs_run: int | None = None
    tested_epoch: int | None = None  # early stop: the best epoch on validation
    validation_history: list[dict[str, float]] = []  # early stop: the monitored metric per validation
    device: str
    versions: dict[str, str]
    lock_sha256: str | None = None  # viadk8s/requirements.lock's, when the run recorded it
    notes: list[str] = []
    uncertainty: Uncertainty | None = None
    scores_sha256: str | None = None  # of its scores.csv as stored (`viadk8s verify`); older results have none
    pixel_summary_sha256: str | None = None  # of its pixel_summary.npz as stored, where it has one; older results have none
    determinism: dict[str, Any] = {}  # the settings viadk8s.worker.determinism applied; older results have none
    overlays: list[Overlay] = []
    tracking: dict[str, str] = {}
    # facts a model states about its own fit: its `model_report` attribute, if it has one (e.g. InReaCh's bank share)
    model_report: dict[str, Any] = {}
    finished_at: str


def run_prefix(spec: RunSpec) -> str:
    return f"runs/{spec.sweep}/{spec.run_key}"


def sweep_key(sweep_id: str) -> str:
    return f"sweeps/{sweep_id}/sweep.json"


def _known_fields(model: type[BaseModel], data: Any) -> Any:
    """``data`` without the keys ``model`` (and its nested models) does not know: what a newer
    viadk8s adds is dropped, what this one needs is still validated."""
    if not isinstance(data, dict):
        return data
    kept = {}
    for name, value in data.items():
        field = model.model_fields.get(name)
        if field is None:
            continue
        nested = field.annotation
        kept[name] = _known_fields(nested, value) if isinstance(nested, type) and issubclass(nested, BaseModel) else value
    return kept


def parse_result(raw: bytes) -> RunResult:
    """A stored result; ``ValueError`` (one line) when it is not JSON or not a valid result."""
    try:
        return RunResult.model_validate(_known_fields(RunResult, json.loads(raw)))
    except ValidationError as err:
        raise ValueError(f"not a valid result: {validation_message(err)}") from None
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise ValueError(f"not JSON: {str(err).splitlines()[0]}") from None


def is_done(store: Store, spec: RunSpec) -> bool:
    """True when the run's result is committed and valid. An invalid one (truncated by a full disk,
    edited by hand) is not a finished run: it is moved aside, never deleted, and the run is redone."""
    key = f"{run_prefix(spec)}/{RESULT}"
    if not store.exists(key):
        return False
    try:
        parse_result(store.read_bytes(key))
        return True
    except ValueError as err:
        aside = f"{key}.invalid-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}"
        store.move(key, aside)
        log.warning("warning: %s is %s; moved to %s, the run will be redone", key, err, aside)
        return False


def load_scores(store: Store, results: Sequence[RunResult]) -> dict[str, pd.DataFrame]:
    """Each run's ``scores.csv`` by run key (read concurrently); a run without one is left out,
    with a warning: its tables still come from result.json, only its per-image views are missing."""

    def read(result: RunResult) -> pd.DataFrame | None:
        try:
            return pd.read_csv(io.BytesIO(store.read_bytes(f"{run_prefix(result.spec)}/{SCORES}")))
        except FileNotFoundError:
            log.warning("warning: run %s has no %s; it is left out of per-image statistics", result.run_key, SCORES)
            return None

    with ThreadPoolExecutor(max_workers=16) as pool:
        frames = dict(zip((r.run_key for r in results), pool.map(read, results), strict=True))
    return {key: frame for key, frame in frames.items() if frame is not None}


def save_sweep(store: Store, sweep: Sweep) -> None:
    """Record the plan; runs planned earlier under the same sweep id are kept."""
    key = sweep_key(sweep.sweep_id)
    runs = {r.run_key: r for r in sweep.runs}
    if store.exists(key):
        earlier = Sweep.model_validate_json(store.read_bytes(key))
        runs = {**{r.run_key: r for r in earlier.runs}, **runs}
        sweep = sweep.model_copy(update={"created": earlier.created})
    store.write_bytes(key, sweep.model_copy(update={"runs": list(runs.values())}).model_dump_json(indent=2).encode())


def commit_result(store: Store, result: RunResult) -> None:
    """Write the run's ``result.json`` (its commit marker), then record it in its sweep's index.

    On a remote store, aggregation reads the index's few shards instead of one object per run
    (10,000 GETs cost seconds of client and server CPU). The index is only a cache checked against
    the listing: an entry lost when two writers update a shard at once, or left stale, costs one
    fetch, never a wrong or missing result; so a failed index update is a warning, not a failure.
    """
    key = f"{run_prefix(result.spec)}/{RESULT}"
    text = result.model_dump_json(indent=2)
    version = store.write_bytes(key, text.encode())
    if store.local_path(key) is None:
        shard = _index_shard(key)
        entry = {"version": version, "result": text}
        try:
            store.write_bytes(shard, json.dumps({**_read_shard(store, shard), key: entry}).encode())
        except Viadk8sError as err:
            log.warning("warning: %s is committed but not indexed (%s); aggregation will fetch it", key, err)


def _index_shard(result_key: str) -> str:
    """``runs/<sweep>/<run_key>/result.json`` → ``runs/<sweep>/.index/<run_key[:2]>.json`` (≤ 256 shards a sweep)."""
    runs, sweep, run_key = result_key.split("/")[:3]
    return f"{runs}/{sweep}/{INDEX}/{run_key[:2]}.json"


def _read_shard(store: Store, key: str) -> dict[str, dict[str, str]]:
    """An index shard's well-formed entries; none when it is missing or unreadable (it is a cache)."""
    try:
        entries = json.loads(store.read_bytes(key))
    except FileNotFoundError:
        return {}
    except ValueError:
        log.warning("warning: results index %s is unreadable; its results are fetched one by one", key)
        return {}
    return {
        k: e
        for k, e in (entries.items() if isinstance(entries, dict) else ())
        if isinstance(e, dict) and isinstance(e.get("version"), str) and isinstance(e.get("result"), str)
    }


def load_results(store: Store, sweep_id: str | None = None, experiment: str | None = None) -> list[RunResult]:
    """Every committed result of a sweep (or of all sweeps of an experiment).

    Local files are read in turn (cheap). On a remote store the listing says which results exist
    and their versions (ETags); their texts come from the sweeps' indexes where the versions match
    (:func:`commit_result`), and only results missing there or changed are fetched.
    """
    prefix = f"runs/{sweep_id}/" if sweep_id else "runs/"
    listing = store.versions(prefix)
    versions = {k: v for k, v in listing.items() if k.endswith(f"/{RESULT}")}
    if store.local_path(prefix) is not None:
        raw = {k: store.read_bytes(k) for k in versions}
    else:
        raw = _read_incrementally(store, [k for k in listing if f"/{INDEX}/" in k], versions)
    results = []
    for key, text in raw.items():
        try:
            results.append(parse_result(text))
        except ValueError as err:  # one line per bad key; the others still make the tables
            log.warning("warning: skipping %s: %s", key, err)
    return [r for r in results if experiment is None or r.spec.experiment == experiment]


def _read_incrementally(store: Store, shards: list[str], versions: dict[str, str]) -> dict[str, bytes]:
    """Each listed result's text: from the index where its version matches, else fetched; the
    shards that lacked a result are then rewritten with exactly the listed results they hold."""

    def fetch(key: str) -> bytes | None:
        try:
            return store.read_bytes(key)
        except FileNotFoundError:  # removed since the listing: not a result any more
            return None

    with ThreadPoolExecutor(max_workers=32) as pool:
        indexed: dict[str, dict[str, str]] = {}
        for entries in pool.map(lambda shard: _read_shard(store, shard), shards):
            indexed.update(entries)
        texts = {k: indexed[k]["result"].encode() for k, v in versions.items() if k in indexed and indexed[k]["version"] == v}
        missing = [k for k in versions if k not in texts]
        fetched = {k: text for k, text in zip(missing, pool.map(fetch, missing), strict=True) if text is not None}
        texts.update(fetched)
        stale: dict[str, dict[str, dict[str, str]]] = {_index_shard(k): {} for k in fetched}
        for key, text in texts.items():
            if _index_shard(key) in stale:
                stale[_index_shard(key)][key] = {"version": versions[key], "result": text.decode(errors="replace")}
        try:
            list(pool.map(lambda item: store.write_bytes(item[0], json.dumps(item[1]).encode()), stale.items()))
        except Viadk8sError as err:  # read-only credentials: aggregation still works, only slower next time
            log.warning("could not update the results index: %s", err)
    return {k: texts[k] for k in versions if k in texts}

"""What a finished run leaves in the store, and where: the worker writes it, aggregate reads it."""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from viadk8s.errors import Viadk8sError, validation_message
from viadk8s.spec import RunSpec, Sweep
from viadk8s.store import Store

RESULT = "result.json"
SCORES = "scores.csv"
HISTOGRAM = "scores.png"
SNAPSHOT = ".results-snapshot.json"  # what aggregation read last time, with versions (remote stores)
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
    notes: list[str] = []
    tracking: dict[str, str] = {}
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


def save_sweep(store: Store, sweep: Sweep) -> None:
    """Record the plan; runs planned earlier under the same sweep id are kept."""
    key = sweep_key(sweep.sweep_id)
    runs = {r.run_key: r for r in sweep.runs}
    if store.exists(key):
        earlier = Sweep.model_validate_json(store.read_bytes(key))
        runs = {**{r.run_key: r for r in earlier.runs}, **runs}
        sweep = sweep.model_copy(update={"created": earlier.created})
    store.write_bytes(key, sweep.model_copy(update={"runs": list(runs.values())}).model_dump_json(indent=2).encode())


def load_results(store: Store, sweep_id: str | None = None, experiment: str | None = None) -> list[RunResult]:
    """Every committed result of a sweep (or of all sweeps of an experiment).

    Local files are read in turn (cheap). A remote store is read incrementally: the listing gives
    each result's version (ETag), results unchanged since the last aggregation come from a snapshot
    beside them, and only new or changed ones are fetched, by a thread pool.
    """
    prefix = f"runs/{sweep_id}/" if sweep_id else "runs/"
    versions = {k: v for k, v in store.versions(prefix).items() if k.endswith(f"/{RESULT}")}
    if store.local_path(prefix) is not None:
        raw = {k: store.read_bytes(k) for k in versions}
    else:
        raw = _read_incrementally(store, prefix + SNAPSHOT, versions)
    results = []
    for key, text in raw.items():
        try:
            results.append(parse_result(text))
        except ValueError as err:  # one line per bad key; the others still make the tables
            log.warning("warning: skipping %s: %s", key, err)
    return [r for r in results if experiment is None or r.spec.experiment == experiment]


def _read_incrementally(store: Store, snapshot_key: str, versions: dict[str, str]) -> dict[str, bytes]:
    """Each result's text, from the snapshot where its version is unchanged, else fetched."""
    snapshot: dict[str, Any] = {}
    try:
        snapshot = json.loads(store.read_bytes(snapshot_key))
    except FileNotFoundError:
        log.info("no results snapshot %s yet: reading every result", snapshot_key)
    except ValueError:
        log.warning("results snapshot %s is unreadable; reading every result", snapshot_key)
    kept = {
        k: e
        for k, e in snapshot.items()
        if isinstance(e, dict) and e.get("version") == versions.get(k) and isinstance(e.get("result"), str)
    }
    missing = [k for k in versions if k not in kept]
    with ThreadPoolExecutor(max_workers=32) as pool:
        fetched = dict(zip(missing, pool.map(store.read_bytes, missing), strict=True))
    entries = {k: kept.get(k) or {"version": v, "result": fetched[k].decode(errors="replace")} for k, v in versions.items()}
    if entries.keys() != snapshot.keys() or missing:
        try:
            store.write_bytes(snapshot_key, json.dumps(entries).encode())
        except Viadk8sError as err:  # read-only credentials: aggregation still works, only slower next time
            log.warning("could not update the results snapshot %s: %s", snapshot_key, err)
    return {k: e["result"].encode() for k, e in entries.items()}

"""What a finished run leaves in the store, and where: the worker writes it, aggregate reads it."""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import BaseModel, ConfigDict

from viadk8s.errors import Viadk8sError
from viadk8s.spec import RunSpec, Sweep
from viadk8s.store import Store

RESULT = "result.json"
SCORES = "scores.csv"
HISTOGRAM = "scores.png"
SNAPSHOT = ".results-snapshot.json"  # what aggregation read last time, with versions (remote stores)
log = logging.getLogger(__name__)


class Timings(BaseModel):
    fit_s: float
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


class RunResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
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


def is_done(store: Store, spec: RunSpec) -> bool:
    return store.exists(f"{run_prefix(spec)}/{RESULT}")


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
        results = [RunResult.model_validate_json(store.read_bytes(k)) for k in versions]
    else:
        results = [RunResult.model_validate(raw) for raw in _read_incrementally(store, prefix + SNAPSHOT, versions)]
    return [r for r in results if experiment is None or r.spec.experiment == experiment]


def _read_incrementally(store: Store, snapshot_key: str, versions: dict[str, str]) -> list[dict[str, Any]]:
    snapshot: dict[str, Any] = {}
    try:
        snapshot = json.loads(store.read_bytes(snapshot_key))
    except FileNotFoundError:
        pass
    except ValueError:
        log.warning("results snapshot %s is unreadable; reading every result", snapshot_key)
    kept = {k: e for k, e in snapshot.items() if isinstance(e, dict) and e.get("version") == versions.get(k)}
    missing = [k for k in versions if k not in kept]
    with ThreadPoolExecutor(max_workers=32) as pool:
        fetched = dict(zip(missing, pool.map(lambda k: json.loads(store.read_bytes(k)), missing), strict=True))
    entries = {k: kept.get(k) or {"version": v, "result": fetched[k]} for k, v in versions.items()}
    if entries.keys() != snapshot.keys() or missing:
        try:
            store.write_bytes(snapshot_key, json.dumps(entries).encode())
        except Viadk8sError as err:  # read-only credentials: aggregation still works, only slower next time
            log.warning("could not update the results snapshot %s: %s", snapshot_key, err)
    return [e["result"] for e in entries.values()]

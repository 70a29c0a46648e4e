"""What a finished run leaves in the store, and where: the worker writes it, aggregate reads it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import BaseModel, ConfigDict

from viadk8s.spec import RunSpec, Sweep
from viadk8s.store import Store

RESULT = "result.json"
SCORES = "scores.csv"
HISTOGRAM = "scores.png"


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

    Objects in a remote store are fetched by a thread pool (network-bound); local files are read in
    turn, which on a few cores is faster than threads contending for the interpreter.
    """
    prefix = f"runs/{sweep_id}/" if sweep_id else "runs/"
    keys = [k for k in store.list(prefix) if k.endswith(f"/{RESULT}")]

    def read(key: str) -> RunResult:
        return RunResult.model_validate_json(store.read_bytes(key))

    if keys and store.local_path(keys[0]) is not None:
        results = [read(k) for k in keys]
    else:
        with ThreadPoolExecutor(max_workers=32) as pool:
            results = list(pool.map(read, keys))
    return [r for r in results if experiment is None or r.spec.experiment == experiment]

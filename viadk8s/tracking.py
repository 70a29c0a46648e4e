"""MLflow tracking: one MLflow experiment per viadk8s experiment, a parent MLflow run per sweep,
and a child run per run key (re-running a run key updates its child, never duplicates it).

Tracking never decides a run's fate: if MLflow cannot be reached, the result still lands in the
store with ``tracking.status = pending``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from viadk8s.results import HISTOGRAM, SCORES, RunResult, commit_result, load_results, run_prefix
from viadk8s.store import Store

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)
ATTEMPTS = 3


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def _artifact_root(store_uri: str, experiment: str) -> str | None:
    """Beside a local store; a tracking server with remote storage chooses its own."""
    if store_uri.startswith("file://"):
        return f"{store_uri}/mlartifacts/{experiment}"
    return None


def ensure_experiment(tracking_uri: str, store_uri: str, experiment: str) -> tuple[MlflowClient, str]:
    """The MLflow experiment of a viadk8s experiment (created once; also migrates a new sqlite DB)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return client, found.experiment_id
    return client, client.create_experiment(experiment, artifact_location=_artifact_root(store_uri, experiment))


def _find_or_create(client: MlflowClient, experiment_id: str, tags: dict[str, str], match: str) -> tuple[str, bool]:
    """The run ``match`` finds, else a new one. Two processes may both find none and both create one
    (a retried pod racing its predecessor, two ``run`` of one sweep): after creating, every process
    keeps the oldest match and deletes the others, so they converge on one run (a process whose run
    was deleted under it fails its attempt and finds the survivor on the next)."""
    oldest = ["attributes.start_time ASC"]
    found = client.search_runs([experiment_id], filter_string=match, max_results=1, order_by=oldest)
    if found:
        return found[0].info.run_id, True
    created = client.create_run(experiment_id, run_name=tags["mlflow.runName"], tags=tags).info.run_id
    matches = sorted(client.search_runs([experiment_id], filter_string=match), key=lambda r: (r.info.start_time, r.info.run_id))
    if not matches:
        return created, False
    for duplicate in matches[1:]:
        client.delete_run(duplicate.info.run_id)
    return matches[0].info.run_id, matches[0].info.run_id != created


def sweep_run(client: MlflowClient, experiment_id: str, sweep: str) -> str:
    """The parent run of a sweep."""
    tags = {"viadk8s.role": "sweep", "sweep": sweep, "mlflow.runName": sweep}
    run_id, existed = _find_or_create(client, experiment_id, tags, f"tags.`viadk8s.role` = 'sweep' and tags.sweep = '{sweep}'")
    if not existed:
        client.set_terminated(run_id, "FINISHED")
    return run_id


def prepare_tracking(tracking_uri: str, store_uri: str, experiment: str, sweep: str) -> None:
    """Create the experiment and the sweep's parent run once, before workers race to do it.

    Best effort: a failure here is retried (and reported) by each run."""
    try:
        client, experiment_id = ensure_experiment(tracking_uri, store_uri, experiment)
        sweep_run(client, experiment_id, sweep)
    except Exception as err:  # noqa: BLE001 - tracking must not stop a sweep
        log.warning("MLflow not ready (%s); runs will retry and keep results as pending", err)


def log_report(path: Path, tracking_uri: str | None, store_uri: str, experiment: str, sweep: str) -> str | None:
    """Attach a sweep's report to the sweep's parent run; the MLflow run id, or None when tracking is
    off or unreachable (the report file itself is the deliverable: a warning, not a failure)."""
    if not tracking_uri:
        return None
    try:
        client, experiment_id = ensure_experiment(tracking_uri, store_uri, experiment)
        run_id = sweep_run(client, experiment_id, sweep)
        client.log_artifact(run_id, str(path))
        return run_id
    except Exception as err:  # noqa: BLE001 - MLflow down must not lose the report already written
        log.warning("warning: could not log the report to MLflow: %s", str(err).splitlines()[0][:300] if str(err) else err)
        return None


def log_run(result: RunResult, tracking_uri: str | None, store_uri: str, files: list[Path]) -> dict[str, str]:
    """Log to MLflow (a few attempts: sqlite is shared by concurrent local workers)."""
    if not tracking_uri:
        return {"status": "disabled"}
    error = ""
    for attempt in range(ATTEMPTS):
        try:
            return _log(result, tracking_uri, store_uri, files)
        except Exception as err:  # noqa: BLE001 - tracking must not lose the result
            error = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
            log.warning("MLflow tracking attempt %d/%d failed: %s", attempt + 1, ATTEMPTS, error)
            time.sleep(2**attempt)
    return {"status": "pending", "error": error}


def _log(result: RunResult, tracking_uri: str, store_uri: str, files: list[Path]) -> dict[str, str]:
    """Tags, params, metrics and artifacts; re-running a run key updates its MLflow run."""
    spec = result.spec
    client, experiment_id = ensure_experiment(tracking_uri, store_uri, spec.experiment)
    tags = {
        "model": spec.model,
        "dataset": spec.dataset,
        "category": spec.category,
        "seed": str(spec.seed),
        "experiment": spec.experiment,
        "variant": spec.variant.label() or "default",
        "run_key": result.run_key,
        "sweep": spec.sweep,
        "viadk8s.role": "run",
        "mlflow.runName": spec.run_name,
        "mlflow.parentRunId": sweep_run(client, experiment_id, spec.sweep),
    }
    run_id, existing = _find_or_create(
        client, experiment_id, tags, f"tags.run_key = '{result.run_key}' and tags.sweep = '{spec.sweep}'"
    )
    params = {**_flatten(spec.model_dump(mode="json", exclude={"sweep"})), "epochs": str(result.epochs)}
    timings = {f"time_{k}": v for k, v in result.timings.model_dump().items() if isinstance(v, float)}
    metrics = {k: v for k, v in result.metrics.items() if v is not None} | timings
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
        params=[Param(k, v) for k, v in params.items()] if not existing else [],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    for file in files:
        client.log_artifact(run_id, str(file))
    client.log_dict(run_id, result.model_dump(mode="json"), "result.json")
    client.set_terminated(run_id, "FINISHED")
    return {"status": "logged", "run_id": run_id, "tracking_uri": tracking_uri}


def sync_pending(store: Store, tracking_uri: str, sweep_id: str | None = None) -> tuple[int, int]:
    """Replay the runs whose tracking is pending; returns (synced, still pending)."""
    synced = pending = 0
    for result in load_results(store, sweep_id=sweep_id):
        if result.tracking.get("status") != "pending":
            continue
        prefix = run_prefix(result.spec)
        with tempfile.TemporaryDirectory(prefix="viadk8s-sync-") as work:
            files = [Path(work) / name for name in (SCORES, HISTOGRAM)]
            for file in files:
                store.download(f"{prefix}/{file.name}", file)
            tracking = log_run(result, tracking_uri, store.uri, files)
        if tracking["status"] == "logged":
            result.tracking = tracking
            commit_result(store, result)
            synced += 1
        else:
            pending += 1
    return synced, pending

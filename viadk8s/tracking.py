"""MLflow tracking: one MLflow experiment per viadk8s experiment, one MLflow run per run key.

Tracking never decides a run's fate: if MLflow cannot be reached, the result still lands in the
store with ``tracking.status = pending``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from viadk8s.results import RunResult

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


def prepare_tracking(tracking_uri: str, store_uri: str, experiment: str) -> None:
    """Best effort before a sweep starts; a failure here is retried (and reported) by each run."""
    try:
        ensure_experiment(tracking_uri, store_uri, experiment)
    except Exception as err:  # noqa: BLE001 - tracking must not stop a sweep
        log.warning("MLflow not ready (%s); runs will retry and keep results as pending", err)


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
    existing = client.search_runs([experiment_id], filter_string=f"tags.run_key = '{result.run_key}'", max_results=1)
    tags = {"model": spec.model, "dataset": spec.dataset, "category": spec.category, "seed": str(spec.seed),
            "experiment": spec.experiment, "variant": spec.variant.label() or "default", "run_key": result.run_key,
            "sweep": spec.sweep, "mlflow.runName": spec.run_name}
    run_id = existing[0].info.run_id if existing else client.create_run(experiment_id, run_name=spec.run_name, tags=tags).info.run_id
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

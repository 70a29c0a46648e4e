"""Submit a sweep as Jobs, follow it, read a run's log, cancel it: the library behind the CLI.

Resubmission resumes: runs whose ``result.json`` is in the store and Jobs that already exist
are skipped, so submitting the same sweep twice never creates a duplicate Job.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from kubernetes import client

from viadk8s.backends import PackSize, pack, pending
from viadk8s.backends.k8s.client import Cluster, resolve_namespace
from viadk8s.backends.k8s.render import (
    LABEL_PREFIX,
    PACK_LABEL,
    RUN_KEY_LABEL,
    SPEC_ANNOTATION,
    WORKER_SELECTOR,
    RenderedSweep,
    config_map_name,
    render_sweep,
    run_keys,
)
from viadk8s.config import Config
from viadk8s.errors import InfraError, SpecError
from viadk8s.plan import Plan
from viadk8s.results import is_done
from viadk8s.spec import SWEEP_ID
from viadk8s.store import Store
from viadk8s.worker.pack import parse_specs, read_outcomes

DryRun = Literal["client", "server"]
State = Literal["pending", "running", "succeeded", "failed"]
STATES: tuple[State, ...] = ("pending", "running", "succeeded", "failed")
#: What the worker's exit codes mean (viadk8s.worker), and the kernel's OOM kill.
EXIT_MEANINGS = {
    1: "crash in training",
    2: "invalid input",
    3: "infrastructure",
    137: "killed, out of memory?",
    143: "terminated (SIGTERM)",
}
_RUN_KEY = re.compile(r"^[0-9a-f]{16}$")


def check_sweep_id(sweep_id: str) -> str:
    if not SWEEP_ID.match(sweep_id):
        raise SpecError(f"sweep id {sweep_id!r} is not allowed; allowed: 1-40 lowercase letters, digits or '-'")
    return sweep_id


def job_label(labels: dict[str, str]) -> str:
    """The key a worker Job and its pods share: a run's key, or a pack's."""
    return labels.get(RUN_KEY_LABEL) or labels.get(PACK_LABEL, "")


def sweep_selector(sweep_id: str | None) -> str:
    return f"{WORKER_SELECTOR},{LABEL_PREFIX}sweep={check_sweep_id(sweep_id)}" if sweep_id else WORKER_SELECTOR


@dataclass
class SubmitReport:
    sweep_id: str
    namespace: str
    dry_run: DryRun | None
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _apply_config_map(cluster: Cluster, rendered: RenderedSweep, dry_run: str | None) -> None:
    """Create the sweep's ConfigMap, or update it so a resubmission carries the current config."""
    manifest = rendered.config_map
    if not cluster.attempt(
        409,
        f"create ConfigMap {manifest.name}",
        cluster.core.create_namespaced_config_map,
        cluster.namespace,
        manifest.body,
        dry_run=dry_run,
    ):
        cluster.call(
            f"update ConfigMap {manifest.name}",
            cluster.core.patch_namespaced_config_map,
            manifest.name,
            cluster.namespace,
            manifest.body,
            dry_run=dry_run,
            _content_type="application/merge-patch+json",
        )


def existing_jobs(cluster: Cluster, sweep_id: str | None) -> list[client.V1Job]:
    return cluster.call(
        "list Jobs", cluster.batch.list_namespaced_job, cluster.namespace, label_selector=sweep_selector(sweep_id)
    ).items


def submit(
    planned: Plan,
    config: Config,
    cluster: Cluster | None,
    dry_run: DryRun | None = None,
    size: PackSize = 1,
    costs: str | Path | None = None,
) -> SubmitReport:
    """Create the Jobs of a sweep's runs that are neither finished nor in a Job already there;
    with ``size`` (``--pack``) short runs share a Job (:func:`viadk8s.backends.pack`).

    ``cluster`` is None only for ``dry_run="client"``: render and check, contact nothing.
    ``dry_run="server"`` sends every request with ``dryRun=All``: the API server validates and
    admits, nothing is stored. Only a real submission writes the sweep manifest to the store.
    Resubmitting repacks only what is left: finished runs and runs of existing Jobs are not.
    """
    sweep = planned.sweep
    if (cluster is None) != (dry_run == "client"):
        raise ValueError("a cluster is needed unless dry_run='client'")
    namespace = cluster.namespace if cluster else resolve_namespace(config.cluster)
    report = SubmitReport(sweep.sweep_id, namespace, dry_run)
    there = existing_jobs(cluster, sweep.sweep_id) if cluster else []
    claimed = {key: job.metadata.name for job in there for key in run_keys(job.metadata)}
    left = pending(planned, config.open_store(), record=dry_run is None)
    report.done = [spec.run_key for spec in left.done]
    report.existing = sorted({claimed[spec.run_key] for spec in left.todo if spec.run_key in claimed})
    free = [spec for spec in left.todo if spec.run_key not in claimed]
    rendered = render_sweep(planned, config, namespace, pack(free, size, config, costs))
    if config.store_uri.startswith("file://"):
        report.notes.append(
            f"the store {config.store_uri} is a folder on this machine: pods cannot write there; use an s3:// store on a cluster"
        )
    if cluster is None:
        report.created = [job.name for job in rendered.jobs]
        report.notes.append("client dry run: Jobs already on the cluster were not checked")
        return report
    server_dry_run = "All" if dry_run == "server" else None
    _apply_config_map(cluster, rendered, server_dry_run)
    for job in rendered.jobs:
        created = cluster.attempt(
            409, f"create Job {job.name}", cluster.batch.create_namespaced_job, namespace, job.body, dry_run=server_dry_run
        )
        (report.created if created else report.existing).append(job.name)
    return report


@dataclass(frozen=True)
class RunStatus:
    sweep: str
    run_key: str
    job: str
    model: str
    dataset: str
    state: State
    reason: str = ""
    #: seconds from the Job's start to its completion (or until now while it runs); None before it starts
    duration_s: float | None = None


@dataclass
class SweepStatus:
    namespace: str
    runs: list[RunStatus]

    def counts(self) -> dict[State, int]:
        found = Counter(r.state for r in self.runs)
        return {state: found.get(state, 0) for state in STATES}

    @property
    def finished(self) -> bool:
        return all(r.state in ("succeeded", "failed") for r in self.runs)


def _created(obj: Any) -> datetime:
    return obj.metadata.creation_timestamp or datetime.min.replace(tzinfo=UTC)


def _termination(pod: client.V1Pod) -> str:
    """'exit 2 (invalid input): <the worker's last log line>' for a failed worker container."""
    for status in pod.status.container_statuses or []:
        done = status.state.terminated if status.state else None
        if status.name == "worker" and done is not None and done.exit_code:
            meaning = EXIT_MEANINGS.get(done.exit_code, done.reason or "error")
            lines = [line for line in (done.message or "").splitlines() if line.strip()]
            last = lines[-1].strip().removeprefix("error: ") if lines else ""  # the worker's one-line error
            return f"exit {done.exit_code} ({meaning})" + (f": {last}" if last else "")
    return ""


def _waiting(pod: client.V1Pod) -> str:
    """Why a pod has not started: unschedulable, pulling or failing to pull the image, ..."""
    for status in pod.status.container_statuses or []:
        waiting = status.state.waiting if status.state else None
        if waiting is not None and waiting.reason:
            return f"{waiting.reason}: {waiting.message}" if waiting.message else waiting.reason
    for condition in pod.status.conditions or []:
        if condition.type == "PodScheduled" and condition.status == "False":
            return f"{condition.reason}: {condition.message}" if condition.message else str(condition.reason)
    return "pod pending"


def job_duration(job: client.V1Job, now: datetime | None = None) -> float | None:
    """Seconds the Job has run: start to completion (or to the last failure, or to now)."""
    status = job.status or client.V1JobStatus()
    if status.start_time is None:
        return None
    failed = [c.last_transition_time for c in status.conditions or [] if c.type == "Failed" and c.status == "True"]
    end = status.completion_time or (failed[0] if failed else None) or now or datetime.now(UTC)
    return max((end - status.start_time).total_seconds(), 0.0)


def job_state(job: client.V1Job, pods: list[client.V1Pod]) -> tuple[State, str]:
    """A Job's state and the reason a person needs, from its conditions and its newest pod."""
    status = job.status or client.V1JobStatus()
    conditions = {c.type: c for c in status.conditions or [] if c.status == "True"}
    newest = max(pods, key=_created) if pods else None
    detail = next((d for d in (_termination(p) for p in sorted(pods, key=_created, reverse=True)) if d), "")
    if "Complete" in conditions or "SuccessCriteriaMet" in conditions:
        return "succeeded", ""
    for kind in ("Failed", "FailureTarget"):
        if kind in conditions:
            condition = conditions[kind]
            reason = f"{condition.reason}: {detail or condition.message or ''}".rstrip(": ")
            return "failed", reason
    if job.spec and job.spec.suspend:
        return "pending", "suspended: waiting for its queue"
    if newest is None or newest.status is None:
        return "pending", "no pod yet"
    retry = f"retry {status.failed} after {detail or 'a failure'}" if status.failed else ""
    if newest.status.phase == "Running":
        return "running", retry
    if newest.status.phase == "Pending":
        return "pending", "; ".join(r for r in (_waiting(newest), retry) if r)
    return "running", retry or f"pod {str(newest.status.phase).lower()}"


def _pack_states(job: client.V1Job, state: State, reason: str, pods: list[client.V1Pod], store: Store | None) -> list[RunStatus]:
    """Each run of a pack: succeeded once its result is in the store (when one is given), else by
    the outcome line the worker printed for it (a failed pod's termination message keeps them),
    else the pack's own state."""
    printed: dict[str, tuple[int, str]] = {}
    for pod in sorted(pods, key=_created):  # the newest pod's lines win
        for status in (pod.status and pod.status.container_statuses) or []:
            done = status.state.terminated if status.state else None
            if status.name == "worker" and done is not None:
                printed.update(read_outcomes(done.message or ""))
    labels = job.metadata.labels or {}
    runs = []
    for spec in parse_specs(job.spec.template.metadata.annotations[SPEC_ANNOTATION]):
        code, message = printed.get(spec.run_key, (None, ""))
        if code == 0 or (store is not None and is_done(store, spec)):
            run_state, run_reason = "succeeded", ""
        elif code is not None:
            run_state, run_reason = "failed", f"exit {code} ({EXIT_MEANINGS.get(code, 'error')}): {message}"
        else:
            run_state, run_reason = state, reason
        runs.append(_run_status(job, labels, spec.run_key, run_state, run_reason))
    return runs


def _run_status(job: client.V1Job, labels: dict[str, str], run_key: str, state: State, reason: str) -> RunStatus:
    return RunStatus(
        sweep=labels.get(f"{LABEL_PREFIX}sweep", ""),
        run_key=run_key,
        job=job.metadata.name,
        model=labels.get(f"{LABEL_PREFIX}model", ""),
        dataset=labels.get(f"{LABEL_PREFIX}dataset", ""),
        state=state,
        reason=reason,
        duration_s=job_duration(job),
    )


def sweep_status(cluster: Cluster, sweep_id: str | None = None, store: Store | None = None) -> SweepStatus:
    """Every run of the worker Jobs of one sweep (or of all sweeps) in the namespace; the runs of
    a pack one by one (``store``: where finished runs' results are, to tell them apart early)."""
    jobs = existing_jobs(cluster, sweep_id)
    pods = cluster.call(
        "list pods", cluster.core.list_namespaced_pod, cluster.namespace, label_selector=sweep_selector(sweep_id)
    ).items
    by_job: dict[tuple[str, str], list[client.V1Pod]] = {}
    for pod in pods:
        labels = pod.metadata.labels or {}
        by_job.setdefault((labels.get(f"{LABEL_PREFIX}sweep", ""), job_label(labels)), []).append(pod)
    runs = []
    for job in sorted(jobs, key=lambda j: j.metadata.name):
        labels = job.metadata.labels or {}
        key = (labels.get(f"{LABEL_PREFIX}sweep", ""), job_label(labels))
        state, reason = job_state(job, by_job.get(key, []))
        if PACK_LABEL in labels:
            runs += _pack_states(job, state, reason, by_job.get(key, []), store)
        else:
            runs.append(_run_status(job, labels, key[1], state, reason))
    return SweepStatus(cluster.namespace, runs)


def wait(
    cluster: Cluster,
    sweep_id: str | None,
    on_update: Callable[[SweepStatus], None],
    interval: float = 15.0,
    timeout: float | None = None,
) -> SweepStatus:
    """Poll until every Job of the sweep (of all sweeps: None) has succeeded or failed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = sweep_status(cluster, sweep_id)
        on_update(status)
        if status.finished:
            return status
        if deadline is not None and time.monotonic() >= deadline:
            counts = status.counts()
            raise InfraError(
                f"sweep {sweep_id or '(all)'}: {counts['pending']} pending and {counts['running']} running after {timeout:.0f} s"
            )
        time.sleep(interval)


def run_logs(cluster: Cluster, run_key: str, sweep_id: str | None = None, tail: int | None = None) -> tuple[str, str]:
    """The worker log of a run's newest pod (a pack's pod holds its runs' logs in turn): (pod name,
    text); a pod whose container has not started has no log yet, which is said in one line (the
    API server answers 400 or nothing)."""
    if not _RUN_KEY.match(run_key):
        raise SpecError(f"run key {run_key!r} is not allowed; allowed: the 16 hex digits shown by `viadk8s plan` or `status`")
    selector = f"{sweep_selector(sweep_id)},{RUN_KEY_LABEL}={run_key}"
    pods = cluster.call("list pods", cluster.core.list_namespaced_pod, cluster.namespace, label_selector=selector).items
    if not pods:  # a run of a pack: its pods carry their runs' keys in an annotation
        selector = f"{sweep_selector(sweep_id)},{PACK_LABEL}"
        packed = cluster.call("list pods", cluster.core.list_namespaced_pod, cluster.namespace, label_selector=selector).items
        pods = [pod for pod in packed if run_key in run_keys(pod.metadata)]
    if not pods:
        raise SpecError(
            f"no pod of run {run_key} in namespace {cluster.namespace!r} "
            "(not started, or its Job was deleted after ttl_seconds_after_finished)"
        )
    pod = max(pods, key=_created)
    name = pod.metadata.name
    if not _started(pod):
        raise SpecError(f"run {run_key}: pod {name} has not started yet ({_waiting(pod)}); no log to show")
    text = cluster.call(
        f"read the log of pod {name}",
        cluster.core.read_namespaced_pod_log,
        name,
        cluster.namespace,
        container="worker",
        tail_lines=tail,
    )
    return name, text or ""


def _started(pod: client.V1Pod) -> bool:
    """Whether the worker container has run (running or terminated): only then is there a log."""
    for status in (pod.status and pod.status.container_statuses) or []:
        if status.name == "worker" and status.state and (status.state.running or status.state.terminated):
            return True
    return False


def cancel(cluster: Cluster, sweep_id: str) -> list[str]:
    """Delete a sweep's Jobs (their pods go with background propagation) and its ConfigMap."""
    names = sorted(job.metadata.name for job in existing_jobs(cluster, sweep_id))
    options = client.V1DeleteOptions(propagation_policy="Background")
    for name in names:
        cluster.attempt(404, f"delete Job {name}", cluster.batch.delete_namespaced_job, name, cluster.namespace, body=options)
    config_map = config_map_name(sweep_id)
    cluster.attempt(
        404, f"delete ConfigMap {config_map}", cluster.core.delete_namespaced_config_map, config_map, cluster.namespace
    )
    return names

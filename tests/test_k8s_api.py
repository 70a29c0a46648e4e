"""submit / status / logs / cancel against a Kubernetes API double (kmock) on 127.0.0.1.

The double checks client logic only: requests, label selectors, resumption, error lines. It is
no scheduler: tests set Job and pod status themselves, as the controllers would.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml
from typer.testing import CliRunner

from tests.checks import stored_result
from viadk8s.cli import app
from viadk8s.config import Config, load_config
from viadk8s.errors import InfraError, SpecError
from viadk8s.k8s import jobs
from viadk8s.k8s.client import Cluster, connect
from viadk8s.k8s.render import config_map_name
from viadk8s.plan import Plan, Selection, plan
from viadk8s.results import RESULT, run_prefix, sweep_key
from viadk8s.store import open_store

NAMESPACE = "bench"
JOBS = kmock.resource("batch/v1/jobs")


class ApiDouble(kmock.KubernetesEmulator):
    """kmock's emulator plus what a real API server does that our client relies on:
    equality label selectors on lists, and ``dryRun=All`` requests that store nothing."""

    async def _serve_list(self, request: kmock.Request) -> Any:
        listing = await super()._serve_list(request)
        selector = request.params.get("labelSelector")
        if selector:
            wanted = dict(term.split("=", 1) for term in selector.split(","))
            listing["items"] = [
                o for o in listing["items"] if wanted.items() <= ((o.get("metadata") or {}).get("labels") or {}).items()
            ]
        return listing

    async def _handle(self, request: kmock.Request) -> Any:
        if request.params.get("dryRun") == "All":
            return await kmock.RawHandler._handle(self, request)  # answered by the reaction below, not stored
        return await super()._handle(request)


@dataclass
class Server:
    handler: ApiDouble
    url: str
    loop: asyncio.AbstractEventLoop

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    def objects(self, resource: kmock.resource) -> list[dict[str, Any]]:
        return [obj.raw for (res, _, _), obj in list(self.handler.objects.items()) if res == resource and not obj.deleted]


def _write_kubeconfig(path: Path, server: str) -> None:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "double",
                "clusters": [{"name": "double", "cluster": {"server": server}}],
                "users": [{"name": "tester", "user": {"token": "not-a-secret"}}],
                "contexts": [{"name": "double", "context": {"cluster": "double", "user": "tester", "namespace": NAMESPACE}}],
            }
        )
    )


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """The double on a free 127.0.0.1 port in a thread of its own, and a kubeconfig pointing at it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="kmock", daemon=True)
    thread.start()
    handler = ApiDouble()
    kserver = kmock.Server(handler, host="127.0.0.1")

    async def start() -> None:
        await handler.__aenter__()
        await kserver.__aenter__()
        for resource in ("batch/v1/jobs", "v1/pods", "v1/configmaps"):
            handler.resources[resource] = {}
        handler[kmock.action.CREATE, kmock.params({"dryRun": "All"})] << (lambda request: request.data)

    async def stop() -> None:
        await kserver.__aexit__(None, None, None)
        await handler.__aexit__(None, None, None)

    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    server = Server(handler, str(kserver.url).rstrip("/"), loop)
    _write_kubeconfig(tmp_path / "kubeconfig", server.url)
    for var in ("VIADK8S_NAMESPACE", "VIADK8S_CONTEXT", "VIADK8S_IMAGE", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    try:
        yield server
    finally:
        server.run(stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(store=str(tmp_path / "store"))


def _plan(config: Config, sweep: str = "s1", seeds: list[int] | None = None) -> Plan:
    """patchcore at 128 px: two runs (the synthetic dataset's two categories) per seed."""
    return plan("input_size", Selection(models=["patchcore"], seeds=seeds or [1], image_sizes=[128], sweep=sweep), config)


def _cluster(config: Config) -> Cluster:
    return connect(config.cluster)


# --- submit ----------------------------------------------------------------------------------------


def test_submit_creates_jobs_and_a_resubmission_creates_none(api: Server, config: Config) -> None:
    planned = _plan(config)
    cluster = _cluster(config)
    assert cluster.namespace == NAMESPACE  # from the kube context, like kubectl
    first = jobs.submit(planned, config, cluster)
    assert len(first.created) == len(planned.sweep.runs) == 2 and not first.existing
    stored = api.objects(JOBS)
    assert sorted(j["metadata"]["name"] for j in stored) == sorted(first.created)
    assert all(j["metadata"]["namespace"] == NAMESPACE for j in stored)
    assert open_store(config.store_uri).exists(sweep_key("s1"))
    config_maps = api.objects(kmock.resource("v1/configmaps"))
    assert [c["metadata"]["name"] for c in config_maps] == [config_map_name("s1")]

    again = jobs.submit(planned, config, _cluster(config))
    assert again.created == [] and sorted(again.existing) == sorted(first.created)
    assert len(api.handler[kmock.action.CREATE, JOBS]) == 2  # no duplicate create was even attempted
    assert len(api.objects(JOBS)) == 2


def test_submit_skips_runs_whose_result_is_in_the_store(api: Server, config: Config) -> None:
    planned = _plan(config)
    done = planned.sweep.runs[0]
    open_store(config.store_uri).write_bytes(f"{run_prefix(done)}/{RESULT}", stored_result(done))
    report = jobs.submit(planned, config, _cluster(config))
    assert report.done == [done.run_key] and len(report.created) == 1
    assert done.run_key not in report.created[0]


def test_server_dry_run_sends_dry_run_and_stores_nothing(api: Server, config: Config) -> None:
    report = jobs.submit(_plan(config), config, _cluster(config), dry_run="server")
    assert len(report.created) == 2
    creates = api.handler[kmock.action.CREATE]
    assert len(creates) == 3 and all(request.params.get("dryRun") == "All" for request in creates)
    assert api.objects(JOBS) == []
    assert not open_store(config.store_uri).exists(sweep_key("s1"))


def test_client_dry_run_contacts_nothing(api: Server, config: Config) -> None:
    report = jobs.submit(_plan(config), config, None, dry_run="client")
    assert len(report.created) == 2 and report.namespace == NAMESPACE
    assert len(api.handler) == 0


def test_submit_a_variant_experiment(api: Server, config: Config) -> None:
    planned = plan("validation", Selection(models=["fastflow"], seeds=[1], categories=["tiles"]), config)
    report = jobs.submit(planned, config, _cluster(config))
    assert len(report.created) == 4  # one Job per validation strategy


# --- status ---------------------------------------------------------------------------------------


def _set_job_status(cluster: Cluster, name: str, status: dict[str, Any]) -> None:
    cluster.batch.patch_namespaced_job_status(name, NAMESPACE, {"status": status}, _content_type="application/merge-patch+json")


def _pod(job: dict[str, Any], suffix: str, created: str, status: dict[str, Any]) -> dict[str, Any]:
    """A pod of ``job`` as the Job controller makes it: the template's labels plus the job name."""
    name = job["metadata"]["name"]
    labels = {**job["spec"]["template"]["metadata"]["labels"], "batch.kubernetes.io/job-name": name}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{name}-{suffix}", "namespace": NAMESPACE, "creationTimestamp": created, "labels": labels},
        "spec": {"containers": [{"name": "worker", "image": "x"}]},
        "status": status,
    }


def _terminated(code: int, message: str) -> dict[str, Any]:
    worker = {
        "name": "worker",
        "image": "x",
        "imageID": "",
        "ready": False,
        "restartCount": 0,
        "state": {"terminated": {"exitCode": code, "message": message}},
    }
    return {"phase": "Failed", "containerStatuses": [worker]}


def test_status_reports_each_state_with_its_reason(api: Server, config: Config) -> None:
    cluster = _cluster(config)
    jobs.submit(_plan(config, seeds=[1, 2, 3]), config, cluster)
    stored = sorted(api.objects(JOBS), key=lambda j: j["metadata"]["name"])
    ok, bad, running, pending, queued, *_ = stored
    _set_job_status(cluster, ok["metadata"]["name"], {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]})
    _set_job_status(
        cluster,
        bad["metadata"]["name"],
        {
            "failed": 1,
            "conditions": [
                {"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "exit code 2 matches rule 1"}
            ],
        },
    )
    cluster.core.create_namespaced_pod(
        NAMESPACE,
        _pod(
            bad,
            "a",
            "2026-01-01T00:00:00Z",
            _terminated(2, "loading...\nerror: dataset 'visa' is not available on this machine\n"),
        ),
    )
    _set_job_status(cluster, running["metadata"]["name"], {"active": 1, "failed": 1})
    cluster.core.create_namespaced_pod(NAMESPACE, _pod(running, "a", "2026-01-01T00:00:00Z", _terminated(3, "error: S3 timeout")))
    cluster.core.create_namespaced_pod(NAMESPACE, _pod(running, "b", "2026-01-01T01:00:00Z", {"phase": "Running"}))
    _set_job_status(cluster, pending["metadata"]["name"], {"active": 1})
    unschedulable = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/3 nodes: Insufficient nvidia.com/gpu",
    }
    cluster.core.create_namespaced_pod(
        NAMESPACE, _pod(pending, "a", "2026-01-01T00:00:00Z", {"phase": "Pending", "conditions": [unschedulable]})
    )
    cluster.batch.patch_namespaced_job(
        queued["metadata"]["name"], NAMESPACE, {"spec": {"suspend": True}}, _content_type="application/merge-patch+json"
    )

    status = jobs.sweep_status(cluster, "s1")
    by_job = {run.job: run for run in status.runs}
    assert len(status.runs) == 6 and not status.finished
    assert by_job[ok["metadata"]["name"]].state == "succeeded"
    failed = by_job[bad["metadata"]["name"]]
    assert failed.state == "failed"
    assert failed.reason == "PodFailurePolicy: exit 2 (invalid input): error: dataset 'visa' is not available on this machine"
    assert (by_job[running["metadata"]["name"]].state, by_job[running["metadata"]["name"]].reason) == (
        "running",
        "retry 1 after exit 3 (infrastructure): error: S3 timeout",
    )
    assert by_job[pending["metadata"]["name"]].reason == "Unschedulable: 0/3 nodes: Insufficient nvidia.com/gpu"
    assert by_job[queued["metadata"]["name"]].reason == "suspended: waiting for its queue"
    assert status.counts() == {"pending": 3, "running": 1, "succeeded": 1, "failed": 1}
    succeeded = by_job[ok["metadata"]["name"]]
    assert succeeded.model == "patchcore" and ok["metadata"]["name"].endswith(succeeded.run_key)


def test_status_of_all_sweeps_and_wait(api: Server, config: Config) -> None:
    cluster = _cluster(config)
    jobs.submit(_plan(config, sweep="s1"), config, cluster)
    jobs.submit(_plan(config, sweep="s2"), config, cluster)
    assert {run.sweep for run in jobs.sweep_status(cluster).runs} == {"s1", "s2"}
    seen: list[dict[str, int]] = []
    with pytest.raises(InfraError, match=r"sweep s1: 2 pending and 0 running after 0 s"):
        jobs.wait(cluster, "s1", on_update=lambda s: seen.append(s.counts()), interval=0.01, timeout=0)
    for job in api.objects(JOBS):
        if job["metadata"]["labels"]["viadk8s.io/sweep"] == "s1":
            _set_job_status(cluster, job["metadata"]["name"], {"conditions": [{"type": "Complete", "status": "True"}]})
    final = jobs.wait(cluster, "s1", on_update=lambda s: seen.append(s.counts()), interval=0.01, timeout=5)
    assert final.finished and final.counts()["succeeded"] == 2 and seen[-1]["succeeded"] == 2


# --- logs and cancel ------------------------------------------------------------------------------


def test_logs_come_from_the_newest_pod_of_the_run(api: Server, config: Config) -> None:
    cluster = _cluster(config)
    jobs.submit(_plan(config), config, cluster)
    job = api.objects(JOBS)[0]
    run_key = job["metadata"]["labels"]["viadk8s.io/run-key"]
    for suffix, created in (("old", "2026-01-01T00:00:00Z"), ("new", "2026-01-02T00:00:00Z")):
        cluster.core.create_namespaced_pod(NAMESPACE, _pod(job, suffix, created, {"phase": "Running"}))
        path = f"/api/v1/namespaces/{NAMESPACE}/pods/{job['metadata']['name']}-{suffix}/log"
        api.handler[f"get {path}"] << {"Content-Type": "text/plain"} << f"log of {suffix}\n".encode()
    pod, text = jobs.run_logs(cluster, run_key, "s1")
    assert (pod, text) == (f"{job['metadata']['name']}-new", "log of new\n")
    with pytest.raises(SpecError, match="no pod of run 0123456789abcdef"):
        jobs.run_logs(cluster, "0123456789abcdef")
    with pytest.raises(SpecError, match="run key 'patchcore' is not allowed"):
        jobs.run_logs(cluster, "patchcore")


def test_cancel_deletes_the_sweep_with_background_propagation(api: Server, config: Config) -> None:
    cluster = _cluster(config)
    jobs.submit(_plan(config, sweep="s1"), config, cluster)
    jobs.submit(_plan(config, sweep="s2"), config, cluster)
    deleted = jobs.cancel(cluster, "s1")
    assert len(deleted) == 2
    remaining = api.objects(JOBS)
    assert {j["metadata"]["labels"]["viadk8s.io/sweep"] for j in remaining} == {"s2"}
    deletes = [r for r in api.handler[kmock.action.DELETE] if r.resource == JOBS]
    assert len(deletes) == 2 and all(r.data["propagationPolicy"] == "Background" for r in deletes)
    assert [c["metadata"]["name"] for c in api.objects(kmock.resource("v1/configmaps"))] == [config_map_name("s2")]
    assert jobs.cancel(cluster, "s1") == []
    with pytest.raises(SpecError, match="sweep id 'S 1' is not allowed"):
        jobs.cancel(cluster, "S 1")


# --- errors: one line, the promised exit code -------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_api_server_is_one_line_exit_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(InfraError, match=r"cannot reach the Kubernetes API server at http://127.0.0.1:\d+: Connection refused"):
        jobs.sweep_status(connect(load_config().cluster))
    for args in (
        ["status"],
        ["submit", "-e", "input_size", "--models", "patchcore"],
        ["logs", "0123456789abcdef"],
        ["cancel", "--sweep", "s1"],
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 3, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "cannot reach the Kubernetes API server" in errors[0]


def test_no_cluster_configured_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 3 and "error: no Kubernetes cluster configured" in result.output


def test_forbidden_names_the_action_and_rbac(api: Server, config: Config) -> None:
    forbidden = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": 403,
        "reason": "Forbidden",
        "message": 'jobs.batch is forbidden: User "tester" cannot list resource "jobs"',
    }
    api.handler[kmock.action.LIST, JOBS] << 403 << forbidden
    with pytest.raises(InfraError) as err:
        jobs.sweep_status(_cluster(config), "s1")
    assert str(err.value) == (
        "list Jobs in namespace 'bench': jobs.batch is forbidden: User \"tester\" cannot list "
        'resource "jobs" (check the credentials and RBAC of the kube context)'
    )


def test_cli_submit_status_cancel_round_trip(api: Server, tmp_path: Path) -> None:
    runner = CliRunner()
    store = str(tmp_path / "store")
    args = ["submit", "-e", "input_size", "--models", "patchcore", "--seeds", "1", "--image-size", "128", "--store", store]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "2 Jobs created, 0 already there" in first.output
    again = runner.invoke(app, args)
    assert "0 Jobs created, 2 already there" in again.output
    status = runner.invoke(app, ["status", "--sweep", "input-size"])
    assert status.exit_code == 0 and "2 pending" in status.output
    waited = runner.invoke(app, [*args, "--wait", "--timeout", "0"])
    assert waited.exit_code == 3 and "error: sweep input-size: 2 pending and 0 running after 0 s" in waited.output
    cluster = _cluster(load_config())
    for job in api.objects(JOBS):
        _set_job_status(cluster, job["metadata"]["name"], {"conditions": [{"type": "Complete", "status": "True"}]})
    watched = runner.invoke(app, ["status", "--sweep", "input-size", "--watch", "--interval", "1"])
    assert watched.exit_code == 0 and "2 succeeded" in watched.output and "(2/2 finished)" in watched.output
    cancelled = runner.invoke(app, ["cancel", "--sweep", "input-size", "-n", NAMESPACE])
    assert cancelled.exit_code == 0 and "deleted 2 Jobs in namespace bench" in cancelled.output

"""The product's main path on a real Kubernetes (tests.cluster: v1.36 control plane, containerd and a
kubelet on 127.0.0.1): ``helm install``, then ``viadk8s submit / status / logs / aggregate / cancel`` as
the chart's ServiceAccount, with the worker image's pods writing to SeaweedFS and the chart's MLflow.

These tests follow README "A cluster on this machine" step by step and run in order, sharing one
release: the sweep, the exit-code contract on the real Job controller, cancel and resume, and the
nightly CronJob with its regression gate. They need root, podman, the worker image
(``make image-local``) and the Kubernetes binaries; without them they skip, and under CI=true they fail.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pytest
import urllib3
import yaml
from mlflow.tracking import MlflowClient

from tests.cluster import Kube
from tests.conftest import missing
from tests.servers import BUCKET, S3Server, free_port
from viadk8s.lock import lock_sha256
from viadk8s.results import RESULT, parse_result

ROOT = Path(__file__).resolve().parents[1]
IMAGE = os.environ.get("VIADK8S_TEST_IMAGE", "localhost/viadk8s:local")
NAMESPACE = "viadk8s"
RELEASE = "viadk8s"  # the chart's full name is then "viadk8s": ServiceAccount, ConfigMap viadk8s-config
PREFIX = "cluster"
STORE = f"s3://{BUCKET}/{PREFIX}"
TINY = {"categories": ["tiles", "fabric"], "n_train": 10, "n_test_good": 6, "n_test_bad": 6, "size": 64}
ONE = {**TINY, "categories": ["tiles"]}
#: the worker Jobs' pods (one at a time: the node advertises one GPU): PaDiM at 128 px peaks near 6 GB
POD_RESOURCES = {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"cpu": "2", "memory": "7Gi"}}
BASELINE = f"s3://{BUCKET}/baselines/nightly.runs.csv"
pytestmark = pytest.mark.slow


def helm() -> str:
    found = shutil.which("helm", path=str(ROOT / ".tools" / "bin")) or shutil.which("helm")
    if found is None:
        missing("helm not found in .tools/bin or on PATH: run `make tools`")
    return str(found)


@dataclass
class Release:
    """The installed chart and what a user of it has: the ServiceAccount's kubeconfig and the viadk8s.yaml."""

    kube: Kube
    s3: S3Server
    mlflow_uri: str
    workdir: Path
    env: dict[str, str]

    def cli(self, *args: str, timeout: float = 900, admin: bool = False) -> subprocess.CompletedProcess[str]:
        env = {**self.env, **({"KUBECONFIG": str(self.kube.kubeconfig)} if admin else {})}
        return subprocess.run(
            [sys.executable, "-m", "viadk8s", *args],
            capture_output=True,
            text=True,
            cwd=self.workdir,
            env=env,
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str, timeout: float = 900) -> str:
        done = self.cli(*args, timeout=timeout)
        assert done.returncode == 0, f"viadk8s {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def results(self, sweep: str) -> list[str]:
        """The result.json keys of a sweep in the bucket."""
        s3 = boto3.client("s3", endpoint_url=self.s3.endpoint, **_credentials(self.s3))
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{PREFIX}/runs/{sweep}/")
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []) if o["Key"].endswith(f"/{RESULT}"))

    def result(self, key: str) -> Any:
        s3 = boto3.client("s3", endpoint_url=self.s3.endpoint, **_credentials(self.s3))
        return parse_result(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())

    def pods(self, selector: str) -> list[dict[str, Any]]:
        return self.kube.json("pods", "-n", NAMESPACE, "-l", selector)["items"]

    def jobs(self, sweep: str) -> list[dict[str, Any]]:
        return self.kube.json("jobs", "-n", NAMESPACE, "-l", f"viadk8s.io/sweep={sweep}")["items"]


def _credentials(s3: S3Server) -> dict[str, str]:
    env = s3.env
    return {
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_DEFAULT_REGION"],
    }


def _values(s3: S3Server, kube: Kube, mlflow_port: int) -> dict[str, Any]:
    """The values a user of a single-node lab cluster writes (README "A cluster on this machine")."""
    return {
        "image": {"repository": IMAGE.rsplit(":", 1)[0], "tag": IMAGE.rsplit(":", 1)[1], "pullPolicy": "Never"},
        "hostNetwork": True,
        "credentials": {"s3": {"existingSecret": "viadk8s-s3"}},
        "config": {
            "store": STORE,
            "s3": {"addressing_style": "path", "max_attempts": 2},
            "datasets": {"tiny": {"synthetic": TINY}, "one": {"synthetic": ONE}},
            "cluster": {
                "image": IMAGE,
                "image_pull_policy": "Never",
                "resources": POD_RESOURCES,
                "shm_size": "256Mi",
                "job": {"backoff_limit": 3, "active_deadline_seconds": 1800},
            },
        },
        "mlflow": {
            "port": mlflow_port,
            "persistence": {"enabled": False},
        },
        "nightly": {
            "enabled": True,
            "schedule": "0 1 1 1 *",  # never during a test: Jobs are created from it by hand
            "experiment": "evaluation",
            "datasets": "one",
            "models": "padim",
            "maxEpochs": 1,
            "interval": 3,
            "extraArgs": ["--image-size", "64", "--weights", "random"],
            "baseline": BASELINE,
            "tolerance": 1.0,
            # no kube-proxy here: the in-cluster client reaches the API server on the node's 127.0.0.1
            "extraEnv": [
                {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
                {"name": "KUBERNETES_SERVICE_PORT", "value": str(kube.api_port)},
            ],
        },
    }


@pytest.fixture(scope="module")
def release(kube: Kube, s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    """README's cluster walkthrough: load the image, create the namespace and the S3 Secret, helm install,
    read viadk8s.yaml from the chart's ConfigMap, and act as the chart's ServiceAccount from then on."""
    if shutil.which("podman") is None or subprocess.run(["podman", "image", "exists", IMAGE], check=False).returncode:
        missing(f"image {IMAGE} not built: make image-local")
    kube.load_image(IMAGE)
    work = tmp_path_factory.mktemp("cluster-user")
    kube.kubectl("create", "namespace", NAMESPACE)
    secret = {**s3.env, "AWS_ENDPOINT_URL": s3.endpoint}
    kube.kubectl(
        "-n", NAMESPACE, "create", "secret", "generic", "viadk8s-s3", *(f"--from-literal={k}={v}" for k, v in secret.items())
    )
    mlflow_port = free_port()
    values = work / "values.yaml"
    values.write_text(yaml.safe_dump(_values(s3, kube, mlflow_port)))
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig), "COLUMNS": "400"}
    install = subprocess.run(
        [
            helm(),
            "install",
            RELEASE,
            str(ROOT / "charts" / "viadk8s"),
            "-n",
            NAMESPACE,
            "-f",
            str(values),
            "--wait",
            "--timeout",
            "5m",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
        check=False,
    )
    assert install.returncode == 0, f"helm install:\n{install.stdout}\n{install.stderr}\n{kube.kubectl('get', 'events', '-A')}"
    config = kube.kubectl("-n", NAMESPACE, "get", "configmap", "viadk8s-config", "-o", "jsonpath={.data.viadk8s\\.yaml}")
    (work / "viadk8s.yaml").write_text(config)
    sa = kube.token_kubeconfig(RELEASE, NAMESPACE, work / "sa.kubeconfig")
    user_env = {**os.environ, **s3.env, "KUBECONFIG": str(sa), "VIADK8S_CONFIG": str(work / "viadk8s.yaml"), "COLUMNS": "400"}
    for var in ("VIADK8S_STORE", "MLFLOW_TRACKING_URI", "VIADK8S_NAMESPACE", "KUBERNETES_SERVICE_HOST"):
        user_env.pop(var, None)
    yield Release(kube, s3, f"http://127.0.0.1:{mlflow_port}", work, user_env)
    subprocess.run(
        [helm(), "uninstall", RELEASE, "-n", NAMESPACE, "--wait"], env=env, capture_output=True, timeout=120, check=False
    )


# --- 1. helm install -----------------------------------------------------------------------------------


def test_helm_install_is_accepted_and_mlflow_becomes_ready(release: Release) -> None:
    kube = release.kube
    deployment = kube.json("deployment", "-n", NAMESPACE, f"{RELEASE}-mlflow")
    assert deployment["status"].get("readyReplicas") == 1
    for kind, name in (("serviceaccount", RELEASE), ("role", RELEASE), ("rolebinding", RELEASE), ("configmap", "viadk8s-config")):
        assert kube.json(kind, "-n", NAMESPACE, name)["metadata"]["name"] == name
    cronjob = kube.json("cronjob", "-n", NAMESPACE, f"{RELEASE}-nightly")
    assert cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["hostNetwork"] is True
    MlflowClient(release.mlflow_uri).search_experiments()  # the chart's MLflow answers on the node's 127.0.0.1
    config = yaml.safe_load((release.workdir / "viadk8s.yaml").read_text())
    assert config["mlflow"]["tracking_uri"] == release.mlflow_uri and config["cluster"]["host_network"] is True


def test_a_verb_the_chart_does_not_grant_is_one_line_exit_3(release: Release) -> None:
    """The ServiceAccount's Role is namespaced: listing Jobs elsewhere is forbidden, said in one line."""
    done = release.cli("status", "--namespace", "default")
    assert done.returncode == 3, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: list Jobs in namespace 'default': ") and "forbidden" in line and "RBAC" in line


def test_server_dry_run_is_admitted_and_stores_nothing(release: Release) -> None:
    out = release.ok("submit", *ONE_RUN, "--sweep", "dry", "--dry-run=server")
    assert "1 Jobs accepted by the API server (server dry run)" in out
    assert release.jobs("dry") == [] and release.results("dry") == []


def test_a_queued_sweep_is_created_suspended_and_says_so(release: Release) -> None:
    """With cluster.queue, Jobs wait suspended for Kueue (not installed here): status says why."""
    config = yaml.safe_load((release.workdir / "viadk8s.yaml").read_text())
    config["cluster"]["queue"] = "team-gpu"
    (release.workdir / "queued.yaml").write_text(yaml.safe_dump(config))
    release.ok("submit", *ONE_RUN, "--sweep", "queued", "--config", str(release.workdir / "queued.yaml"))
    (job,) = release.jobs("queued")
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-gpu"
    assert "suspended: waiting for its queue" in release.ok("status", "--sweep", "queued")
    assert release.pods("viadk8s.io/sweep=queued") == []
    assert "deleted 1 Jobs" in release.ok("cancel", "--sweep", "queued")


# --- 2. a sweep end to end ---------------------------------------------------------------------------------

SWEEP = ("--experiment", "evaluation", "--models", "patchcore,padim", "--datasets", "tiny", "--image-size", "128")
SWEEP_ARGS = (*SWEEP, "--weights", "random", "--sweep", "e2e")


def test_sweep_runs_on_real_pods_and_lands_in_s3_and_mlflow(release: Release) -> None:
    out = release.ok("submit", *SWEEP_ARGS, "--wait", "--interval", "2", "--timeout", "840")
    assert "4 Jobs created, 0 already there, 0 runs already finished" in out
    stored = [release.result(key) for key in release.results("e2e")]
    assert len(stored) == 4 and all(r.metrics["image_AUROC"] is not None for r in stored)
    assert {r.lock_sha256 for r in stored} == {lock_sha256()}, "the image holds another lock: make image-local"
    again = release.ok("submit", *SWEEP_ARGS)
    assert "0 Jobs created, 0 already there, 4 runs already finished (skipped)" in again

    status = release.ok("status", "--sweep", "e2e")
    assert "4 succeeded" in status and "(4/4 finished)" in status
    rows = [line for line in status.splitlines() if " succeeded " in line]
    assert len(rows) == 4 and all(re.search(r"│\s*\d+(m\d\d)?s\s*│", row) for row in rows)  # each with its duration

    keys = [job["metadata"]["labels"]["viadk8s.io/run-key"] for job in release.jobs("e2e")]
    log = release.ok("logs", keys[0], "--sweep", "e2e")
    assert f"[{keys[0]}]: done in" in log and f"stored at {STORE}" in log

    table = release.ok("aggregate", "--sweep", "e2e")
    assert "PatchCore" in table and "PaDiM" in table and "tiny" in table

    client = MlflowClient(release.mlflow_uri)
    experiment = client.get_experiment_by_name("evaluation")
    runs = client.search_runs([experiment.experiment_id], "tags.sweep = 'e2e'")
    parents = [r for r in runs if r.data.tags.get("viadk8s.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert {r.data.tags["run_key"] for r in children} == set(keys)


def test_worker_pods_ran_under_the_jobs_security_context(release: Release) -> None:
    (pod, *_) = release.pods("viadk8s.io/sweep=e2e")
    spec = pod["spec"]
    assert spec["securityContext"]["runAsUser"] == 10001 and spec["securityContext"]["runAsNonRoot"] is True
    worker = spec["containers"][0]
    assert worker["securityContext"]["readOnlyRootFilesystem"] is True
    assert worker["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert worker["securityContext"]["allowPrivilegeEscalation"] is False
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory" and "downwardAPI" in volumes["spec"]
    assert volumes["config"]["configMap"]["name"] == "viadk8s-sweep-e2e"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0


def test_logs_of_a_pod_that_has_not_started_is_one_line(release: Release) -> None:
    """A pod the scheduler cannot place (more GPUs than the node has) has no log yet: said in one line."""
    args = ("submit", "--experiment", "evaluation", "--models", "padim", "--datasets", "one", "--sweep", "unplaceable")
    config = yaml.safe_load((release.workdir / "viadk8s.yaml").read_text())
    config["cluster"]["gpu"] = {"count": 2}
    (release.workdir / "two-gpus.yaml").write_text(yaml.safe_dump(config))
    release.ok(*args, "--image-size", "64", "--weights", "random", "--config", str(release.workdir / "two-gpus.yaml"))
    (job,) = release.jobs("unplaceable")
    key = job["metadata"]["labels"]["viadk8s.io/run-key"]
    release.kube.wait_for("a pod of the unplaceable run", lambda: release.pods(f"viadk8s.io/run-key={key}"), 60)

    def unschedulable() -> str | None:
        shown = release.ok("status", "--sweep", "unplaceable")
        return shown if "Unschedulable" in shown else None

    status = release.kube.wait_for("the scheduler's reason", unschedulable, 60)
    assert "Insufficient nvidia.com/gpu" in status
    done = release.cli("logs", key)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: run {key}: pod ") and "has not started yet (Unschedulable" in line
    release.ok("cancel", "--sweep", "unplaceable")


# --- 3. the exit-code contract on the real Job controller -------------------------------------------------


def _condition(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in job["status"].get("conditions", []) if c["type"] == kind and c["status"] == "True"), None)


def _finished(release: Release, sweep: str) -> list[dict[str, Any]] | None:
    jobs = release.jobs(sweep)
    return jobs if jobs and all(_condition(j, "Complete") or _condition(j, "Failed") for j in jobs) else None


def _exit_codes(pods: list[dict[str, Any]]) -> list[int]:
    return [
        s["state"]["terminated"]["exitCode"]
        for p in pods
        for s in p["status"].get("containerStatuses", [])
        if s["state"].get("terminated")
    ]


ONE_RUN = ("--experiment", "evaluation", "--models", "padim", "--datasets", "one", "--image-size", "64", "--weights", "random")


def test_invalid_input_exits_2_and_fails_the_job_without_a_retry(release: Release) -> None:
    """10 labelled anomalies asked of a category with 6: the worker's exit 2 fails the Job at once."""
    args = ("--experiment", "supervised", "--models", "devnet", "--datasets", "one", "--image-size", "64", "--seeds", "1")
    done = release.cli(
        "submit", *args, "--weights", "random", "--sweep", "invalid", "--wait", "--interval", "2", "--timeout", "600"
    )
    assert done.returncode == 1, done.stderr
    (job,) = release.jobs("invalid")
    assert _condition(job, "Failed")["reason"] == "PodFailurePolicy"
    pods = release.pods("viadk8s.io/sweep=invalid")
    assert len(pods) == 1 and _exit_codes(pods) == [2]  # no retry
    status = release.ok("status", "--sweep", "invalid")
    assert "failed" in status and "PodFailurePolicy: exit 2 (invalid input): supervised k=10 needs 10 bad test" in status
    assert release.results("invalid") == []


def test_infrastructure_fault_exits_3_and_the_retry_succeeds(release: Release) -> None:
    """S3 stops while the pod runs: exit 3, a new pod within backoffLimit, one result once S3 is back."""
    release.ok("submit", *ONE_RUN, "--sweep", "infra")
    running = lambda: [p for p in release.pods("viadk8s.io/sweep=infra") if p["status"].get("phase") == "Running"]  # noqa: E731
    release.kube.wait_for("the first pod running", running, 300, every=0.5)
    release.s3.process.stop()
    try:
        failed = lambda: (j := release.jobs("infra")) and j[0]["status"].get("failed", 0) >= 1  # noqa: E731
        release.kube.wait_for("the first pod failing", failed, 300)
    finally:
        release.s3.process.start()
    (job,) = release.kube.wait_for("the retried run", lambda: _finished(release, "infra"), 600)
    assert _condition(job, "Complete"), job["status"]
    assert 3 in _exit_codes(release.pods("viadk8s.io/sweep=infra"))
    assert len(release.results("infra")) == 1
    assert " succeeded " in release.ok("status", "--sweep", "infra")


class PodWatch:
    """Every state a sweep's pods pass through, from the API server's watch (a deleted pod's last
    status is only visible there: the Job controller removes it right after). A watch the server
    ends (its cache behind a fresh write: 504, or an expired version: 410) is opened again."""

    def __init__(self, kube: Kube, selector: str) -> None:
        from kubernetes import client, config, watch
        from kubernetes.client.exceptions import ApiException

        api = client.CoreV1Api(config.new_client_from_config(str(kube.kubeconfig)))
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self._stopped = threading.Event()
        self._watch = watch.Watch()

        def collect() -> None:
            while not self._stopped.is_set():
                try:
                    for event in self._watch.stream(
                        api.list_namespaced_pod, NAMESPACE, label_selector=selector, timeout_seconds=30
                    ):
                        pod = event["object"]
                        self.events.append((event["type"], pod.metadata.name, api.api_client.sanitize_for_serialization(pod)))
                except (ApiException, urllib3.exceptions.HTTPError):
                    time.sleep(0.2)

        self._thread = threading.Thread(target=collect, daemon=True)
        self._thread.start()

    def exit_codes(self, name: str) -> set[int]:
        return set(_exit_codes([pod for _, pod_name, pod in self.events if pod_name == name]))

    def stop(self) -> None:
        self._stopped.set()
        self._watch.stop()


def test_a_deleted_pod_gets_sigterm_exits_143_and_is_replaced(release: Release) -> None:
    watcher = PodWatch(release.kube, "viadk8s.io/sweep=sigterm")
    try:
        release.ok("submit", *ONE_RUN, "--sweep", "sigterm")
        running = lambda: [p for p in release.pods("viadk8s.io/sweep=sigterm") if p["status"].get("phase") == "Running"]  # noqa: E731
        (first,) = release.kube.wait_for("the pod running", running, 300, every=0.5)
        name = first["metadata"]["name"]
        time.sleep(3)  # the worker has installed its SIGTERM handler
        release.kube.kubectl("-n", NAMESPACE, "delete", "pod", name, "--wait=false")
        (job,) = release.kube.wait_for("the replacement's run", lambda: _finished(release, "sigterm"), 600)
        assert _condition(job, "Complete"), job["status"]
        assert watcher.exit_codes(name) == {143}
    finally:
        watcher.stop()
    names = {pod_name for _, pod_name, _ in watcher.events}
    assert len(names) == 2 and name in names
    assert len(release.results("sigterm")) == 1


def test_cancel_then_submit_again_resumes_without_duplicates(release: Release) -> None:
    args = ("--experiment", "evaluation", "--models", "patchcore,padim", "--datasets", "tiny", "--image-size", "64")
    args = (*args, "--weights", "random", "--sweep", "resume")
    release.ok("submit", *args)
    release.kube.wait_for("a first result", lambda: release.results("resume"), 600, every=0.5)
    out = release.ok("cancel", "--sweep", "resume")
    assert "deleted 4 Jobs" in out
    release.kube.wait_for("the sweep's pods gone", lambda: not release.pods("viadk8s.io/sweep=resume"), 120)
    assert release.jobs("resume") == []
    finished = len(release.results("resume"))
    assert 1 <= finished < 4
    out = release.ok("submit", *args, "--wait", "--interval", "2", "--timeout", "840")
    assert f"{4 - finished} Jobs created, 0 already there, {finished} runs already finished (skipped)" in out
    results = release.results("resume")
    assert len(results) == 4 and len({key.split("/")[-2] for key in results}) == 4
    assert len(release.jobs("resume")) == 4 - finished


def test_a_pack_runs_in_one_pod_each_run_committed_and_listed_apart(release: Release) -> None:
    """--pack 3: three 64 px PaDiM runs in one Job and one pod; status and logs show each run."""
    args = ("--experiment", "evaluation", "--models", "padim", "--datasets", "one", "--image-size", "64", "--seeds", "1,2,3")
    args = (*args, "--weights", "random", "--sweep", "packed", "--pack", "3")
    out = release.ok("submit", *args, "--wait", "--interval", "2", "--timeout", "840")
    assert "1 Jobs created, 0 already there, 0 runs already finished" in out
    (job,) = release.jobs("packed")
    assert _condition(job, "Complete") and "viadk8s.io/pack" in job["metadata"]["labels"]
    keys = job["metadata"]["annotations"]["viadk8s.io/run-keys"].split(",")
    assert len(keys) == 3 and len(release.pods("viadk8s.io/sweep=packed")) == 1
    assert sorted(key.split("/")[-2] for key in release.results("packed")) == sorted(keys)
    status = release.ok("status", "--sweep", "packed")
    assert "3 succeeded" in status and "(3/3 finished)" in status
    log = release.ok("logs", keys[1], "--sweep", "packed")  # the pack's pod, found by one of its runs
    assert f"[{keys[1]}]: done in" in log and all(f"run {key}: done" in log for key in keys)
    again = release.ok("submit", *args)
    assert "0 Jobs created, 0 already there, 3 runs already finished (skipped)" in again


# --- 4. the nightly CronJob and its regression gate -------------------------------------------------------


def _nightly(release: Release, name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A Job created from the chart's CronJob, as `kubectl create job --from=cronjob/...` does, run to its end."""
    kube = release.kube
    kube.kubectl("-n", NAMESPACE, "create", "job", name, f"--from=cronjob/{RELEASE}-nightly")

    def done() -> dict[str, Any] | None:
        job = kube.json("job", "-n", NAMESPACE, name)
        return job if _condition(job, "Complete") or _condition(job, "Failed") else None

    job = kube.wait_for(f"nightly Job {name}", done, 840, every=2)
    return job, kube.json("pods", "-n", NAMESPACE, "-l", f"job-name={name}")["items"]


def _termination(pods: list[dict[str, Any]]) -> str:
    """What a finished pod's container said last (its termination message: the log's tail)."""
    return "\n".join(str(s["state"].get("terminated")) for p in pods for s in p["status"].get("containerStatuses", []))


def _upload_baseline(release: Release, frame: pd.DataFrame) -> None:
    s3 = boto3.client("s3", endpoint_url=release.s3.endpoint, **_credentials(release.s3))
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    s3.put_object(Bucket=BUCKET, Key=BASELINE.removeprefix(f"s3://{BUCKET}/"), Body=buffer.getvalue().encode())


def test_nightly_cronjob_passes_a_matching_baseline_and_fails_a_regressed_one(release: Release, tmp_path: Path) -> None:
    """The baseline is the same sweep run locally (`viadk8s run`, as a user would make it); the night
    then runs in the cluster as the ServiceAccount, and a baseline it regresses from fails it visibly."""
    local = tmp_path / "local.yaml"
    local.write_text(yaml.safe_dump({"store": str(tmp_path / "store"), "datasets": {"one": {"synthetic": ONE}}}))
    env = {k: v for k, v in release.env.items() if k not in ("VIADK8S_CONFIG",)}
    selection = ("--experiment", "evaluation", "--models", "padim", "--datasets", "one", "--max-epochs", "1")
    selection = (*selection, "--image-size", "64", "--weights", "random")
    for args in (("run", *selection), ("aggregate", "--experiment", "evaluation", "--out", str(tmp_path / "tables"))):
        done = subprocess.run(
            [sys.executable, "-m", "viadk8s", *args, "--config", str(local)], capture_output=True, text=True, env=env, timeout=600
        )
        assert done.returncode == 0, done.stderr
    baseline = pd.read_csv(tmp_path / "tables" / "runs.csv")
    _upload_baseline(release, baseline)
    sweep = f"nightly-{datetime.now(UTC):%Y%m%d}"

    job, pods = _nightly(release, "night-pass")
    assert _condition(job, "Complete"), _termination(pods)
    assert len(release.results(sweep)) == 1
    assert release.kube.kubectl("-n", NAMESPACE, "logs", pods[0]["metadata"]["name"]).count("regression:") == 0

    regressed = baseline.assign(image_AUROC=baseline["image_AUROC"] + 0.2)
    _upload_baseline(release, regressed)
    job, pods = _nightly(release, "night-fail")
    assert _condition(job, "Failed"), _termination(pods)
    (terminated,) = [s["state"]["terminated"] for s in pods[0]["status"]["containerStatuses"]]
    assert terminated["exitCode"] == 1
    assert "regression: padim on one (64px, random" in terminated["message"] and "image_AUROC" in terminated["message"]
    assert len(release.results(sweep)) == 1  # the second night resumed the sweep: nothing ran twice

"""Every manifest viadk8s produces (Jobs, the sweep ConfigMap, the Helm chart) is valid Kubernetes
for 1.30 and 1.37 (kubernetes-validate, strict), meets the Pod Security "restricted" profile and
carries no literal credential; rendering is injection-proof; the Dockerfile and workflow lint.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import jsonschema
import kubernetes_validate
import pytest
import yaml
from jsonschema import Draft202012Validator
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource
from typer.testing import CliRunner

from viadk8s import catalog
from viadk8s.backends import pack_key
from viadk8s.backends.k8s.client import resolve_namespace
from viadk8s.backends.k8s.render import (
    KUEUE_QUEUE_LABEL,
    SPEC_ANNOTATION,
    RenderError,
    environment,
    job_name,
    label_value,
    render_job,
    render_sweep,
    to_yaml_json,
)
from viadk8s.cli import app
from viadk8s.cluster_config import ClusterSettings, with_overrides
from viadk8s.config import Config, load_config
from viadk8s.errors import SpecError
from viadk8s.plan import Selection, plan
from viadk8s.spec import RunSpec
from viadk8s.worker.pack import parse_specs

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "viadk8s"
VERSIONS = ("1.30", "1.37")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
SECRET_NAMES = re.compile(r"(SECRET|TOKEN|PASSWORD|ACCESS_KEY|CREDENTIAL)", re.IGNORECASE)
ENV_VARS = ("VIADK8S_NAMESPACE", "VIADK8S_CONTEXT", "VIADK8S_IMAGE", "KUBERNETES_SERVICE_HOST")


@pytest.fixture(autouse=True)
def _no_cluster_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Rendering must not depend on the developer's kubeconfig or cluster variables."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.chdir(tmp_path)


# --- checks shared by the Job, ConfigMap and chart tests -------------------------------------------


@cache
def _validator(version: str, kind: str, api_version: str) -> Draft202012Validator:
    """kubernetes-validate's strict schema for one kind, built once (its validate() rebuilds per call)."""
    folder = f"kubernetes-json-schema/v{version}.0-local-strict"
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = schema_contents(f"{folder}/{kind.lower()}-{group}.json", version)
    definitions = schema_contents(f"{folder}/_definitions.json", version)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return Draft202012Validator(schema, registry=registry)


def validate(doc: dict[str, Any]) -> None:
    for version in VERSIONS:
        _validator(version, doc["kind"], doc["apiVersion"]).validate(doc)


def pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    kind = doc["kind"]
    if kind in ("Job", "Deployment"):
        return [doc["spec"]["template"]["spec"]]
    if kind == "CronJob":
        return [doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]]
    return []


def assert_restricted(pod: dict[str, Any]) -> None:
    """The Pod Security Standard "restricted" (v1.30+), plus a read-only root filesystem."""
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
    for volume in pod.get("volumes", []):
        assert set(volume) - {"name"} <= allowed_volumes, volume
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    for container in pod["containers"] + pod.get("initContainers", []):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"] and "add" not in context["capabilities"]
        assert not context.get("privileged") and not container.get("ports", [{}])[0].get("hostPort")


def assert_no_literal_credentials(doc: dict[str, Any]) -> None:
    for pod in pod_specs(doc):
        for container in pod["containers"]:
            for env in container.get("env", []):
                if SECRET_NAMES.search(env["name"]):
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], env
    if doc["kind"] == "Secret":
        pytest.fail(f"a Secret is rendered: {doc['metadata']['name']}")
    assert not re.search(r"(AKIA[0-9A-Z]{16}|://[^/\s:@]+:[^/\s@]+@)", yaml.safe_dump(doc)), "a credential-like literal"


def check_manifest(doc: dict[str, Any]) -> None:
    validate(doc)
    assert_no_literal_credentials(doc)
    for pod in pod_specs(doc):
        assert_restricted(pod)


# --- Jobs of every experiment ----------------------------------------------------------------------


@pytest.mark.parametrize("experiment", list(catalog.experiments()))
def test_every_job_of_every_experiment_is_valid_and_restricted(experiment: str) -> None:
    config = load_config()
    planned = plan(experiment, Selection(), config)
    rendered = render_sweep(planned, config, "bench")
    assert [job.spec for job in rendered.jobs] == planned.sweep.runs and rendered.jobs
    check_manifest(rendered.config_map.body)
    for job in rendered.jobs:
        body = job.body
        check_manifest(body)
        pod = body["spec"]["template"]["spec"]
        worker = pod["containers"][0]
        assert pod["restartPolicy"] == "Never"
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert worker["command"] == ["viadk8s", "worker", "--spec", "/etc/viadk8s/spec/spec.json"]
        rules = body["spec"]["podFailurePolicy"]["rules"]
        assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
        assert rules[1]["action"] == "FailJob" and rules[1]["onExitCodes"]["values"] == [2]
        assert RunSpec.model_validate_json(body["spec"]["template"]["metadata"]["annotations"][SPEC_ANNOTATION]) == job.spec


def test_paper_datasets_render_valid_unique_names() -> None:
    """All nine paper datasets with their real categories: names and labels stay valid and unique."""
    config = load_config()
    rendered = render_sweep(plan("evaluation", Selection(datasets=["paper"]), config), config, "bench")
    names = [job.name for job in rendered.jobs]
    models = catalog.experiment("evaluation").models
    assert len(names) == len(set(names)) == len(models) * (12 + 6 + 3 + 1 + 10 + 4 + 8 + 12 + 2)
    for job in rendered.jobs:
        assert DNS_LABEL.match(job.name)
        assert all(LABEL_VALUE.match(v) for v in job.body["metadata"]["labels"].values())
        validate(job.body)


def test_rendering_is_deterministic_and_named_after_sweep_and_run_key() -> None:
    config = load_config()
    planned = plan("input_size", Selection(models=["patchcore"], seeds=[1]), config)
    first, second = (render_sweep(planned, config, "bench") for _ in range(2))
    assert [j.text for j in first.jobs] == [j.text for j in second.jobs]
    spec = first.jobs[0].spec
    assert first.jobs[0].name == job_name(spec) == f"input-size-{spec.run_key}"


def test_a_pack_is_one_valid_restricted_job_named_after_its_runs() -> None:
    """``--pack``: one Job whose pod runs the pack's specs in turn; its name and labels stay valid
    and depend only on which runs it holds."""
    config = load_config()
    runs = plan("input_size", Selection(models=["patchcore"], seeds=[1, 2]), config).sweep.runs[:3]
    job = render_job(runs, config.cluster, "bench")
    check_manifest(job.body)
    assert job.name == job_name(runs) == f"input-size-{pack_key(runs)}" and DNS_LABEL.match(job.name)
    assert render_job(runs[::-1], config.cluster, "bench").name == job.name
    labels, annotations = job.body["metadata"]["labels"], job.body["metadata"]["annotations"]
    assert labels["viadk8s.io/pack"] == pack_key(runs) and "viadk8s.io/run-key" not in labels
    assert all(LABEL_VALUE.match(v) for v in labels.values())
    assert annotations["viadk8s.io/run-keys"] == ",".join(s.run_key for s in runs)
    pod = job.body["spec"]["template"]
    assert parse_specs(pod["metadata"]["annotations"][SPEC_ANNOTATION]) == list(job.runs) == runs
    assert pod["spec"]["containers"][0]["command"] == ["viadk8s", "worker", "--spec", "/etc/viadk8s/spec/spec.json"]
    rendered = render_sweep(plan("input_size", Selection(models=["patchcore"]), config), config, "bench", [runs])
    assert [j.name for j in rendered.jobs] == [job.name]


# --- injection safety --------------------------------------------------------------------------------

NASTY = [
    "a: b",
    "x\ny: z",
    "'single' \"double\"",
    "{{ 7 * 7 }}",
    "{% raw %}",
    "- item",
    "#comment",
    "&a *a",
    "!!python/object:os.system",
    "%TAG ! x",
    "null",
    "yes",
    "0o17",
    "",
    "\t tab",
    "line\u2028sep",
    "nel\x85",
    "emoji 😀",
    "bell\x07",
    "back\\slash",
    "]}",
    "---\nkind: Pod",
]


@pytest.mark.parametrize("value", NASTY)
def test_json_filter_round_trips_any_string(value: str) -> None:
    assert yaml.safe_load(f"key: {to_yaml_json(value)}") == {"key": value}
    assert yaml.safe_load(f"key: {to_yaml_json({value: [value]})}") == {"key": {value: [value]}}


def test_hostile_dataset_and_category_names_cannot_change_the_document(tmp_path: Path) -> None:
    evil_dataset = 'evil: "x"\n{{ 7*7 }}'
    evil_category = "cat'\"\n- {{ config }}\n---\nkind: Pod"
    (tmp_path / "viadk8s.yaml").write_text(
        yaml.safe_dump({"datasets": {evil_dataset: {"synthetic": {"categories": [evil_category]}}}})
    )
    config = load_config()
    rendered = render_sweep(plan("evaluation", Selection(models=["patchcore"], datasets=[evil_dataset]), config), config, "bench")
    job = rendered.jobs[0]
    assert job.spec.dataset == evil_dataset and job.spec.category == evil_category
    assert len(list(yaml.safe_load_all(job.text))) == 1
    assert "49" not in job.text
    check_manifest(job.body)
    label = job.body["metadata"]["labels"]["viadk8s.io/dataset"]
    assert LABEL_VALUE.match(label) and label != label_value("evil-other")
    check_manifest(rendered.config_map.body)
    pod_config = yaml.safe_load(rendered.config_map.body["data"]["viadk8s.yaml"])
    assert pod_config["datasets"][evil_dataset]["synthetic"]["categories"] == [evil_category]


def test_templates_refuse_unescaped_output_and_undefined_names() -> None:
    with pytest.raises(RenderError, match="without the |json filter"):
        environment().from_string("name: {{ name }}").render(name="x")
    with pytest.raises(jinja2.UndefinedError):
        environment().from_string("name: {{ missing | json }}").render()


# --- cluster settings reach the Job ----------------------------------------------------------------

FULL_CLUSTER: dict[str, Any] = {
    "namespace": "gpu-bench",
    "image": "registry.example.com/team/viadk8s@sha256:" + "a" * 64,
    "image_pull_policy": "Always",
    "image_pull_secrets": ["regcred"],
    "service_account": "viadk8s-worker",
    "gpu": {"count": 2, "resource": "nvidia.com/mig-1g.10gb"},
    "resources": {"requests": {"cpu": 6, "memory": "48Gi"}, "limits": {"cpu": "6500m", "memory": "64Gi"}},
    "shm_size": "16Gi",
    "scheduling": {
        "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["gpu"]}]}]
                }
            }
        },
        "runtime_class_name": "nvidia",
        "priority_class_name": "batch-low",
    },
    "queue": "team-gpu",
    "cache": {"type": "pvc", "claim_name": "datasets", "read_only": True},
    "weights": {"type": "emptyDir", "size_limit": "20Gi"},
    "secrets": {
        "env_from": ["viadk8s-s3"],
        "env": {"MLFLOW_TRACKING_TOKEN": {"name": "mlflow", "key": "token", "optional": True}},
    },
    "job": {"backoff_limit": 1, "active_deadline_seconds": 3600, "ttl_seconds_after_finished": 60},
}


def _spec() -> RunSpec:
    return RunSpec(sweep="s1", experiment="evaluation", model="patchcore", dataset="synthetic", category="tiles", seed=1)


def test_every_cluster_setting_reaches_the_job() -> None:
    settings = ClusterSettings.model_validate(FULL_CLUSTER)
    body = render_job(_spec(), settings, "gpu-bench").body
    check_manifest(body)
    spec, pod = body["spec"], body["spec"]["template"]["spec"]
    worker = pod["containers"][0]
    assert spec["suspend"] is True and body["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-gpu"
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"]) == (1, 3600, 60)
    assert worker["resources"]["limits"] == {"cpu": "6500m", "memory": "64Gi", "nvidia.com/mig-1g.10gb": "2"}
    assert worker["resources"]["requests"]["cpu"] == "6"
    assert {e["name"]: e.get("value") for e in worker["env"]}["OMP_NUM_THREADS"] == "6"
    assert worker["image"] == FULL_CLUSTER["image"] and worker["imagePullPolicy"] == "Always"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}] and pod["serviceAccountName"] == "viadk8s-worker"
    assert pod["nodeSelector"] == FULL_CLUSTER["scheduling"]["node_selector"]
    assert pod["tolerations"] == FULL_CLUSTER["scheduling"]["tolerations"]
    assert pod["affinity"] == FULL_CLUSTER["scheduling"]["affinity"]
    assert (pod["runtimeClassName"], pod["priorityClassName"]) == ("nvidia", "batch-low")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["datasets"]["persistentVolumeClaim"] == {"claimName": "datasets", "readOnly": True}
    assert volumes["weights"]["emptyDir"] == {"sizeLimit": "20Gi"}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert worker["envFrom"] == [{"secretRef": {"name": "viadk8s-s3"}}]
    token = next(e for e in worker["env"] if e["name"] == "MLFLOW_TRACKING_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "mlflow", "key": "token", "optional": True}


def test_host_path_cache_and_cpu_only_runs() -> None:
    settings = ClusterSettings.model_validate({"gpu": {"count": 0}, "cache": {"type": "hostPath", "path": "/data/viadk8s"}})
    body = render_job(_spec(), settings, "bench").body
    validate(body)
    pod = body["spec"]["template"]["spec"]
    worker = pod["containers"][0]
    assert {v["name"]: v for v in pod["volumes"]}["datasets"]["hostPath"] == {"path": "/data/viadk8s", "type": "Directory"}
    assert not any("gpu" in key for key in worker["resources"]["limits"])
    assert {e["name"]: e.get("value") for e in worker["env"]}["NVIDIA_VISIBLE_DEVICES"] == "void"


# --- config: the cluster section --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cluster", "message"),
    [
        ({"gpus": 1}, "cluster.gpus: Extra inputs are not permitted"),
        ({"gpu": {"count": "two"}}, "cluster.gpu.count: Input should be a valid integer"),
        ({"gpu": {"resource": "gpu"}}, "cluster.gpu: resource 'gpu' is not an extended resource"),
        ({"namespace": "Bench_1"}, "cluster.namespace: 'Bench_1' is not allowed"),
        ({"shm_size": "lots"}, "cluster.shm_size: 'lots' is not a Kubernetes quantity"),
        (
            {"resources": {"requests": {"cpu": 16, "memory": "1Gi"}}},
            "cluster.resources: requests.cpu '16' is above limits.cpu '8'",
        ),
        ({"cache": {"type": "pvc"}}, "cluster.cache: claim_name goes with type 'pvc' only"),
        ({"cache": {"type": "hostPath", "path": "rel/path"}}, "cluster.cache: path 'rel/path' is not allowed"),
        ({"image": "evil\nimage"}, "cluster.image: 'evil\\nimage' is not allowed"),
        ({"scheduling": {"node_selector": {"pool": "a b"}}}, "cluster.scheduling.node_selector.pool: 'a b' is not allowed"),
        ({"scheduling": {"tolerations": [{"effect": "Never"}]}}, "cluster.scheduling.tolerations.0.effect: Input should be"),
        ({"secrets": {"env": {"1BAD": {"name": "s", "key": "k"}}}}, "cluster.secrets.env.1BAD.[key]: '1BAD' is not allowed"),
        ("not-a-mapping", "cluster: Input should be a valid dictionary"),
    ],
)
def test_bad_cluster_settings_name_the_key(tmp_path: Path, cluster: Any, message: str) -> None:
    (tmp_path / "viadk8s.yaml").write_text(yaml.safe_dump({"cluster": cluster}))
    with pytest.raises(SpecError) as err:
        load_config()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cluster_precedence_cli_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "viadk8s.yaml").write_text(yaml.safe_dump({"cluster": {"namespace": "from-file", "image": "file/image:1"}}))
    assert load_config().cluster.namespace == "from-file"
    monkeypatch.setenv("VIADK8S_NAMESPACE", "from-env")
    settings = load_config().cluster
    assert (settings.namespace, settings.image) == ("from-env", "file/image:1")
    assert with_overrides(settings, namespace="from-cli", image=None).namespace == "from-cli"
    with pytest.raises(SpecError, match="cluster.namespace: 'NO' is not allowed"):
        with_overrides(settings, namespace="NO")


def test_namespace_comes_from_the_kube_context_like_kubectl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "a",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [
                    {"name": "a", "context": {"cluster": "c", "user": "u", "namespace": "team-a"}},
                    {"name": "b", "context": {"cluster": "c", "user": "u"}},
                ],
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    assert resolve_namespace(ClusterSettings()) == "team-a"
    assert resolve_namespace(ClusterSettings(context="b")) == "default"
    assert resolve_namespace(ClusterSettings(namespace="mine")) == "mine"
    with pytest.raises(SpecError, match="unknown kube context 'z'; allowed: a, b"):
        resolve_namespace(ClusterSettings(context="z"))


def test_pods_config_map_reads_back_as_the_submitters_config(tmp_path: Path) -> None:
    config = Config.model_validate(
        {
            "store": "s3://bucket/runs",
            "s3": {"addressing_style": "path"},
            "mlflow": {"tracking_uri": "http://mlflow:5000"},
            "weights_dir": "/local/weights",
            "cache_max_gb": 50,
            "cluster": {"namespace": "x"},
            "datasets": {"visa": {"path": "/var/cache/viadk8s/datasets/visa"}},
        }
    )
    planned = plan("evaluation", Selection(models=["patchcore"], datasets=["visa"]), config)
    rendered = render_sweep(planned, config, "x")
    (tmp_path / "pod.yaml").write_text(rendered.config_map.body["data"]["viadk8s.yaml"])
    pod = load_config(tmp_path / "pod.yaml")
    assert pod == config.model_copy(update={"weights_dir": None, "cluster": ClusterSettings()})  # the pod sets its caches


# --- CLI -------------------------------------------------------------------------------------------


def test_cli_render_and_client_dry_run_without_a_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["render", "--experiment", "supervised", "--out", str(tmp_path / "out"), "--namespace", "ns1"])
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "out").glob("*.yaml"))
    assert len(files) == 19  # DRA, DevNet, SuperSimpleNet x 2 categories x 3 seeds, and the ConfigMap
    assert all(yaml.safe_load(f.read_text())["metadata"]["namespace"] == "ns1" for f in files)
    result = runner.invoke(app, ["submit", "--experiment", "supervised", "--dry-run=client"])
    assert result.exit_code == 0 and "18 Jobs to create (client dry run)" in result.output
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    result = runner.invoke(app, ["submit", "--experiment", "supervised"])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 3 and errors == [
        "error: no Kubernetes cluster configured: no kubeconfig ($KUBECONFIG or ~/.kube/config), not in a pod"
    ], result.output
    result = runner.invoke(app, ["submit", "--experiment", "input_size", "--dry-run=maybe"])
    assert result.exit_code == 2 and "unknown --dry-run 'maybe'; allowed: client, server" in result.output
    # 2 short models x 2 categories x 3 seeds: 6 runs per model, 4 at most per pack -> 4 + 2 each
    short = ["-e", "evaluation", "--models", "patchcore,padim", "--image-size", "64", "--seeds", "1,2,3"]
    result = runner.invoke(app, ["render", *short, "--out", str(tmp_path / "packed"), "--pack", "4"])
    assert result.exit_code == 0 and "wrote 5 manifests (4 Jobs + ConfigMap)" in result.output, result.output
    result = runner.invoke(app, ["submit", "-e", "supervised", "--dry-run=client", "--pack", "none"])
    assert result.exit_code == 2 and "bad --pack 'none'" in result.output


# --- Helm chart -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm() -> str:
    """The pinned helm of `make tools`, else one on PATH; missing fails in CI and skips elsewhere."""
    pinned = ROOT / ".tools" / "bin" / "helm"
    found = str(pinned) if pinned.is_file() else shutil.which("helm")
    if found is None:
        message = "helm not found in .tools/bin or on PATH: run `make tools`"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


FULL_VALUES: dict[str, Any] = {
    "imagePullSecrets": ["regcred"],
    "config": {
        "store": "s3://bench/runs",
        "datasets": {"visa": {"path": "/var/cache/viadk8s/datasets/visa"}},
        "cluster": {
            "image": "registry.example.com/viadk8s:1",
            "gpu": {"count": 1},
            "queue": "gpu",
            "cache": {"type": "pvc", "claim_name": "datasets"},
        },
    },
    "credentials": {"s3": {"existingSecret": "viadk8s-s3"}},
    "mlflow": {
        "backend": {"type": "postgresql", "postgresql": {"existingSecret": "mlflow-db"}},
        "artifactsDestination": "s3://bench/mlflow",
        "allowedHosts": ["mlflow.example.com"],
    },
    "nightly": {"enabled": True, "experiment": "input_size", "models": "patchcore,padim", "maxEpochs": 2},
}


def _template(helm: str, tmp_path: Path, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    args = [helm, "template", "bench", str(CHART), "--namespace", "viadk8s"]
    if values is not None:
        (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
        args += ["-f", str(tmp_path / "values.yaml")]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["defaults", "full"])
def test_chart_lints_strict(helm: str, tmp_path: Path, values: dict[str, Any] | None) -> None:
    args = [helm, "lint", "--strict", str(CHART)]
    if values is not None:
        (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
        args += ["-f", str(tmp_path / "values.yaml")]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["defaults", "full"])
def test_chart_templates_valid_restricted_manifests(helm: str, tmp_path: Path, values: dict[str, Any] | None) -> None:
    docs = _template(helm, tmp_path, values)
    kinds = sorted(d["kind"] for d in docs)
    expected = ["ConfigMap", "Deployment", "PersistentVolumeClaim", "Role", "RoleBinding", "Service", "ServiceAccount"]
    assert kinds == sorted(expected + (["CronJob"] if values else []))
    for doc in docs:
        check_manifest(doc)
        assert doc["metadata"]["namespace"] == "viadk8s"
    by_kind = {d["kind"]: d for d in docs}
    assert by_kind["Role"]["rules"] == [
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["list", "create", "delete"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "patch", "delete"]},
    ]
    (tmp_path / "viadk8s.yaml").write_text(by_kind["ConfigMap"]["data"]["viadk8s.yaml"])
    config = load_config(tmp_path / "viadk8s.yaml")
    assert config.cluster.namespace == "viadk8s"
    assert config.mlflow.tracking_uri == "http://bench-viadk8s-mlflow.viadk8s.svc:5000"
    mlflow = by_kind["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    backend = next(e for e in mlflow["env"] if e["name"] == "MLFLOW_BACKEND_STORE_URI")
    if values is None:
        assert backend["value"] == "sqlite:////mlflow/mlflow.db"
        return
    assert backend["valueFrom"]["secretKeyRef"] == {"name": "mlflow-db", "key": "uri"}
    assert "--artifacts-destination=s3://bench/mlflow" in mlflow["args"]
    assert config.cluster.secrets.env_from == ["viadk8s-s3"] and config.store == "s3://bench/runs"
    nightly = by_kind["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    script = nightly["containers"][0]["args"][0]
    assert "viadk8s submit" in script and "--wait" in script and "viadk8s aggregate" in script
    assert {e["name"]: e["value"] for e in nightly["containers"][0]["env"]}["EXPERIMENT"] == "input_size"


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"bogus": 1}, "additional properties 'bogus' not allowed"),
        ({"config": {"cluster": {"gpus": 1}}}, "additional properties 'gpus' not allowed"),
        ({"mlflow": {"port": "5000"}}, "got string, want integer"),
        ({"nightly": {"enabled": True}}, "config.store (e.g. s3://BUCKET/viadk8s) is required"),
        ({"mlflow": {"backend": {"type": "postgresql"}}}, "mlflow.backend.postgresql.existingSecret is required"),
    ],
)
def test_chart_rejects_bad_values(helm: str, tmp_path: Path, values: dict[str, Any], error: str) -> None:
    with pytest.raises(subprocess.CalledProcessError) as err:
        _template(helm, tmp_path, values)
    assert error in err.value.stderr


def _model_keys(model: type[Any]) -> dict[str, Any]:
    """The nested field names of a settings model, as the chart's schema must mirror them."""
    keys: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        nested = info.annotation if isinstance(info.annotation, type) and hasattr(info.annotation, "model_fields") else None
        keys[name] = _model_keys(nested) if nested else None
    return keys


def _schema_keys(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (_schema_keys(v) if v.get("type") == "object" and "properties" in v and k != "affinity" else None)
        for k, v in schema["properties"].items()
    }


def test_chart_schema_mirrors_the_config() -> None:
    """values.schema.json's ``config`` accepts exactly the keys of viadk8s.yaml, nested ones too."""
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    assert _schema_keys(schema["properties"]["config"]) == _model_keys(Config)


# --- Dockerfile and nightly workflow -------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    result = subprocess.run(
        [hadolint, "--config", str(ROOT / ".hadolint.yaml"), str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = (ROOT / "Dockerfile").read_text()
    for needed in ("HF_HUB_OFFLINE=1", "MALLOC_MMAP_THRESHOLD_=1048576", "USER 10001", 'ENTRYPOINT ["viadk8s"]'):
        assert needed in text


def test_nightly_workflow_submits_waits_compares_and_uploads() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "nightly.yml").read_text())
    assert workflow[True]["schedule"]  # PyYAML reads the key `on` as True
    (job,) = workflow["jobs"].values()
    scripts = "\n".join(step.get("run", "") for step in job["steps"])
    assert "viadk8s submit" in scripts and "--wait" in scripts
    assert "make install" in scripts and "pip install" not in scripts  # the lock's exact versions, as `make install`
    assert "--compare" in scripts and "--tolerance" in scripts
    assert any(step.get("uses", "").startswith("actions/upload-artifact") for step in job["steps"])
    assert "${{" not in scripts, "expressions reach scripts through env, never spliced into them"
    envs = [job["env"], *(step.get("env") or {} for step in job["steps"])]
    secrets = {value for env in envs for value in env.values() if "secrets." in str(value)}
    assert {"${{ secrets.KUBECONFIG_B64 }}", "${{ secrets.AWS_SECRET_ACCESS_KEY }}"} <= secrets


def test_kubernetes_validate_agrees_with_the_cached_validator() -> None:
    """The fast path above is kubernetes-validate's own schemas: both accept and reject the same Job."""
    body = render_job(_spec(), ClusterSettings(), "bench").body
    for version in VERSIONS:
        kubernetes_validate.validate(body, version, strict=True)
    broken = {**body, "spec": {**body["spec"], "backoffLimit": "three"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.37", strict=True)
    with pytest.raises(jsonschema.ValidationError, match="three"):
        validate(broken)

"""The worker image for real: the pod of a Job that ``viadk8s render`` wrote, run with podman as
faithfully as one machine allows, against SeaweedFS (S3) and an MLflow server on 127.0.0.1.

Why: schemas and an API double cannot show what breaks on a first cluster run (a cache written
under the read-only root, a missing system library, a torch pip replaced). The podman arguments
are translated here from the rendered manifest (never a hand-written copy of it): image, command,
args, env and envFrom (Secrets as env), the pod and container securityContext (user, group,
fsGroup, read-only root, dropped capabilities, no privilege escalation, limits) and the volumes
(emptyDir as tmpfs, hostPath and PVC as binds, the downward-API spec file as a file holding the
annotation, ConfigMaps as files), on the host network. Anything the translation does not know
fails the test instead of being dropped.

The image is $VIADK8S_TEST_IMAGE (default the one ``make image-local`` builds). Without podman or
that image the tests skip, naming what is missing; with CI=true they fail instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, NoReturn

import boto3
import pytest
import yaml

from tests.conftest import TINY
from tests.servers import BUCKET, MlflowServer, S3Server, free_port
from viadk8s.results import RESULT, parse_result, run_prefix
from viadk8s.spec import RunSpec

ROOT = Path(__file__).resolve().parents[1]
IMAGE = os.environ.get("VIADK8S_TEST_IMAGE", "localhost/viadk8s:local")
LOCK = ROOT / "viadk8s" / "requirements.lock"
SECRET = "viadk8s-s3"
_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
_QUANTITY = re.compile(r"^([0-9.]+)(Ki|Mi|Gi|Ti|k|M|G|T|m)?$")
#: Pod and container fields the translation handles, or that mean nothing on one machine (scheduling,
#: service accounts, pulling, probes: the tests poll /health themselves). Any other field fails the test.
POD_FIELDS = {"containers", "volumes", "securityContext", "restartPolicy", "automountServiceAccountToken", "enableServiceLinks"}
POD_FIELDS |= {"serviceAccountName", "nodeSelector", "tolerations", "affinity", "priorityClassName", "imagePullSecrets"}
CONTAINER_FIELDS = {"name", "image", "command", "args", "workingDir", "env", "envFrom", "securityContext", "resources"}
CONTAINER_FIELDS |= {"volumeMounts", "imagePullPolicy", "terminationMessagePolicy", "ports"}
CONTAINER_FIELDS |= {"startupProbe", "readinessProbe", "livenessProbe"}
_UNITS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _missing(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def image() -> str:
    podman = shutil.which("podman")
    if podman is None:
        _missing("podman is not installed (apt-get install podman buildah debootstrap runc)")
    if os.geteuid() != 0:
        _missing("the pod test runs podman as root (hostPath binds owned by the pod's UID)")
    if subprocess.run([podman, "image", "exists", IMAGE], check=False).returncode != 0:
        _missing(f"image {IMAGE} not built: make image-local")
    return IMAGE


# --- the translation: a pod template -> `podman run` arguments ---------------------------------------


def _ulimits() -> list[str]:
    """Limits no higher than podman's own: its defaults raise them, which root without
    CAP_SYS_RESOURCE (this VM) may not do (runc: "error setting rlimit"; podman's processes run with
    nproc 32768). A pod spec has no rlimits, so this is the machine's setting, not the manifest's."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    nproc = hard if 0 <= hard < 32768 else 32768  # RLIM_INFINITY is -1
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


def quantity(text: str | int) -> float:
    """A Kubernetes quantity ("500m", "6Gi", "2") as a number (cores or bytes)."""
    match = _QUANTITY.match(str(text))
    if match is None:
        raise ValueError(f"quantity {text!r} is not understood by this translation")
    number, unit = float(match.group(1)), match.group(2)
    return number / 1000 if unit == "m" else number * _UNITS[unit]


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are replaced, $$ is a literal $."""
    return _REF.sub(lambda m: "$" if m.group() == "$$" else env.get(m.group(1), m.group()), value)


def container_env(container: dict[str, Any], secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """envFrom first, then env in order (a later entry may refer to an earlier one)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert set(source) == {"secretRef"}, f"envFrom {source} is not translated"
        env.update(secrets[source["secretRef"]["name"]])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(item["value"], env)
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        secret = secrets.get(ref["name"], {})
        if ref["key"] in secret:
            env[item["name"]] = secret[ref["key"]]
        else:
            assert ref.get("optional"), f"secret {ref['name']}/{ref['key']} is missing and not optional"
    return env


def _volume_source(
    volume: dict[str, Any], pod: dict[str, Any], work: Path, config_maps: dict[str, dict[str, str]], fs_group: int | None
) -> tuple[str, Path | None, dict[str, Any]]:
    """(kind, host path to bind or None for tmpfs, the volume's settings)."""
    kind = next(k for k in volume if k != "name")
    spec = volume[kind]
    if kind == "emptyDir":
        return kind, None, spec
    if kind == "hostPath":
        path = Path(spec["path"])
        assert spec.get("type") != "Directory" or path.is_dir(), f"hostPath {path} must be a directory"
        return kind, path, spec
    folder = work / volume["name"]
    folder.mkdir(parents=True)
    if kind == "downwardAPI":
        for item in spec["items"]:
            field = re.fullmatch(r"metadata\.annotations\['([^']+)'\]", item["fieldRef"]["fieldPath"])
            assert field, f"downwardAPI field {item['fieldRef']['fieldPath']} is not translated"
            (folder / item["path"]).write_text(pod["metadata"]["annotations"][field.group(1)])
    elif kind == "configMap":
        for key, text in config_maps[spec["name"]].items():
            (folder / key).write_text(text)
    elif kind == "persistentVolumeClaim":  # a fresh claim: its root is group-owned by fsGroup, as kubelet does
        if fs_group is not None:
            os.chown(folder, 0, fs_group)
            folder.chmod(0o2775)
    else:
        raise AssertionError(f"volume type {kind} is not translated")
    return kind, folder, spec


def podman_run(
    pod: dict[str, Any],
    work: Path,
    name: str,
    secrets: dict[str, dict[str, str]],
    config_maps: dict[str, dict[str, str]],
    command: list[str] | None = None,
) -> list[str]:
    """`podman run` arguments for the pod template's only container (``command`` replaces its own: probes)."""
    spec = pod["spec"]
    assert len(spec["containers"]) == 1, "one container per pod is translated"
    (container,) = spec["containers"]
    assert set(spec) <= POD_FIELDS, f"pod fields {sorted(set(spec) - POD_FIELDS)} are not translated"
    assert set(container) <= CONTAINER_FIELDS, f"container fields {sorted(set(container) - CONTAINER_FIELDS)} are not translated"
    pod_sc, sc = spec.get("securityContext", {}), container.get("securityContext", {})
    user = sc.get("runAsUser", pod_sc.get("runAsUser"))
    group = sc.get("runAsGroup", pod_sc.get("runAsGroup", user))
    if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
        assert user not in (None, 0), "runAsNonRoot needs a numeric non-root runAsUser"
    for profile in (pod_sc.get("seccompProfile"), sc.get("seccompProfile")):
        assert profile in (None, {"type": "RuntimeDefault"}), f"seccomp {profile} is not translated (podman's default is)"
    args = ["podman", "run", "--rm", "--replace", "--name", name, "--pull=never", "--runtime", "runc", *_ulimits()]
    args += ["--network", "host", "--user", f"{user}:{group}"]
    fs_group = pod_sc.get("fsGroup")
    if fs_group is not None:
        args += ["--group-add", str(fs_group)]
    if sc.get("readOnlyRootFilesystem"):
        args += ["--read-only", "--read-only-tmpfs=false"]  # no extra tmpfs podman would add on /tmp, /run
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    caps = sc.get("capabilities", {})
    args += [f"--cap-drop={c}" for c in caps.get("drop", [])] + [f"--cap-add={c}" for c in caps.get("add", [])]
    limits = container.get("resources", {}).get("limits", {})
    assert set(limits) <= {"cpu", "memory"}, f"limits {sorted(limits)} are not translated"
    if "cpu" in limits:
        args += ["--cpus", f"{min(quantity(limits['cpu']), os.cpu_count() or 1):g}"]
    if "memory" in limits:
        args += ["--memory", str(int(quantity(limits["memory"])))]
    if "workingDir" in container:
        args += ["--workdir", container["workingDir"]]
    env = container_env(container, secrets)
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        assert not mount.get("subPath"), "subPath mounts are not translated"
        kind, source, settings = _volume_source(volumes[mount["name"]], pod, work, config_maps, fs_group)
        target = mount["mountPath"]
        if source is None:
            size = f",tmpfs-size={int(quantity(settings['sizeLimit']))}" if settings.get("sizeLimit") else ""
            args += ["--mount", f"type=tmpfs,destination={target},tmpfs-mode=0777{size}"]  # kubelet's emptyDir mode
        else:
            read_only = mount.get("readOnly") or kind in ("configMap", "downwardAPI")
            args += ["--mount", f"type=bind,source={source},destination={target}" + (",ro" if read_only else "")]
    entrypoint = command or container.get("command")
    if entrypoint:
        args += ["--entrypoint", json.dumps(entrypoint)]
    return [*args, container["image"], *([] if command else [expand(a, env) for a in container.get("args", [])])]


# --- the tests ---------------------------------------------------------------------------------------


def _render(tmp_path: Path, image: str, mlflow: MlflowServer, cache: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The one Job and the ConfigMap's data that `viadk8s render` writes for a tiny PaDiM run."""
    config = tmp_path / "viadk8s.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "store": f"s3://{BUCKET}/pod",
                "s3": {"addressing_style": "path"},
                "mlflow": {"tracking_uri": mlflow.uri},
                "datasets": {"tiny": {"synthetic": TINY}},
                "cluster": {
                    "image": image,
                    "gpu": {"count": 0},
                    "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "6Gi"}},
                    "shm_size": "1Gi",
                    "cache": {"type": "hostPath", "path": str(cache)},
                    "secrets": {"env_from": [SECRET]},
                },
            }
        )
    )
    out = tmp_path / "manifests"
    args = ["render", "--experiment", "evaluation", "--models", "padim", "--datasets", "tiny", "--categories", "tiles"]
    args += ["--image-size", "64", "--weights", "random", "--max-epochs", "1", "--sweep", "podtest"]
    rendered = subprocess.run(
        [sys.executable, "-m", "viadk8s", *args, "--out", str(out), "--config", str(config), "--namespace", "bench"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert rendered.returncode == 0, rendered.stdout + rendered.stderr
    docs = [yaml.safe_load(p.read_text()) for p in sorted(out.glob("*.yaml"))]
    (job,) = [d for d in docs if d["kind"] == "Job"]
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    return job, config_map["data"]


def test_rendered_job_pod_runs_in_the_image(image: str, tmp_path: Path, s3: S3Server, mlflow: MlflowServer) -> None:
    cache = tmp_path / "node-cache"  # the hostPath: a node folder the pod's user owns
    cache.mkdir()
    job, config_data = _render(tmp_path, image, mlflow, cache)
    pod = job["spec"]["template"]
    uid = pod["spec"]["securityContext"]["runAsUser"]
    os.chown(cache, uid, uid)
    secrets = {SECRET: {**s3.env, "MLFLOW_S3_ENDPOINT_URL": s3.endpoint}}
    (config_map,) = [v["configMap"]["name"] for v in pod["spec"]["volumes"] if "configMap" in v]
    config_maps = {config_map: config_data}

    # the security context is in force inside the container: user, no capabilities, no new privileges, read-only root
    probe_cmd = [
        "sh",
        "-c",
        "id -u; id -G; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; touch /opt/x 2>&1; touch /tmp/x && echo tmp-ok",
    ]
    probe = subprocess.run(
        podman_run(pod, tmp_path / "probe", "viadk8s-probe", secrets, config_maps, command=probe_cmd),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert probe.returncode == 0, probe.stdout + probe.stderr
    lines = probe.stdout.splitlines()
    assert lines[0] == str(uid) and str(pod["spec"]["securityContext"]["fsGroup"]) in lines[1].split(), (
        probe.stdout + probe.stderr
    )
    assert re.search(r"CapEff:\s+0+$", probe.stdout, re.M) and re.search(r"NoNewPrivs:\s+1$", probe.stdout, re.M), probe.stdout
    assert "Read-only file system" in probe.stdout and lines[-1] == "tmp-ok", probe.stdout + probe.stderr

    started = time.monotonic()
    run = subprocess.run(
        podman_run(pod, tmp_path / "pod", "viadk8s-pod-test", secrets, config_maps),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    print(f"pod run: {time.monotonic() - started:.1f} s")
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]

    spec = RunSpec.from_json(pod["metadata"]["annotations"]["viadk8s.io/spec"])
    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1", **_keys(s3))
    result = parse_result(client.get_object(Bucket=BUCKET, Key=f"pod/{run_prefix(spec)}/{RESULT}")["Body"].read())
    assert result.run_key == spec.run_key and result.metrics["image_AUROC"] is not None
    lock = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    assert result.lock_sha256 == lock, f"the image holds another lock than {LOCK}: make image-local"
    assert result.versions["torch"].split("+")[0] == _pin("torch")
    assert any(cache.rglob("*.png")), "the synthetic dataset was not written to the hostPath cache"

    from mlflow import MlflowClient

    tracking = MlflowClient(tracking_uri=mlflow.uri)
    experiment = tracking.get_experiment_by_name(spec.experiment)
    runs = tracking.search_runs([experiment.experiment_id], filter_string=f"tags.run_key = '{spec.run_key}'")
    (child,) = [r for r in runs if r.data.tags.get("viadk8s.role") == "run"]
    assert child.data.tags.get("mlflow.parentRunId") and child.info.status == "FINISHED"


def _keys(s3: S3Server) -> dict[str, str]:
    return {"aws_access_key_id": s3.env["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": s3.env["AWS_SECRET_ACCESS_KEY"]}


def _pin(name: str) -> str:
    (version,) = re.findall(rf"^{re.escape(name)}==(\S+)", LOCK.read_text(), re.M)
    return version


def test_chart_mlflow_server_runs_in_the_image(image: str, tmp_path: Path) -> None:
    """The chart's MLflow Deployment (command, args, env, securityContext, PVC) answers /health."""
    helm = ROOT / ".tools" / "bin" / "helm"
    if not helm.is_file():
        _missing("helm not found in .tools/bin: run `make tools`")
    port = free_port()
    values = {"image": {"repository": image.rsplit(":", 1)[0], "tag": image.rsplit(":", 1)[1]}, "mlflow": {"port": port}}
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    out = subprocess.run(
        [str(helm), "template", "bench", str(ROOT / "charts" / "viadk8s"), "-f", str(tmp_path / "values.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    (deployment,) = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]
    assert pod["spec"]["containers"][0]["image"] == image
    args = podman_run(pod, tmp_path / "pod", "viadk8s-mlflow-test", {}, {})
    server = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, status = time.monotonic() + 120, None
    try:
        while time.monotonic() < deadline and server.poll() is None and status != 200:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    status = response.status
            except OSError:
                time.sleep(1)
    finally:
        subprocess.run(["podman", "stop", "--time", "5", "viadk8s-mlflow-test"], capture_output=True, check=False)
        output = server.communicate(timeout=60)[0]
    assert status == 200, f"no /health answer:\n{output[-4000:]}"
    assert (tmp_path / "pod" / "data" / "mlflow.db").is_file()  # the sqlite backend is on the claim


def test_build_refuses_a_base_without_the_locked_torch(image: str) -> None:
    """`make image` on a base whose torch is not the lock's stops before installing anything."""
    minbase = "localhost/viadk8s-minbase:bookworm"  # scripts/build-base-image.sh: Debian + python3, no torch
    if subprocess.run(["podman", "image", "exists", minbase], check=False).returncode != 0:
        _missing(f"{minbase} not built: make image-local")
    build = subprocess.run(
        ["make", "-C", str(ROOT), "image", "CONTAINER=podman", f"BASE_IMAGE={minbase}", "IMAGE=localhost/viadk8s-test:refused"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert build.returncode != 0
    assert f"the base image has torch none, requirements.lock pins {_pin('torch')}" in build.stdout + build.stderr

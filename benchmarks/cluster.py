"""What a Job costs on a real Kubernetes (scripts/kube.sh's single node), against SeaweedFS on 127.0.0.1.

Measured in this run, for ``runs`` PaDiM runs (64 px, random weights) submitted at once with
``viadk8s submit``, the worker image already on the node, ``gpus`` GPUs advertised (so that many
pods run at a time):
* seconds from the start of ``submit`` to the first pod Running;
* per-run overhead: the container's wall time (started to finished) minus the worker's own
  fit + test time from its ``result.json`` (imports, data, scoring, artifacts);
* per-run start: pod created to container started (scheduling, waiting for a free GPU, sandbox);
  with more runs than GPUs this is mostly the queue, so it is reported apart from the overhead;
* the sweep's wall time (submit to the last Job complete) against the same sweep with
  ``viadk8s run --jobs gpus`` on this machine (target ratio <= 1.5: a pod per run may cost that much);
* with ``--pack N``: the same runs again as packs of N (``submit --pack N``), per-run overhead of a
  pack (its container wall minus its runs' fit + test, per run) against a pod per run (target: at
  most half), and the packed sweep's wall against the unpacked one.

    python benchmarks/cluster.py [--runs 4] [--gpus 2] [--model padim] [--pack 0]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from table import Row, figure_row, ratio_row, run_alone

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.cluster/servers: what the tests use

from tests.cluster import Kube, kube_cluster, missing_binaries  # noqa: E402
from tests.servers import BUCKET, seaweedfs  # noqa: E402
from viadk8s.results import parse_result  # noqa: E402
from viadk8s.store import open_store  # noqa: E402

IMAGE = os.environ.get("VIADK8S_TEST_IMAGE", "localhost/viadk8s:local")
NAMESPACE = "bench"


def _viadk8s(args: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "viadk8s", *args], env=env, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"viadk8s {' '.join(args)}: {done.stderr[-1500:]}")
    return time.perf_counter() - started


def _time(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _watch(kube: Kube, started: float, sweep: str, jobs_expected: int) -> tuple[float, float, list[dict[str, Any]]]:
    """Poll until every Job of ``sweep`` completed: (first pod Running, all complete) in seconds after ``started``."""
    first_running = None
    selector = f"viadk8s.io/sweep={sweep}"
    while True:
        pods = kube.json("pods", "-n", NAMESPACE, "-l", selector)["items"]
        if first_running is None and any(p["status"].get("phase") in ("Running", "Succeeded") for p in pods):
            first_running = time.perf_counter() - started
        jobs = kube.json("jobs", "-n", NAMESPACE, "-l", selector)["items"]
        if len(jobs) == jobs_expected and all(j["status"].get("succeeded") for j in jobs):
            return first_running or 0.0, time.perf_counter() - started, pods
        if any(j["status"].get("failed") for j in jobs):
            raise RuntimeError(f"a benchmark Job failed: {kube.kubectl('get', 'pods', '-n', NAMESPACE)}")
        time.sleep(0.2)


def _overheads(pods: list[dict[str, Any]], sweep: str) -> tuple[list[float], list[float]]:
    """Per pod: its container's wall minus the fit + test of the runs it committed, per run; and its
    start (pod created to container started)."""
    store = open_store(f"s3://{BUCKET}/bench", "path")
    stored = list(store.list(f"runs/{sweep}/"))  # an iterator: read once, searched per pod
    overheads, starts = [], []
    for pod in pods:
        labels, annotations = pod["metadata"]["labels"], pod["metadata"].get("annotations", {})
        keys = annotations.get("viadk8s.io/run-keys", labels.get("viadk8s.io/run-key", "")).split(",")
        results = [parse_result(store.read_bytes(k)) for k in stored for key in keys if k.endswith(f"{key}/result.json")]
        terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        container_wall = _time(terminated["finishedAt"]) - _time(terminated["startedAt"])
        worked = sum(r.timings.fit_s + r.timings.test_s for r in results)
        overheads.append((container_wall - worked) / len(results))
        starts.append(_time(terminated["startedAt"]) - _time(pod["metadata"]["creationTimestamp"]))
    return overheads, starts


def measure(runs: int = 4, gpus: int = 2, model: str = "padim", pack: int = 0) -> list[Row]:
    reason = missing_binaries()
    if reason or subprocess.run(["podman", "image", "exists", IMAGE], check=False).returncode:
        return [{"name": "cluster: not measured", "met": False, "note": reason or f"no image {IMAGE}: make image-local"}]
    seeds = ",".join(str(s) for s in range(1, runs // 2 + 1))
    selection = ["--experiment", "evaluation", "--models", model, "--datasets", "tiny", "--seeds", seeds]
    selection += ["--image-size", "64", "--weights", "random"]
    tiny = {"synthetic": {"categories": ["tiles", "fabric"], "n_train": 10, "n_test_good": 6, "n_test_bad": 6, "size": 64}}
    root = Path(tempfile.mkdtemp(prefix="viadk8s-bench-cluster-"))
    os.environ["KUBE_GPUS"] = str(gpus)
    with seaweedfs(root / "s3") as s3, kube_cluster() as kube:
        kube.load_image(IMAGE)
        kube.kubectl("create", "namespace", NAMESPACE)
        secret = [f"--from-literal={k}={v}" for k, v in {**s3.env, "AWS_ENDPOINT_URL": s3.endpoint}.items()]
        kube.kubectl("-n", NAMESPACE, "create", "secret", "generic", "s3", *secret)
        cluster = {
            "namespace": NAMESPACE,
            "image": IMAGE,
            "image_pull_policy": "Never",
            "host_network": True,
            "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"cpu": "2", "memory": "3Gi"}},
            "shm_size": "256Mi",
            "secrets": {"env_from": ["s3"]},
        }
        config = {"store": f"s3://{BUCKET}/bench", "s3": {"addressing_style": "path"}, "datasets": {"tiny": tiny}}
        (root / "cluster.yaml").write_text(yaml.safe_dump({**config, "cluster": cluster}))
        (root / "local.yaml").write_text(yaml.safe_dump({"store": str(root / "local"), "datasets": {"tiny": tiny}}))
        os.environ.update(s3.env)  # this process reads the results too
        env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig)}
        started = time.perf_counter()
        _viadk8s(["submit", *selection, "--sweep", "bench", "--config", str(root / "cluster.yaml")], env, root)
        first, wall, pods = _watch(kube, started, "bench", runs)
        overheads, starts = _overheads(pods, "bench")
        if pack:
            started = time.perf_counter()
            packed_args = ["submit", *selection, "--sweep", "packed", "--pack", str(pack), "--config", str(root / "cluster.yaml")]
            _viadk8s(packed_args, env, root)
            _, packed_wall, packed_pods = _watch(kube, started, "packed", -(-runs // pack))
            packed_overheads, _ = _overheads(packed_pods, "packed")
        local_args = ["run", *selection, "--sweep", "bench", "--jobs", str(gpus), "--config", str(root / "local.yaml")]
        local = _viadk8s(local_args, env, root)
    note = f"{runs} {model} runs, 64 px, {gpus} at a time; image on the node"
    rows = [
        figure_row("cluster: submit to the first pod Running (s)", first, note),
        figure_row("cluster: per-run overhead, container wall minus fit+test (s, mean)", *_mean_each(overheads)),
        figure_row("cluster: per-run start, pod created to container started (s, mean)", *_mean_each(starts)),
        ratio_row("cluster: sweep wall, submit to all Jobs complete (s)", f"run --jobs {gpus}", local, wall, 1.5, note),
    ]
    if pack:
        mean, packed_mean = sum(overheads) / len(overheads), sum(packed_overheads) / len(packed_overheads)
        packs = f"packs of {pack}: per-run overhead of each pack {json.dumps([round(o, 1) for o in packed_overheads])}"
        rows += [
            ratio_row("cluster: per-run overhead, packed (s)", "a pod per run", mean, packed_mean, 0.5, packs),
            ratio_row("cluster: sweep wall, packed (s)", "a pod per run", wall, packed_wall, 1.0, note),
        ]
    return rows


def _mean_each(values: list[float]) -> tuple[float, str]:
    """The mean and every value (timestamps have one-second resolution)."""
    return sum(values) / len(values), f"each run: {json.dumps([round(v, 1) for v in values])}"


if __name__ == "__main__":
    run_alone(measure, __doc__)

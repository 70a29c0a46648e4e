"""A real single-node Kubernetes for tests: ``scripts/kube.sh`` starts it, this module owns its life.

The cluster (etcd, control plane, containerd, a kubelet advertising ``nvidia.com/gpu``) runs on
127.0.0.1 only. It is always torn down, also when a test fails or the run is interrupted (SIGINT,
SIGTERM): ``down`` stops exactly what ``up`` started and restores the kernel settings the kubelet
changed, and :func:`kube_cluster` checks that they are restored.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "kube.sh"
#: the kernel settings the kubelet changes at start
KERNEL_SETTINGS = ("vm.overcommit_memory", "kernel.panic", "kernel.panic_on_oops")
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl", "pause")


def bin_dir() -> Path:
    return Path(os.environ.get("KUBE_BIN_DIR", ROOT.parent / "shared" / "k8s" / "bin"))


def missing_binaries() -> str | None:
    """Why the cluster cannot start here, or None."""
    where = bin_dir()
    lacking = [n for n in BINARIES if not (where / n).exists() and not (where / f"{n}.xz").exists()]
    if lacking:
        return (
            f"Kubernetes binaries missing in KUBE_BIN_DIR={where} ({', '.join(lacking)}): point KUBE_BIN_DIR at kube-apiserver, "
            "kube-controller-manager, kube-scheduler, kubelet, kubectl and pause (README 'A cluster on this machine')"
        )
    if os.geteuid() != 0:
        return "the test cluster needs root (containerd, the kubelet's cgroups and mounts)"
    return None


def kernel_settings() -> dict[str, str]:
    return {name: Path("/proc/sys", *name.split(".")).read_text().strip() for name in KERNEL_SETTINGS}


@dataclass
class Kube:
    """A running cluster: its admin kubeconfig and binaries."""

    home: Path
    kubeconfig: Path

    @property
    def bin(self) -> Path:
        return self.home / "bin"

    @property
    def api_port(self) -> int:
        ports = dict(line.split("=", 1) for line in (self.home / "run" / "ports.env").read_text().split())
        return int(ports["API_PORT"])

    def kubectl(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(
            [str(self.bin / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def load_image(self, image: str) -> None:
        _script("load", image, home=self.home)

    def token_kubeconfig(self, service_account: str, namespace: str, path: Path) -> Path:
        """A kubeconfig that authenticates as a ServiceAccount (a TokenRequest token, not a certificate)."""
        token = self.kubectl("create", "token", service_account, "-n", namespace, "--duration", "2h").strip()
        admin = yaml.safe_load(self.kubeconfig.read_text())
        cluster = admin["clusters"][0]["cluster"]
        ca = base64.b64encode(Path(cluster["certificate-authority"]).read_bytes()).decode()
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "lab", "cluster": {"server": cluster["server"], "certificate-authority-data": ca}}],
                    "users": [{"name": service_account, "user": {"token": token}}],
                    "contexts": [{"name": "sa", "context": {"cluster": "lab", "user": service_account, "namespace": namespace}}],
                    "current-context": "sa",
                }
            )
        )
        path.chmod(0o600)
        return path

    def wait_for(self, what: str, condition: Any, seconds: float, every: float = 1.0) -> Any:
        """Poll ``condition()`` until it returns something truthy; fail with the cluster's view after ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            found = condition()
            if found:
                return found
            time.sleep(every)
        pods = self.kubectl("get", "pods", "-A", "-o", "wide", check=False)
        events = self.kubectl("get", "events", "-A", "--sort-by=.lastTimestamp", check=False)[-3000:]
        raise AssertionError(f"{what}: not after {seconds} s\n{pods}\n{events}")

    def json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json"))


def _script(*args: str, home: Path) -> str:
    env = {**os.environ, "KUBE_HOME": str(home), "KUBE_BIN_DIR": str(bin_dir())}
    done = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"scripts/kube.sh {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def default_home() -> Path:
    """Binaries unpack once and loaded images stay in containerd between runs: a cache folder."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(os.environ.get("KUBE_HOME", cache / "viadk8s" / "kube"))


@contextmanager
def kube_cluster(home: Path | None = None) -> Iterator[Kube]:
    """Start the cluster, yield it, and always tear it down; SIGTERM becomes an interrupt so the
    teardown runs then too. Raises if the kernel settings differ afterwards from before."""
    home = home or default_home()
    before = kernel_settings()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with _torn_down(home, before):
            yield Kube(home, home / "run" / "admin.kubeconfig")
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _torn_down(home: Path, before: dict[str, str]) -> Iterator[None]:
    try:
        _script("up", home=home)  # a failing `up` tears down what it started, and nothing it did not
    except KeyboardInterrupt:  # interrupted half-way: the script was killed before its own teardown
        _script("down", home=home)
        raise
    try:
        yield
    finally:
        _script("down", home=home)
        after = kernel_settings()
        if after != before:
            raise RuntimeError(f"the kernel settings were not restored: before {before}, after {after}")

"""The process environment a worker needs, set in one place for local runs and pods alike.

* ``HF_HUB_OFFLINE=1``: timm fails fast on a missing weight file instead of hanging on the network
  (a user opts in to downloads with ``VIADK8S_ALLOW_DOWNLOADS=1``).
* ``MLFLOW_DISABLE_TELEMETRY=true``; MLflow's HTTP retries bounded (3 tries, 30 s timeout) so an
  unreachable tracking server costs seconds, not minutes: the run's result is kept as pending.
* ``MALLOC_MMAP_THRESHOLD_=1048576``: anomalib's coreset loop fragments glibc's heap (over 10 GB
  at 128 px without it, 1.26 GB with it). Our coreset (viadk8s/models/components/coreset.py) no
  longer needs it (1.34 GB without, 1.26 GB with); it stays for the other models' sake. glibc reads
  it at start-up, so a process that was started without it sets the same threshold with ``mallopt``.
* DataLoader workers (:func:`loader_workers`): as many as the CPUs the process may use (its
  affinity and its cgroup's CPU quota, i.e. a pod's CPU limit) minus one, so that a GPU is not
  left waiting for images that one process decodes; ``VIADK8S_DATALOADER_WORKERS`` overrides it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

from viadk8s.errors import SpecError

MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: DataLoader workers: unset, the CPUs the process may use minus one (:func:`loader_workers`).
LOADER_WORKERS = "VIADK8S_DATALOADER_WORKERS"


def worker_env(threads: int | None = None) -> dict[str, str]:
    """Variables for a worker process (also baked into the container image)."""
    env = {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
        "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
        "PYTHONUNBUFFERED": "1",
    }
    if os.environ.get("VIADK8S_ALLOW_DOWNLOADS") != "1":
        env["HF_HUB_OFFLINE"] = "1"
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def prepare_process() -> None:
    """Apply :func:`worker_env` to this process, before torch, timm or mlflow are imported."""
    for key, value in worker_env().items():
        os.environ.setdefault(key, value)
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name)
        if hasattr(libc, "mallopt"):
            libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (a pod's CPU limit), or ``None`` if unlimited.

    cgroup v2 writes it as ``QUOTA PERIOD`` (or ``max PERIOD``) in ``cpu.max``; cgroup v1 as
    ``cpu.cfs_quota_us`` (-1: none) over ``cpu.cfs_period_us``."""
    try:
        fields = (root / "cpu.max").read_text().split()
        quota, period = (None if fields[0] == "max" else float(fields[0])), float(fields[1])
    except (OSError, IndexError, ValueError):
        try:
            quota = float((root / "cpu" / "cpu.cfs_quota_us").read_text())
            period = float((root / "cpu" / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            return None
        quota = None if quota < 0 else quota
    return quota / period if quota is not None and period > 0 else None


def usable_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may use: its CPU affinity, capped by its cgroup's quota (rounded down,
    at least 1). ``os.cpu_count()`` counts the node's cores, which a pod limited to 8 must not use."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    return max(1, min(count, int(limit))) if limit is not None else max(1, count)


def loader_workers(root: Path = CGROUP_ROOT) -> int:
    """DataLoader worker processes: ``$VIADK8S_DATALOADER_WORKERS``, else the usable CPUs minus the
    one the training loop runs on (0 on one CPU: the training process loads the data itself)."""
    value = os.environ.get(LOADER_WORKERS)
    if value is None or value == "":
        return max(0, usable_cpus(root) - 1)
    if not (value.isascii() and value.isdigit()):
        raise SpecError(
            f"{LOADER_WORKERS}={value!r} is not allowed; allowed: a whole number >= 0 (0: load in the training process)"
        )
    return int(value)

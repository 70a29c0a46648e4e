"""The process environment a worker needs, set in one place for local runs and pods alike.

* ``HF_HUB_OFFLINE=1``: timm fails fast on a missing weight file instead of hanging on the network
  (a user opts in to downloads with ``VIADK8S_ALLOW_DOWNLOADS=1``).
* ``MLFLOW_DISABLE_TELEMETRY=true``; MLflow's HTTP retries bounded (3 tries, 30 s timeout) so an
  unreachable tracking server costs seconds, not minutes: the run's result is kept as pending.
* ``MALLOC_MMAP_THRESHOLD_=1048576``: PatchCore's coreset loop fragments glibc's heap (19.7 GB RSS
  at 128 px without it, 0.66 GB with it). glibc reads it at start-up, so a process that was
  started without it sets the same threshold with ``mallopt``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


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

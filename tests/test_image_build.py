"""The worker image's build guard: `make image` keeps the base's torch and refuses a base whose torch
is not the one the lock pins (a replaced torch is the first thing that breaks a GPU image).

The image running as a pod (security context, Secrets, volumes, S3 and MLflow, the chart's MLflow
server) is tested on a real cluster in tests/test_cluster.py. Without podman, root or the local
minimal base the test skips, naming what is missing; with CI=true it fails instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "viadk8s" / "requirements.lock"
MINBASE = "localhost/viadk8s-minbase:bookworm"  # scripts/build-base-image.sh: Debian + python3, no torch


def _missing(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def _pin(name: str) -> str:
    (version,) = re.findall(rf"^{re.escape(name)}==(\S+)", LOCK.read_text(), re.M)
    return version


def test_build_refuses_a_base_without_the_locked_torch() -> None:
    """`make image` on a base whose torch is not the lock's stops before installing anything."""
    if shutil.which("podman") is None:
        _missing("podman is not installed (apt-get install podman buildah debootstrap runc)")
    if os.geteuid() != 0:
        _missing("podman builds here run as root")
    if subprocess.run(["podman", "image", "exists", MINBASE], check=False).returncode != 0:
        _missing(f"{MINBASE} not built: make image-local")
    build = subprocess.run(
        ["make", "-C", str(ROOT), "image", "CONTAINER=podman", f"BASE_IMAGE={MINBASE}", "IMAGE=localhost/viadk8s-test:refused"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert build.returncode != 0
    assert f"the base image has torch none, requirements.lock pins {_pin('torch')}" in build.stdout + build.stderr

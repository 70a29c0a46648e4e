"""Shared fixtures: a tiny synthetic dataset, an isolated store per test, and real S3 and MLflow servers per module."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.cluster import Kube, kube_cluster, missing_binaries
from tests.servers import MlflowServer, S3Server, mlflow_server, seaweedfs

TINY = {"categories": ["tiles", "fabric"], "n_train": 10, "n_test_good": 6, "n_test_bad": 6, "size": 64}


def padim_spec(**changes: object) -> dict[str, object]:
    """The quickest real run, as JSON for ``viadk8s worker --spec -``: PaDiM on 'tiny' tiles at 64 px."""
    spec = {"experiment": "evaluation", "model": "padim", "dataset": "tiny", "category": "tiles", "seed": 1, "image_size": 64}
    return {**spec, "weights": "random", **changes}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's config, store or environment overrides."""
    for var in ("VIADK8S_CONFIG", "VIADK8S_STORE", "VIADK8S_WEIGHTS_DIR", "VIADK8S_CACHE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    """viadk8s.yaml with a store in tmp_path and a 64 px, 10-image synthetic dataset 'tiny'."""
    path = tmp_path / "viadk8s.yaml"
    path.write_text(yaml.safe_dump({"store": str(tmp_path / "store"), "datasets": {"tiny": {"synthetic": TINY}}}))
    return path


Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """Run the real ``viadk8s`` command in a subprocess, as a user would."""

    def run(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "viadk8s", *args],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**os.environ, "COLUMNS": "200", **(env or {})},
            timeout=900,
            check=False,
        )

    return run


# Real servers on 127.0.0.1, one of each per test module that asks (tests.servers starts and stops them).


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory: pytest.TempPathFactory, s3: S3Server) -> Iterator[MlflowServer]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow"), s3) as server:
        yield server


@pytest.fixture
def s3_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point this process (and the CLI subprocesses, which inherit it) at the S3 server."""
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    return s3.env


# A real single-node Kubernetes (tests.cluster): one per session, always torn down.


def missing(reason: str) -> None:
    """Skip a test whose infrastructure is absent, naming how to get it; under CI=true, fail instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def kube() -> Iterator[Kube]:
    reason = missing_binaries()
    if reason:
        missing(reason)
    with kube_cluster() as cluster:
        yield cluster

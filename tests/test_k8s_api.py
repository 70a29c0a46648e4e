"""What a real cluster cannot show: no API server at the address, no cluster configured at all, and a
client dry run that contacts nothing. Everything a cluster does answer is tested against the real
one (tests/test_cluster.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from viadk8s.backends.k8s import jobs
from viadk8s.backends.k8s.client import connect
from viadk8s.backends.k8s.render import job_name
from viadk8s.cli import app
from viadk8s.config import load_config
from viadk8s.errors import InfraError
from viadk8s.plan import Selection, plan


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kubeconfig whose API server address has nothing listening (the port was just freed)."""
    server = f"http://127.0.0.1:{_closed_port()}"
    (tmp_path / "kubeconfig").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "gone",
                "clusters": [{"name": "gone", "cluster": {"server": server}}],
                "users": [{"name": "tester", "user": {"token": "not-a-secret"}}],
                "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "tester", "namespace": "bench"}}],
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    for var in ("VIADK8S_NAMESPACE", "VIADK8S_CONTEXT", "VIADK8S_IMAGE", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(var, raising=False)
    return server


def test_unreachable_api_server_is_one_line_exit_3(nowhere: str) -> None:
    with pytest.raises(InfraError, match=r"cannot reach the Kubernetes API server at http://127.0.0.1:\d+: Connection refused"):
        jobs.sweep_status(connect(load_config().cluster))
    for args in (
        ["status"],
        ["submit", "-e", "input_size", "--models", "patchcore"],
        ["logs", "0123456789abcdef"],
        ["cancel", "--sweep", "s1"],
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 3, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "cannot reach the Kubernetes API server" in errors[0]


def test_no_cluster_configured_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 3 and "error: no Kubernetes cluster configured" in result.output


def test_client_dry_run_contacts_nothing(nowhere: str, tmp_path: Path) -> None:
    """Rendering and checking need no cluster: the unreachable server is never asked."""
    config = load_config(store=str(tmp_path / "store"))
    planned = plan("input_size", Selection(models=["patchcore"], seeds=[1], image_sizes=[128], sweep="s1"), config)
    report = jobs.submit(planned, config, None, dry_run="client")
    assert len(report.created) == 2 and report.namespace == "bench"  # the namespace of the kube context
    assert not (tmp_path / "store").exists()  # only a real submission writes the sweep manifest


def test_client_dry_run_packs_short_runs_into_one_job(nowhere: str, tmp_path: Path) -> None:
    """``--pack 2``: the two short PatchCore runs share one Job, named after both."""
    config = load_config(store=str(tmp_path / "store"))
    planned = plan("input_size", Selection(models=["patchcore"], seeds=[1], image_sizes=[128], sweep="s1"), config)
    report = jobs.submit(planned, config, None, dry_run="client", size=2)
    assert report.created == [job_name(planned.sweep.runs)] and len(planned.sweep.runs) == 2

"""Faults a sweep survives, against the real S3 (SeaweedFS) and MLflow servers and real worker
processes: a worker killed or terminated mid-training, S3 and MLflow stopped and restarted
mid-sweep, two ``viadk8s run`` of one sweep racing, a full dataset cache."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TINY, padim_spec
from tests.servers import BUCKET, MlflowServer, S3Server
from tests.test_s3_mlflow import keys, make_dataset, write_config
from viadk8s.results import parse_result
from viadk8s.store import open_store

pytestmark = pytest.mark.slow
MID_TRAINING = "Fitting a Gaussian to the embedding"  # PaDiM's fit, logged by anomalib inside Trainer.fit
SPEC = padim_spec(sweep="faults")
TINY_DATASET = {"tiny": {"synthetic": TINY}}


def sweep(store: str, sweep_id: str, config: Path, *more: str) -> list[str]:
    """``viadk8s run`` of PaDiM on the tiny dataset, one run at a time."""
    return [
        sys.executable,
        "-m",
        "viadk8s",
        "run",
        "--experiment",
        "evaluation",
        "--models",
        "padim",
        "--datasets",
        "tiny",
        "--image-size",
        "64",
        "--weights",
        "random",
        "--sweep",
        sweep_id,
        "--store",
        store,
        "--config",
        str(config),
        *more,
    ]


def start(args: list[str], env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
    assert proc.stdin is not None
    proc.stdin.write(stdin or "")
    proc.stdin.close()
    proc.stdin = None  # written: communicate() only reads
    return proc


def read_until(proc: subprocess.Popen[str], text: str) -> None:
    """Block on the process's output until a line holds ``text`` (fails if it exits first)."""
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            return
    pytest.fail(f"exited ({proc.wait()}) before printing {text!r}:\n{''.join(seen)[-3000:]}")


def wait_for_results(server: S3Server, prefix: str, count: int, proc: subprocess.Popen[str]) -> None:
    """Poll the bucket until ``count`` results are committed under ``prefix``."""
    deadline = time.monotonic() + 300
    while sum(k.endswith("/result.json") for k in keys(prefix, server)) < count:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, f"no {count} results under {prefix} after 300 s"
        time.sleep(0.5)


def results(server: S3Server, prefix: str) -> dict[str, dict]:
    """Run key -> its committed (and valid) result; asserts no temporary key is left."""
    stored = keys(prefix, server)
    assert not [k for k in stored if k.endswith(".tmp")], stored
    bucket = open_store(f"s3://{BUCKET}", "path")
    found = [k for k in stored if k.endswith("/result.json")]
    return {k.split("/")[-2]: json.loads(parse_result(bucket.read_bytes(k)).model_dump_json()) for k in found}


def children(server: MlflowServer, sweep_id: str) -> tuple[list, list]:
    """The sweep's parent runs and child runs in MLflow."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=server.uri)
    experiment = client.get_experiment_by_name("evaluation")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.sweep = '{sweep_id}'")
    parents = [r for r in runs if r.data.tags.get("viadk8s.role") == "sweep"]
    return parents, [r for r in runs if r.data.tags.get("viadk8s.role") == "run"]


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_worker_killed_mid_training_leaves_nothing_and_reruns(  # noqa: ANN001
    cli, tmp_path: Path, s3: S3Server, s3_env: dict[str, str], signum: signal.Signals
) -> None:
    prefix = f"kill-{signum.name.lower()}"
    config = write_config(tmp_path / "viadk8s.yaml", f"s3://{BUCKET}/{prefix}", datasets=TINY_DATASET)
    env = {"TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    worker = start([sys.executable, "-m", "viadk8s", "worker", "--spec", "-", "--config", str(config)], env, json.dumps(SPEC))
    read_until(worker, MID_TRAINING)
    worker.send_signal(signum)
    output = worker.communicate(timeout=120)[0]
    assert keys(f"{prefix}/runs/", s3) == []  # no result, no artifact, no temporary key
    if signum == signal.SIGTERM:
        assert worker.returncode == 128 + signal.SIGTERM, output[-3000:]
        assert output.strip().splitlines()[-1].startswith("error: terminated (SIGTERM) before the result was stored")
        assert not list((tmp_path / "tmp").glob("viadk8s-*"))  # unwound: its temporary folder is gone
    else:
        assert worker.returncode == -signal.SIGKILL

    again = cli("worker", "--spec", "-", "--config", str(config), stdin=json.dumps(SPEC), env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(results(s3, f"{prefix}/runs/")) == 1


def test_s3_stopped_mid_sweep_then_rerun_completes(tmp_path: Path, s3: S3Server, s3_env: dict[str, str]) -> None:
    store = f"s3://{BUCKET}/s3-restart"
    config = write_config(
        tmp_path / "viadk8s.yaml", store, datasets=TINY_DATASET, s3={"addressing_style": "path", "max_attempts": 2}
    )
    first = start(sweep(store, "restart", config))
    wait_for_results(s3, "s3-restart/runs/", 1, first)
    s3.process.stop()  # the second run (of two) now cannot reach the store
    try:
        output = first.communicate(timeout=300)[0]
        assert first.returncode != 0, output[-3000:]
        assert "unreachable" in output, output[-3000:]
    finally:
        s3.process.start()
    again = start(sweep(store, "restart", config))
    output = again.communicate(timeout=300)[0]
    assert again.returncode == 0 and "1 done, 1 skipped" in output, output[-3000:]
    assert sorted(r["spec"]["category"] for r in results(s3, "s3-restart/runs/").values()) == ["fabric", "tiles"]


def test_two_runs_of_one_sweep_at_once(tmp_path: Path, s3: S3Server, s3_env: dict[str, str], mlflow: MlflowServer) -> None:
    """A retried pod racing its predecessor: both train, both commit; one result, one MLflow child."""
    store = f"s3://{BUCKET}/race"
    config = write_config(tmp_path / "viadk8s.yaml", store, mlflow.uri, datasets=TINY_DATASET)
    racing = [start(sweep(store, "race", config, "--categories", "tiles")) for _ in range(2)]
    outputs = [proc.communicate(timeout=300)[0] for proc in racing]
    assert [proc.returncode for proc in racing] == [0, 0], outputs
    (stored,) = results(s3, "race/runs/").values()
    assert stored["tracking"]["status"] == "logged"
    parents, tracked = children(mlflow, "race")
    assert len(parents) == 1 and [r.data.tags["run_key"] for r in tracked] == [stored["run_key"]]
    assert tracked[0].data.tags["mlflow.parentRunId"] == parents[0].info.run_id


@contextlib.contextmanager
def tmpfs(folder: Path, size: int) -> Iterator[Path]:
    """A small tmpfs mounted on ``folder`` (skips the test where mounting is not permitted)."""
    folder.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_full_dataset_cache_is_an_infrastructure_error(cli, tmp_path: Path, s3: S3Server, s3_env: dict[str, str]) -> None:  # noqa: ANN001
    store = f"s3://{BUCKET}/full"
    assert cli("datasets", "upload", "mine", "--from", str(make_dataset(tmp_path)), "--store", store).returncode == 0
    archive = json.loads(open_store(store, "path").read_bytes("datasets/mine/manifest.json"))["categories"]["tiles"]
    config = write_config(tmp_path / "viadk8s.yaml", store)  # its cache_dir: tmp_path / "cache"
    # room for the downloaded archive, not for its extraction beside it
    with tmpfs(tmp_path / "cache", int(1.5 * archive["bytes"])) as cache:
        done = cli("worker", "--spec", "-", "--config", str(config), stdin=json.dumps({**SPEC, "dataset": "mine"}))
        assert done.returncode == 3, done.stderr[-3000:]
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("error: no space left in ") and "nothing was kept" in last, done.stderr[-3000:]
        assert "Traceback" not in done.stderr
        left = [p.relative_to(cache) for p in cache.rglob("*") if p.is_file() and p.parent.name != ".locks"]
        assert left == [] and list((cache / "datasets" / "mine").iterdir()) == []


def test_mlflow_stopped_mid_sweep_loses_nothing_after_sync(  # noqa: ANN001
    cli, tmp_path: Path, s3: S3Server, s3_env: dict[str, str], mlflow: MlflowServer
) -> None:
    store = f"s3://{BUCKET}/mlflow-restart"
    config = write_config(tmp_path / "viadk8s.yaml", store, mlflow.uri, datasets=TINY_DATASET)
    running = start(sweep(store, "tracked", config), {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    wait_for_results(s3, "mlflow-restart/runs/", 1, running)
    mlflow.process.stop()  # the second run trains on, then cannot log
    try:
        output = running.communicate(timeout=300)[0]
    finally:
        mlflow.process.start()
    assert running.returncode == 0 and "2 done" in output, output[-3000:]
    before = results(s3, "mlflow-restart/runs/")
    assert sorted(r["tracking"]["status"] for r in before.values()) == ["logged", "pending"]

    synced = cli("mlflow", "sync", "--sweep", "tracked", "--config", str(config))
    assert synced.returncode == 0 and "1 runs synced" in synced.stdout, synced.stdout + synced.stderr
    after = results(s3, "mlflow-restart/runs/")
    assert {r["tracking"]["status"] for r in after.values()} == {"logged"}
    parents, tracked = children(mlflow, "tracked")
    assert len(parents) == 1 and sorted(r.data.tags["run_key"] for r in tracked) == sorted(after)
    for run in tracked:
        assert run.data.metrics["image_AUROC"] == pytest.approx(after[run.data.tags["run_key"]]["metrics"]["image_AUROC"])
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id


def test_racing_creators_converge_on_one_mlflow_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race made certain: each of two processes searches, finds nothing, creates a parent run;
    they end with one active run, the one the last of them uses."""
    from viadk8s.tracking import ensure_experiment, sweep_run

    client, experiment_id = ensure_experiment(f"sqlite:///{tmp_path / 'mlflow.db'}", f"file://{tmp_path}", "evaluation")
    search = client.search_runs
    monkeypatch.setattr(client, "search_runs", lambda *a, **kw: [] if kw.get("max_results") == 1 else search(*a, **kw))
    sweep_run(client, experiment_id, "race")
    last = sweep_run(client, experiment_id, "race")
    assert [r.info.run_id for r in search([experiment_id], filter_string="tags.sweep = 'race'")] == [last]

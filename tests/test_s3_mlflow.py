"""The store on a real S3 server (SeaweedFS) and tracking on a real ``mlflow server``, with faults."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import boto3
import pytest
import yaml

from tests.checks import made_up_result
from tests.conftest import TINY, padim_spec
from tests.servers import BUCKET, MlflowServer, S3Server, free_port
from viadk8s.catalog import SyntheticOptions
from viadk8s.data.synthetic import ensure_category
from viadk8s.results import RESULT, RunResult, load_results, run_prefix
from viadk8s.spec import RunSpec
from viadk8s.store import open_store


def make_dataset(root: Path) -> Path:
    """A user's MVTec-layout folder with two categories."""
    options = SyntheticOptions(**TINY)
    (root / "mine").mkdir(parents=True)
    for category in options.categories:
        ensure_category(options, category, root / "gen").rename(root / "mine" / category)
    return root / "mine"


def write_config(path: Path, store: str, tracking_uri: str | None = None, **extra: object) -> Path:
    data: dict[str, object] = {
        "store": store,
        "cache_dir": str(path.parent / "cache"),
        "s3": {"addressing_style": "path"},
        **extra,
    }
    if tracking_uri:
        data["mlflow"] = {"tracking_uri": tracking_uri}
    path.write_text(yaml.safe_dump(data))
    return path


def keys(prefix: str, s3: S3Server) -> list[str]:
    client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint,
        **{
            k: s3.env[v]
            for k, v in (("aws_access_key_id", "AWS_ACCESS_KEY_ID"), ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY"))
        },
        region_name="us-east-1",
    )
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


RUN = (
    "run",
    "--experiment",
    "evaluation",
    "--models",
    "padim",
    "--datasets",
    "mine",
    "--image-size",
    "64",
    "--weights",
    "random",
    "--jobs",
    "2",
)


def test_sweep_on_s3_with_mlflow_server(cli, tmp_path: Path, s3: S3Server, s3_env: dict[str, str], mlflow: MlflowServer) -> None:  # noqa: ANN001
    store = f"s3://{BUCKET}/e2e"
    source = make_dataset(tmp_path)
    uploaded = cli("datasets", "upload", "mine", "--from", str(source), "--store", store)
    assert uploaded.returncode == 0, uploaded.stderr
    assert "2 categories" in uploaded.stdout
    listed = cli("datasets", "list", "--store", store)
    assert listed.returncode == 0 and any(
        line.split("│")[1].strip() == "mine" and "yes" in line for line in listed.stdout.splitlines() if "│" in line
    ), listed.stdout
    verified = cli("datasets", "verify", "mine", "--store", store)
    assert verified.returncode == 0, verified.stderr

    config = write_config(tmp_path / "viadk8s.yaml", store, mlflow.uri)
    first = cli(*RUN, "--config", str(config))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "2 done, 0 skipped" in first.stdout
    stored = keys("e2e/", s3)
    results = [k for k in stored if k.endswith("/result.json")]
    assert len(results) == 2 and "e2e/sweeps/evaluation/sweep.json" in stored
    assert sum(k.endswith(("/scores.csv", "/scores.png")) for k in stored) == 4
    assert not [k for k in stored if k.endswith(".tmp")]  # no temporary key left behind
    assert len(list((tmp_path / "cache" / "datasets" / "mine").iterdir())) == 2  # staged once per category

    table = cli("aggregate", "--sweep", "evaluation", "--config", str(config), "--format", "md")
    assert table.returncode == 0 and "| PaDiM" in table.stdout and "mine" in table.stdout, table.stderr

    # what a reader re-checks, read back from S3: verify, intervals beside the paper, the report
    checked = cli("verify", "--sweep", "evaluation", "--config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.splitlines()[-1] == "verified 2 runs of sweep evaluation: 0 disagreements, 0 warnings", checked.stdout
    against = cli("aggregate", "--sweep", "evaluation", "--config", str(config), "--ci", "--against", "paper")
    assert against.returncode == 0 and "do not report the evaluation experiment" in against.stderr, against.stderr
    report = cli("report", "--sweep", "evaluation", "--config", str(config), "--out", str(tmp_path / "report"))
    assert report.returncode == 0 and (tmp_path / "report" / "report.html").is_file(), report.stderr
    assert "e2e/sweeps/evaluation/report.html" in keys("e2e/", s3)

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow.uri)
    experiment = client.get_experiment_by_name("evaluation")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("viadk8s.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("viadk8s.role") == "run"]
    assert len(parents) == 1 and len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert {c.info.run_name for c in children} == {"padim_mine_tiles_seed3341", "padim_mine_fabric_seed3341"}
    assert {a.path for a in client.list_artifacts(children[0].info.run_id)} >= {"scores.csv", "scores.png", "result.json"}

    # a re-run of a run key (its result lost) updates its MLflow run instead of adding one
    boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1").delete_object(Bucket=BUCKET, Key=results[0])
    again = cli(*RUN, "--config", str(config))
    assert again.returncode == 0 and "1 done, 1 skipped" in again.stdout, again.stdout + again.stderr
    assert len([r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("viadk8s.role") == "run"]) == 2


def test_corrupt_archive_is_refused_before_training(cli, tmp_path: Path, s3: S3Server, s3_env: dict[str, str]) -> None:  # noqa: ANN001
    store = f"s3://{BUCKET}/corrupt"
    assert cli("datasets", "upload", "mine", "--from", str(make_dataset(tmp_path)), "--store", store).returncode == 0
    manifest = json.loads(
        boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
        .get_object(Bucket=BUCKET, Key="corrupt/datasets/mine/manifest.json")["Body"]
        .read()
    )
    archive = manifest["categories"]["tiles"]["key"]
    boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1").put_object(
        Bucket=BUCKET, Key=f"corrupt/{archive}", Body=b"garbage"
    )
    config = write_config(tmp_path / "viadk8s.yaml", store)
    spec = padim_spec(sweep="bad", dataset="mine")
    done = cli("worker", "--spec", "-", "--config", str(config), stdin=json.dumps(spec))
    assert done.returncode == 2, done.stderr
    assert "is corrupt: sha256" in done.stderr.splitlines()[-1]
    assert "Training" not in done.stderr and "Initializing" not in done.stderr
    assert [p.name for p in (tmp_path / "cache" / "datasets" / "mine").iterdir()] == []  # nothing half-staged remains
    assert not [k for k in keys("corrupt/runs/", s3)]
    broken = cli("datasets", "verify", "mine", "--store", store)
    assert broken.returncode == 2 and "tiles: sha256" in broken.stderr


STAGE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from viadk8s.data.mirror import read_manifest
    from viadk8s.data.staging import stage
    from viadk8s.store import open_store
    store = open_store(sys.argv[1], "path")
    path, downloaded = stage(store, read_manifest(store, "mine"), "fabric", Path(sys.argv[2]))
    print(downloaded, sum(1 for _ in path.rglob("*.png")))
    """
)


def test_two_processes_staging_one_category_download_once(cli, tmp_path: Path, s3_env: dict[str, str]) -> None:  # noqa: ANN001
    store = f"s3://{BUCKET}/concurrent"
    assert (
        cli("datasets", "upload", "mine", "--from", str(make_dataset(tmp_path)), "--store", store, "--compress").returncode == 0
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", STAGE, store, str(tmp_path / "node-cache")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    answers = sorted(out.split()[0] for out, _ in outputs)
    files = {out.split()[1] for out, _ in outputs}
    assert answers == ["False", "True"] and files == {str(TINY["n_train"] + TINY["n_test_good"] + 2 * TINY["n_test_bad"])}


def test_s3_down_is_an_infrastructure_error(cli, tmp_path: Path, s3_env: dict[str, str]) -> None:  # noqa: ANN001
    config = write_config(tmp_path / "viadk8s.yaml", f"s3://{BUCKET}/down", s3={"addressing_style": "path", "max_attempts": 3})
    spec = {"sweep": "down", "experiment": "evaluation", "model": "padim", "dataset": "synthetic", "category": "tiles", "seed": 1}
    done = cli(
        "worker",
        "--spec",
        "-",
        "--config",
        str(config),
        stdin=json.dumps(spec),
        env={"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{free_port()}"},
    )
    assert done.returncode == 3, done.stderr
    assert "unreachable after 3 attempts" in done.stderr.splitlines()[-1]
    assert "Traceback" not in done.stderr


def test_wrong_credentials_are_named(cli, tmp_path: Path, s3_env: dict[str, str]) -> None:  # noqa: ANN001
    done = cli("datasets", "list", "--store", f"s3://{BUCKET}/creds", env={"AWS_SECRET_ACCESS_KEY": "wrong"})
    assert done.returncode == 2
    assert "S3 refused the credentials" in done.stderr and "AWS_SECRET_ACCESS_KEY" in done.stderr


def test_mlflow_down_keeps_result_then_sync(cli, tmp_path: Path, s3_env: dict[str, str], mlflow: MlflowServer) -> None:  # noqa: ANN001
    store = f"s3://{BUCKET}/sync"
    down = write_config(tmp_path / "down.yaml", store, f"http://127.0.0.1:{free_port()}", datasets={"tiny": {"synthetic": TINY}})
    spec = padim_spec(sweep="sync")
    done = cli(
        "worker", "--spec", "-", "--config", str(down), stdin=json.dumps(spec), env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    up = write_config(tmp_path / "up.yaml", store, mlflow.uri, datasets={"tiny": {"synthetic": TINY}})
    stored = json.loads(
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from viadk8s.config import load_config; from viadk8s.results "
                "import load_results; print(load_results(load_config(sys.argv[1]).open_store())[0]"
                ".model_dump_json())",
                str(up),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert stored["tracking"]["status"] == "pending" and stored["metrics"]["image_AUROC"] is not None
    synced = cli("mlflow", "sync", "--config", str(up))
    assert synced.returncode == 0 and "1 runs synced" in synced.stdout, synced.stdout + synced.stderr
    from mlflow import MlflowClient

    tracked = MlflowClient(tracking_uri=mlflow.uri).search_runs(
        [MlflowClient(tracking_uri=mlflow.uri).get_experiment_by_name("evaluation").experiment_id],
        filter_string="tags.sweep = 'sync'",
    )
    assert [r.data.tags["run_key"] for r in tracked if r.data.tags.get("viadk8s.role") == "run"] == [stored["run_key"]]
    again = cli("mlflow", "sync", "--config", str(up))
    assert "0 runs synced" in again.stdout


def fake_result(category: str, auroc: float) -> RunResult:
    spec = RunSpec(sweep="inc", experiment="evaluation", model="padim", dataset="synthetic", category=category, seed=1)
    return made_up_result(spec, auroc)


def test_aggregation_from_s3_fetches_only_new_or_changed_results(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(f"s3://{BUCKET}/incremental", "path")
    for i, category in enumerate(("a", "b", "c")):
        store.write_bytes(
            f"{run_prefix(fake_result(category, 0.5).spec)}/{RESULT}",
            fake_result(category, 0.5 + i / 10).model_dump_json().encode(),
        )
    reads: list[str] = []
    read_bytes = store.read_bytes
    monkeypatch.setattr(store, "read_bytes", lambda key: reads.append(key) or read_bytes(key))

    assert sorted(r.metrics["image_AUROC"] for r in load_results(store, "inc")) == [0.5, 0.6, 0.7]
    assert len(reads) == 3  # written without the index (commit_result): every result
    reads.clear()
    assert len(load_results(store, "inc")) == 3 and reads and all("/.index/" in k for k in reads)  # the index it wrote

    changed, new = fake_result("b", 0.9), fake_result("d", 0.8)
    for result in (changed, new):
        store.write_bytes(f"{run_prefix(result.spec)}/{RESULT}", result.model_dump_json().encode())
    store.client.delete_object(Bucket=BUCKET, Key=f"incremental/{run_prefix(fake_result('a', 0).spec)}/{RESULT}")
    reads.clear()
    assert sorted(r.metrics["image_AUROC"] for r in load_results(store, "inc")) == [0.7, 0.8, 0.9]
    assert sorted(k for k in reads if "/.index/" not in k) == sorted(f"{run_prefix(r.spec)}/{RESULT}" for r in (changed, new))

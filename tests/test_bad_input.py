"""Bad input: one line naming the bad value and what is allowed, exit 2, no traceback, nothing stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SPEC = {"sweep": "s", "experiment": "evaluation", "model": "padim", "dataset": "mine", "category": "c", "seed": 1}


def assert_clean_failure(done, message: str, store: Path) -> None:  # noqa: ANN001
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and message in lines[-1], done.stderr
    assert "Traceback" not in done.stderr
    assert not (store / "runs").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--experiment", "nope"), "unknown experiment 'nope'; allowed: evaluation, input_size"),
        (("--experiment", "evaluation", "--models", "patchcore,yolo"), "unknown model 'yolo'; allowed: patchcore"),
        (("--experiment", "evaluation", "--models", "dra"), "model 'dra' (DRA) trains on labelled anomalies"),
        (("--experiment", "evaluation", "--datasets", "mvtec"), "unknown dataset 'mvtec'; allowed:"),
        (("--experiment", "evaluation", "--categories", "bottle"), "unknown category of synthetic 'bottle'"),
        (("--experiment", "input_size", "--image-size", "300"), "image size 300 not allowed; allowed: multiples of 32"),
        (("--experiment", "evaluation", "--weights", "coco"), "unknown weights 'coco'; allowed: imagenet, random"),
        (("--experiment", "evaluation", "--seeds", "1,x"), "bad --seeds '1,x'"),
        (("--experiment", "supervised", "--models", "padim"), "model 'padim' has no supervised mode"),
    ],
)
def test_run_rejects_bad_selection(cli, tmp_path: Path, args: tuple[str, ...], message: str) -> None:  # noqa: ANN001
    assert_clean_failure(cli("run", *args, "--store", str(tmp_path / "store")), message, tmp_path / "store")


@pytest.mark.parametrize(
    ("spec", "config", "message"),
    [
        ("{oops", "", "invalid run spec"),
        (json.dumps({**SPEC, "model": "nope"}), "", "model: unknown model 'nope'"),
        (json.dumps(SPEC), "datasets: {mine: {path: /no/such/dir}}\n", "dataset folder '/no/such/dir' does not exist"),
        (json.dumps({**SPEC, "category": "empty"}), "datasets: {mine: {path: DATA}}\n", "has no images in train/good"),
        (json.dumps(SPEC), "datasets: {mine: {path: DATA}\n", "is not valid YAML"),
        (json.dumps({**SPEC, "dataset": "visa", "category": "candle"}), "", "dataset 'visa' is not available on this machine"),
    ],
)
def test_worker_rejects_bad_spec_or_data(cli, tmp_path: Path, spec: str, config: str, message: str) -> None:  # noqa: ANN001
    data = tmp_path / "data"
    (data / "empty" / "train" / "good").mkdir(parents=True)
    (tmp_path / "viadk8s.yaml").write_text(config.replace("DATA", str(data)) or "{}\n")
    done = cli("worker", "--spec", "-", "--store", str(tmp_path / "store"), stdin=spec)
    assert_clean_failure(done, message, tmp_path / "store")


def test_worker_spec_file_missing(cli, tmp_path: Path) -> None:  # noqa: ANN001
    assert_clean_failure(
        cli("worker", "--spec", "nope.json", "--store", str(tmp_path / "store")),
        "cannot read spec file 'nope.json'",
        tmp_path / "store",
    )


def test_aggregate_without_results(cli, tmp_path: Path) -> None:  # noqa: ANN001
    assert_clean_failure(
        cli("aggregate", "--sweep", "nothing", "--store", str(tmp_path / "store")),
        "no finished run in sweep 'nothing'",
        tmp_path / "store",
    )
    assert_clean_failure(
        cli("aggregate", "--store", str(tmp_path / "store")),
        "give exactly one of --sweep ID or --experiment NAME",
        tmp_path / "store",
    )

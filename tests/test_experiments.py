"""Each of the paper's experiments end to end on tiny synthetic data, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from tests.conftest import TINY

COMMON = ("--datasets", "tiny", "--categories", "tiles", "--seeds", "5", "--weights", "random", "--jobs", "2")


def sweep(cli, tmp_path: Path, experiment: str, *args: str, datasets: dict | None = None) -> list[dict]:  # noqa: ANN001
    """Run an experiment, aggregate it into tmp_path/tables, return its results."""
    config = tmp_path / "viadk8s.yaml"
    config.write_text(yaml.safe_dump({"store": str(tmp_path / "store"), "datasets": datasets or {"tiny": {"synthetic": TINY}}}))
    done = cli("run", "--experiment", experiment, *COMMON, *args, "--config", str(config))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = cli(
        "aggregate", "--experiment", experiment, "--config", str(config), "--format", "csv", "--out", str(tmp_path / "tables")
    )
    assert table.returncode == 0, table.stderr
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "store" / "runs").glob("*/*/result.json"))]


def images_tested(tmp_path: Path, result: dict) -> set[str]:
    """The run's test images as scores.csv names them: relative to the category folder."""
    scores = tmp_path / "store" / "runs" / result["spec"]["sweep"] / result["run_key"] / "scores.csv"
    return set(pd.read_csv(scores)["image_path"])


def named(paths: set[str] | list[str]) -> set[str]:
    """Absolute image paths (as variants record them) named relative to their category folder."""
    return {"/".join(Path(p).parts[-3:]) for p in paths}  # <split>/<defect>/<file>


def test_noisy_labels(cli, tmp_path: Path) -> None:  # noqa: ANN001
    larger = {**TINY, "n_train": 30, "n_test_bad": 10}  # 4 % of a 30-image train set is one bad image after rounding
    results = sweep(
        cli, tmp_path, "noisy_labels", "--models", "padim", "--image-size", "64", datasets={"tiny": {"synthetic": larger}}
    )
    by_level = {r["spec"]["variant"]["contamination"]: r for r in results}
    assert sorted(by_level) == [0.0, 0.04, 0.08, 0.16]
    assert "contaminated_train" not in by_level[0.0]["data"]["changes"]
    for level in (0.04, 0.08, 0.16):
        moved = by_level[level]["data"]["changes"]["contaminated_train"]
        data = by_level[level]["data"]
        assert moved and not named(moved) & images_tested(tmp_path, by_level[level])  # never in both splits
        assert len(moved) == round(level * 30 / (1 - level))
        assert data["n_train"] == 30 + len(moved) and data["n_test_bad"] == 10 - len(moved)
    per_dataset = pd.read_csv(tmp_path / "tables" / "per_dataset.csv", index_col=[0, 1])
    assert list(per_dataset.columns) == ["0%", "4%", "8%", "16%"]
    summary = pd.read_csv(tmp_path / "tables" / "summary.csv", index_col=0)
    assert summary.index.name == "im.PG2/im.PB2" and list(summary.columns) == ["0%", "4%", "8%", "16%"]
    assert (tmp_path / "tables" / "image_AUROC_vs_contamination.png").stat().st_size > 1000


def test_data_drift(cli, tmp_path: Path) -> None:  # noqa: ANN001
    results = sweep(cli, tmp_path, "data_drift", "--models", "padim", "--image-size", "64")
    drifted = next(r for r in results if r["spec"]["variant"]["drift"] == "synthetic")
    clean = next(r for r in results if r["spec"]["variant"]["drift"] == "none")
    recipes = json.loads((tmp_path / "store" / "runs" / "data-drift" / drifted["run_key"] / "drift.json").read_text())
    assert recipes["seed"] == 5 and len(recipes["recipes"]) == TINY["n_test_good"] + TINY["n_test_bad"]
    assert drifted["data"]["n_test_bad"] == clean["data"]["n_test_bad"] and drifted["metrics"] != clean["metrics"]
    assert list(pd.read_csv(tmp_path / "tables" / "per_dataset.csv", index_col=[0, 1]).columns) == ["No drift", "Drift"]


def test_validation_strategies_pick_the_best_epoch(cli, tmp_path: Path) -> None:  # noqa: ANN001
    results = sweep(cli, tmp_path, "validation", "--models", "fastflow", "--image-size", "64", "--max-epochs", "4")
    by_strategy = {r["spec"]["variant"]["validation"]: r for r in results}
    assert sorted(by_strategy) == ["last_epoch", "synthetic_val_early_stop", "test_early_stop", "val_early_stop"]
    last = by_strategy["last_epoch"]
    assert last["validation_history"] == [] and last["tested_epoch"] == last["epochs_run"] == 4
    for strategy in ("test_early_stop", "val_early_stop", "synthetic_val_early_stop"):
        history = by_strategy[strategy]["validation_history"]
        assert [h["epoch"] for h in history] == [1, 2, 3, 4]
        best = max(history, key=lambda h: h["image_AUROC"])  # max() keeps the first of equals, as the checkpoint does
        assert by_strategy[strategy]["tested_epoch"] == best["epoch"]
    carved = by_strategy["val_early_stop"]["data"]
    validation = set(carved["changes"]["validation"])
    assert carved["n_val"] == len(validation) > 0 and not named(validation) & images_tested(
        tmp_path, by_strategy["val_early_stop"]
    )
    assert carved["n_test_good"] + carved["n_test_bad"] + carved["n_val"] == TINY["n_test_good"] + TINY["n_test_bad"]
    synthetic = by_strategy["synthetic_val_early_stop"]["data"]
    assert synthetic["n_train"] < TINY["n_train"] and synthetic["changes"]["validation"]["synthetic_anomalies"] > 0
    columns = pd.read_csv(tmp_path / "tables" / "per_dataset.csv", index_col=[0, 1]).columns
    assert sorted(columns) == sorted(by_strategy)


def test_supervised(cli, tmp_path: Path) -> None:  # noqa: ANN001
    more_bad = {**TINY, "n_test_bad": 14}
    results = sweep(
        cli,
        tmp_path,
        "supervised",
        "--models",
        "supersimplenet",
        "--image-size",
        "64",
        "--max-epochs",
        "1",
        datasets={"tiny": {"synthetic": more_bad}},
    )
    (result,) = results
    labelled = result["data"]["changes"]["labelled_bad_in_train"]
    assert len(labelled) == 10 and not named(labelled) & images_tested(tmp_path, result)
    assert result["data"]["n_test_bad"] == 4 and result["metrics"]["image_AUROC"] is not None


def test_input_size(cli, tmp_path: Path) -> None:  # noqa: ANN001
    results = sweep(cli, tmp_path, "input_size", "--models", "padim", "--image-size", "64,96")
    assert sorted(r["spec"]["image_size"] for r in results) == [64, 96]
    assert list(pd.read_csv(tmp_path / "tables" / "per_dataset.csv", index_col=[0, 1]).columns) == ["Size 64", "Size 96"]
    assert (tmp_path / "tables" / "image_AUROC_vs_image_size.png").exists()

"""The walking skeleton through the real CLI: run a sweep, re-run it, check metrics, aggregate, MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from tests.checks import assert_image_metrics_match_scores
from tests.conftest import TINY
from viadk8s import stats

RUN = (
    "run",
    "--experiment",
    "evaluation",
    "--models",
    "patchcore,padim",
    "--datasets",
    "tiny",
    "--categories",
    "tiles",
    "--image-size",
    "64",
    "--weights",
    "random",
    "--jobs",
    "2",
)


def test_sweep_runs_resumes_and_matches_independent_metrics(cli, tiny_config: Path, tmp_path: Path) -> None:  # noqa: ANN001
    first = cli(*RUN, "--config", str(tiny_config))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "2 done, 0 skipped" in first.stdout
    results = sorted((tmp_path / "store" / "runs" / "evaluation").glob("*/result.json"))
    assert len(results) == 2
    stamps = [p.stat().st_mtime_ns for p in results]

    for path in results:
        result = assert_image_metrics_match_scores(path)
        scores = pd.read_csv(path.parent / "scores.csv")
        assert list(scores.columns) == ["image_path", "defect", "label", "score"]
        assert all(p.startswith("test/") and p.split("/")[1] == d for p, d in zip(scores.image_path, scores.defect, strict=True))
        assert ((scores.defect == "good") == (scores.label == 0)).all()
        uncertainty = result["uncertainty"]  # reproducible from scores.csv and the stored settings
        assert uncertainty["intervals"] == stats.intervals(
            scores, uncertainty["resamples"], uncertainty["confidence"], uncertainty["seed"]
        )
        for name, (low, high) in uncertainty["intervals"].items():
            assert low <= result["metrics"][name] <= high, name
        kept = {(o["label"], o["file"]) for o in result["overlays"]}
        assert kept == {(label, f"overlay-{kind}-{i:02d}.png") for label, kind in ((0, "good"), (1, "bad")) for i in (1, 2, 3, 4)}
        for overlay in result["overlays"]:  # the good images scored highest, the bad ones lowest
            same = scores[scores.label == overlay["label"]].score
            worst = same.nlargest(4) if overlay["label"] == 0 else same.nsmallest(4)
            assert scores[scores.image_path == overlay["image"]].score.item() == overlay["score"] <= worst.max()
            assert overlay["score"] in set(worst)
            assert (path.parent / overlay["file"]).read_bytes()[:4] == b"\x89PNG"
        assert (scores.label.sum(), len(scores)) == (TINY["n_test_bad"], TINY["n_test_good"] + TINY["n_test_bad"])
        metrics = result["metrics"]
        assert all(0 <= metrics[m] <= 1 for m in ("pixel_AUROC", "pixel_AUPRO", "pixel_F1Max"))
        assert result["timings"]["fit_s"] > 0 and result["timings"]["peak_memory_mb"] > 100
        assert result["tracking"]["status"] == "logged"
        assert (path.parent / "scores.png").read_bytes()[:4] == b"\x89PNG"
        assert not list(path.parent.glob(".*"))  # no temporary file left behind

    again = cli(*RUN, "--config", str(tiny_config))
    assert again.returncode == 0, again.stderr
    assert "0 done, 2 skipped" in again.stdout
    assert [p.stat().st_mtime_ns for p in results] == stamps

    table = cli(
        "aggregate", "--sweep", "evaluation", "--config", str(tiny_config), "--format", "csv", "--out", str(tmp_path / "tables")
    )
    assert table.returncode == 0, table.stderr
    per_dataset = pd.read_csv(tmp_path / "tables" / "per_dataset.csv", index_col=0)
    assert set(per_dataset.index) == {"PatchCore", "PaDiM"} and list(per_dataset.columns) == ["tiny"]
    runs = pd.read_csv(tmp_path / "tables" / "runs.csv")
    patchcore = json.loads(next(p for p in results if json.loads(p.read_text())["spec"]["model"] == "patchcore").read_text())
    expected = "/".join(
        f"{100 * patchcore['metrics'][m]:.1f}" for m in ("image_AUROC", "pixel_AUPRO", "pixel_F1Max", "image_PG2", "image_PB2")
    )
    assert per_dataset.loc["PatchCore", "tiny"] == expected
    assert len(runs) == 2

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("evaluation")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("viadk8s.role") == "sweep"]
    tracked = [r for r in runs if r.data.tags.get("viadk8s.role") == "run"]
    assert sorted(r.data.tags["model"] for r in tracked) == ["padim", "patchcore"]
    assert {r.data.tags["mlflow.parentRunId"] for r in tracked} == {parent.info.run_id}
    assert {r.info.run_name for r in tracked} == {"patchcore_tiny_tiles_seed3341", "padim_tiny_tiles_seed3341"}
    assert all(r.data.params["image_size"] == "64" and "image_AUROC" in r.data.metrics for r in tracked)
    assert {a.path for a in client.list_artifacts(tracked[0].info.run_id)} >= {"scores.csv", "scores.png", "result.json"}


def test_worker_without_masks_reports_no_pixel_metrics(cli, tmp_path: Path) -> None:  # noqa: ANN001
    config = tmp_path / "viadk8s.yaml"
    config.write_text(
        yaml.safe_dump({"store": str(tmp_path / "store"), "datasets": {"labels_only": {"synthetic": TINY, "masks": "image"}}})
    )
    spec = {
        "sweep": "s1",
        "experiment": "evaluation",
        "model": "padim",
        "dataset": "labels_only",
        "category": "fabric",
        "seed": 1,
        "image_size": 64,
        "weights": "random",
    }
    done = cli("worker", "--spec", "-", "--config", str(config), stdin=json.dumps(spec))
    assert done.returncode == 0, done.stderr[-2000:]
    (result_path,) = (tmp_path / "store" / "runs" / "s1").glob("*/result.json")
    metrics = json.loads(result_path.read_text())["metrics"]
    assert metrics["pixel_AUROC"] is None and metrics["pixel_AUPRO"] is None and metrics["image_AUROC"] is not None
    table = cli("aggregate", "--sweep", "s1", "--config", str(config))
    assert "/–/–/" in table.stdout
    rerun = cli("worker", "--spec", "-", "--config", str(config), stdin=json.dumps(spec))
    assert rerun.returncode == 0 and "already done" in rerun.stdout

"""Same seed, same scores: every model of the catalog, run twice by the worker (two processes) on the
smallest data (64 px, or the model's minimum, one epoch, 10 test images), writes byte-identical
scores.csv, and each result.json records its hash and the determinism settings used.

Each process runs all the models in turn, as one pack (``--pack``): the imports are paid twice, not
28 times (about 2 minutes a process on 2 quiet cores instead of 10 in all), and every run in a pack
starts from its own seed whatever ran before it in the process."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from viadk8s import catalog
from viadk8s.worker.determinism import CUBLAS_WORKSPACE, make_deterministic

SMALL = {"categories": ["fabric"], "n_train": 8, "n_test_good": 4, "n_test_bad": 6, "size": 64}
MODELS = list(catalog.models())


def test_the_settings_are_set_and_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        settings = make_deterministic(11)
        assert settings == {
            "seed": 11,
            "loader_workers_seeded": True,
            "deterministic_algorithms": True,
            "warn_only": True,
            "cublas_workspace_config": CUBLAS_WORKSPACE,
            "cudnn_deterministic": True,
            "cudnn_benchmark": False,
            "torch_threads": torch.get_num_threads(),
        }
        first = torch.rand(3)
        make_deterministic(11)
        assert torch.equal(torch.rand(3), first)
    finally:  # the rest of the session keeps torch's defaults
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _spec(model: str) -> dict[str, object]:
    entry = catalog.models()[model]
    supervised = entry.group == "supervised"  # DRA, DevNet: only with labelled anomalies
    return {
        "experiment": "supervised" if supervised else "evaluation",
        "variant": {"supervised_k": 1} if supervised else {},
        "model": model,
        "dataset": "small",
        "category": "fabric",
        "seed": 7,
        "image_size": entry.min_image_size,
        "weights": "random",
        "trainer": {"max_epochs": 1, "batch_size": 4},
    }


@pytest.mark.slow
def test_the_same_spec_twice_gives_identical_scores_for_every_model(cli, tmp_path: Path) -> None:  # noqa: ANN001
    config = tmp_path / "viadk8s.yaml"
    config.write_text(yaml.safe_dump({"store": str(tmp_path / "store"), "datasets": {"small": {"synthetic": SMALL}}}))
    scores: dict[str, list[bytes]] = {model: [] for model in MODELS}
    for sweep in ("first", "second"):  # the same runs in another sweep: stored apart, computed alike
        pack = [{**_spec(model), "sweep": sweep} for model in MODELS]
        done = cli("worker", "--spec", "-", "--config", str(config), stdin=json.dumps(pack))
        assert done.returncode == 0, done.stderr[-4000:]
        for run in (tmp_path / "store" / "runs" / sweep).iterdir():
            raw = (run / "scores.csv").read_bytes()
            result = json.loads((run / "result.json").read_text())
            assert result["scores_sha256"] == hashlib.sha256(raw).hexdigest()
            assert result["determinism"]["deterministic_algorithms"] and result["determinism"]["seed"] == 7
            scores[result["spec"]["model"]].append(raw)
    assert all(len(twice) == 2 for twice in scores.values()), {m: len(t) for m, t in scores.items()}
    differ = [model for model, (first, second) in scores.items() if first != second]
    assert differ == [], f"the same spec gave different scores for {differ}"

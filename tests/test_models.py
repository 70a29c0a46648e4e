"""Every model of the catalog trains and tests offline with random weights (the adapter's
traps), and reports exactly the image metrics its own scores.csv gives (scikit-learn/numpy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.checks import assert_image_metrics_match_scores
from viadk8s import catalog

# 10 test images (9 when one goes to a supervised train set) in batches of 4: two full, a short last one
SMALL = {"categories": ["fabric"], "n_train": 8, "n_test_good": 4, "n_test_bad": 6, "size": 64}
MODELS = list(catalog.models())


@pytest.mark.parametrize("model", MODELS)
def test_model_fits_and_tests_offline(cli, tmp_path: Path, model: str) -> None:  # noqa: ANN001
    config = tmp_path / "viadk8s.yaml"
    config.write_text(yaml.safe_dump({"store": str(tmp_path / "store"), "datasets": {"small": {"synthetic": SMALL}}}))
    supervised = catalog.models()[model].group == "supervised"  # DRA, DevNet: only with labelled anomalies
    spec = {
        "sweep": "smoke",
        "experiment": "supervised" if supervised else "evaluation",
        "variant": {"supervised_k": 1} if supervised else {},  # one labelled anomaly, oversampled
        "model": model,
        "dataset": "small",
        "category": "fabric",
        "seed": 7,
        "image_size": catalog.models()[model].min_image_size,
        "weights": "random",
        "trainer": {"max_epochs": 1, "batch_size": 4},  # the protocol's size is 16: here 3 test batches
    }
    done = cli("worker", "--spec", "-", "--config", str(config), stdin=json.dumps(spec), env={"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    (result_path,) = (tmp_path / "store" / "runs" / "smoke").glob("*/result.json")
    metrics = assert_image_metrics_match_scores(result_path)["metrics"]
    pixel = catalog.models()[model].pixel_maps
    assert all(metrics[m] is not None and 0 <= metrics[m] <= 1 for m in catalog.METRICS if pixel or m.startswith("image_"))


@pytest.mark.parametrize(("model", "repo"), [("padim", "wide_resnet50_2.racm_in1k"), ("simplenet", "wide_resnet50_2.tv_in1k")])
def test_missing_pretrained_weights_name_the_file(cli, tmp_path: Path, model: str, repo: str) -> None:  # noqa: ANN001
    spec = {
        "sweep": "w",
        "experiment": "evaluation",
        "model": model,
        "dataset": "synthetic",
        "category": "tiles",
        "seed": 1,
        "image_size": 64,
        "weights": "imagenet",
    }
    done = cli(
        "worker",
        "--spec",
        "-",
        "--store",
        str(tmp_path / "store"),
        stdin=json.dumps(spec),
        env={"HF_HUB_OFFLINE": "1", "VIADK8S_WEIGHTS_DIR": str(tmp_path / "weights")},
    )
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert f"pretrained weights timm/{repo} are not in the cache" in last
    assert str(tmp_path / "weights" / "huggingface" / "hub") in last
    assert "--weights random" in last and "Traceback" not in done.stderr


def test_no_model_imports_another_model() -> None:
    """Shared pieces live in ``viadk8s.models.components``: a model package imports no other model's."""
    import ast

    import viadk8s.models

    root = Path(viadk8s.models.__file__).parent
    packages = {path.parent.name for path in root.glob("*/__init__.py")} - {"components"}
    for name in packages:
        for source in (root / name).glob("*.py"):
            for node in ast.walk(ast.parse(source.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("viadk8s.models."):
                    imported = node.module.split(".")[2]
                    assert imported in (name, "components"), f"{source.relative_to(root)} imports viadk8s.models.{imported}"


def test_only_models_that_declare_balanced_batches_get_them() -> None:
    """The worker reads a model's batches through ``requested_batches``: ours that declare them (DevNet,
    DRA) get theirs, every other catalog model (anomalib's included) the run's shuffled batches."""
    from viadk8s.models.components.balanced import BalancedBatchesModule, requested_batches
    from viadk8s.worker.adapters import model_class

    for name, entry in catalog.models().items():
        cls = model_class(entry)
        asked = requested_batches(cls)
        if issubclass(cls, BalancedBatchesModule):
            assert asked is cls.balanced_batches and asked.steps_per_epoch == 20, name
        else:
            assert asked is None, name
    assert {n for n, e in catalog.models().items() if requested_batches(model_class(e))} == {"devnet", "dra"}

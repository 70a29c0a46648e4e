from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from viadk8s.catalog import SyntheticOptions
from viadk8s.config import load_config
from viadk8s.data.layout import has_pixel_masks, scan_category
from viadk8s.data.resolve import Datasets
from viadk8s.data.synthetic import ensure_category
from viadk8s.errors import SpecError


def test_defaults_are_local(tmp_path: Path) -> None:
    config = load_config()
    assert config.store_uri == f"file://{tmp_path / 'viadk8s-runs'}"
    assert config.tracking_uri == f"sqlite:///{tmp_path / 'viadk8s-runs'}/mlflow.db"


def test_precedence_cli_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "viadk8s.yaml").write_text("store: /from/file\n")
    assert load_config().store == "/from/file"
    monkeypatch.setenv("VIADK8S_STORE", "/from/env")
    assert load_config().store == "/from/env"
    assert load_config(store="/from/cli").store == "/from/cli"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stor: x\n", "stor: Extra inputs are not permitted"),
        ("datasets: {mine: {path: /x, oops: 1}}\n", "datasets.mine.oops: Extra inputs"),
        ("mlflow: {tracking_uri: [1]}\n", "mlflow.tracking_uri: Input should be a valid string"),
        ("datasets: {mine: {}}\n", "datasets.mine: give exactly one of 'path' or 'synthetic'"),
        ("store: [unclosed\n", "is not valid YAML"),
        ("- a list\n", "top level must be a mapping"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=message) as err:
        load_config(path)
    assert "\n" not in str(err.value)


def test_missing_config_file_is_an_error() -> None:
    with pytest.raises(SpecError, match="config file 'nope.yaml' not found"):
        load_config("nope.yaml")


def test_synthetic_is_deterministic_and_masked(tmp_path: Path) -> None:
    options = SyntheticOptions(categories=["tiles"], n_train=3, n_test_good=2, n_test_bad=3, size=64)
    first = ensure_category(options, "tiles", tmp_path / "a")
    second = ensure_category(options, "tiles", tmp_path / "b")
    files = sorted(p.relative_to(first) for p in first.rglob("*.png"))
    assert files == sorted(p.relative_to(second) for p in second.rglob("*.png"))
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    samples = scan_category(first)
    assert [s.split for s in samples].count("train") == 3 and has_pixel_masks(samples)
    for s in samples:
        if s.label:
            mask = np.asarray(Image.open(str(s.mask_path)))
            assert mask.shape == (64, 64) and 0 < (mask > 0).mean() < 0.5


def test_user_dataset_categories_are_discovered(tmp_path: Path) -> None:
    options = SyntheticOptions(categories=["a"], n_train=2, n_test_good=1, n_test_bad=1, size=32)
    root = tmp_path / "mine"
    root.mkdir()
    for category in ("widget", "gadget"):
        generated = ensure_category(options.model_copy(update={"categories": [category]}), category, tmp_path / "gen")
        generated.rename(root / category)
    (root / "notes").mkdir()
    (tmp_path / "viadk8s.yaml").write_text(f"datasets: {{mine: {{path: {root}}}}}\n")
    datasets = Datasets(load_config())
    assert datasets.categories("mine") == ["gadget", "widget"]
    assert datasets.resolve("mine", "widget") == root / "widget"
    with pytest.raises(SpecError, match="unknown category of dataset mine 'notes'; allowed: gadget, widget"):
        datasets.resolve("mine", "notes")


def test_paper_dataset_not_configured_says_how(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"dataset 'btad' is not available on this machine: declare it in viadk8s.yaml"):
        Datasets(load_config()).resolve("btad", "01")


def test_folder_without_train_good_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cat" / "test" / "good").mkdir(parents=True)
    with pytest.raises(SpecError, match="has no images in train/good"):
        scan_category(tmp_path / "cat")

"""Synthetic drift (Table 10): parameter ranges, reproducibility, masks that follow the image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from viadk8s.catalog import SyntheticOptions
from viadk8s.data.drift import (
    CATEGORIES,
    DriftRecipe,
    apply_drift,
    drift_params,
    preview_grid,
    write_drifted_test_set,
)
from viadk8s.data.layout import Sample, scan_category
from viadk8s.data.synthetic import ensure_category
from viadk8s.errors import SpecError

PATHS = [f"/data/cat{i % 3}/test/{'good' if i % 2 else 'crack'}/{i:04d}.png" for i in range(600)]
RANGES = {
    ("gaussian_blur", "sigma"): (0.1, 1.5),
    ("gaussian_noise", "scale"): (0.01, 0.05),
    ("color_jitter", "brightness"): (0.5, 1.5),
    ("color_jitter", "contrast"): (0.5, 1.5),
    ("color_jitter", "saturation"): (0.5, 1.5),
    ("rotation", "angle"): (-5.0, 5.0),
    ("random_crop", "scale"): (0.8, 1.0),
}


@pytest.fixture(scope="module")
def category(tmp_path_factory: pytest.TempPathFactory) -> Path:
    options = SyntheticOptions(categories=["tiles"], n_train=4, n_test_good=3, n_test_bad=3, size=48)
    return ensure_category(options, "tiles", tmp_path_factory.mktemp("cache"))


def _recipe_with(transform: str) -> DriftRecipe:
    """A one-step recipe of ``transform`` with parameters drawn by drift_params."""
    for path in PATHS:
        recipe = drift_params(7, path)
        step = next((s for s in recipe.steps if s.transform == transform), None)
        if step is not None:
            return recipe.model_copy(update={"steps": (step,)})
    raise AssertionError(f"no recipe draws {transform}")


def test_recipes_follow_table_10() -> None:
    seen = set()
    for path in PATHS:
        recipe = drift_params(3341, path)
        categories = [step.category for step in recipe.steps]
        assert 1 <= len(categories) <= 2 and len(set(categories)) == len(categories)
        for step in recipe.steps:
            assert step.transform in CATEGORIES[step.category]
            seen.add(step.transform)
            for (transform, name), (low, high) in RANGES.items():
                if step.transform == transform:
                    assert low <= step.params[name] <= high
            if step.transform == "gaussian_blur":
                assert step.params["kernel_size"] == 7
            if step.transform == "gaussian_noise":
                assert (step.params["mean"], step.params["std"]) == (0.5, 1.0)
            if step.transform == "random_shadow":
                assert len(step.params["polygons"]) == 3 and step.params["brightness"] == 0.0
                assert all(0.0 <= v <= 1.0 for polygon in step.params["polygons"] for v in polygon)
            if step.transform == "perspective":
                assert all(0.0 <= v <= 0.1 for corner in step.params["corners"] for v in corner)
    assert seen == {t for transforms in CATEGORIES.values() for t in transforms}
    counts = [len(drift_params(3341, p).steps) for p in PATHS]
    assert 0.35 < counts.count(1) / len(counts) < 0.65


def test_recipe_depends_on_seed_and_image_not_on_mount_point() -> None:
    assert drift_params(1, "/a/cat/test/good/1.png") == drift_params(1, "/mnt/other/cat/test/good/1.png")
    for path in PATHS[:20]:
        assert drift_params(1, path).steps != drift_params(2, path).steps
    assert drift_params(1, PATHS[0]).steps != drift_params(1, PATHS[1]).steps


def test_drifted_test_set_is_reproducible_and_leaves_train_alone(category: Path, tmp_path: Path) -> None:
    samples = scan_category(category)
    first = write_drifted_test_set(samples, 3341, tmp_path / "a")
    second = write_drifted_test_set(samples, 3341, tmp_path / "b")
    other = write_drifted_test_set(samples, 1954, tmp_path / "c")
    assert [s for s in first if s.split == "train"] == [s for s in samples if s.split == "train"]
    tested = [s for s in first if s.split == "test"]
    assert len(tested) == 6 and all(s.image_path.startswith(str(tmp_path / "a")) for s in tested)
    assert all(s.mask_path and Path(s.mask_path).is_file() for s in tested if s.label == 1)
    for a, b, c in zip(tested, [s for s in second if s.split == "test"], [s for s in other if s.split == "test"], strict=True):
        assert Path(a.image_path).read_bytes() == Path(b.image_path).read_bytes()
        assert Path(a.image_path).read_bytes() != Path(c.image_path).read_bytes()
        if a.mask_path:
            assert set(np.unique(np.asarray(Image.open(a.mask_path)))) <= {0, 255}
    assert (tmp_path / "a" / "drift.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    with pytest.raises(SpecError, match="already exists"):
        write_drifted_test_set(samples, 3341, tmp_path / "a")


def _square_scene(size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A grey image with a red defect square and its mask."""
    image = np.full((size, size, 3), 128, np.uint8)
    mask = np.zeros((size, size), np.uint8)
    image[30:66, 24:60] = (255, 0, 0)
    mask[30:66, 24:60] = 255
    return image, mask


@pytest.mark.parametrize("transform", ["rotation", "random_crop", "perspective"])
def test_geometric_drift_moves_the_mask_with_the_defect(transform: str) -> None:
    image, mask = _square_scene()
    recipe = _recipe_with(transform)
    drifted, moved = apply_drift(image, mask, recipe)
    assert isinstance(drifted, np.ndarray) and isinstance(moved, np.ndarray)
    red = (drifted[..., 0] > 190) & (drifted[..., 1] < 60)
    covered = moved > 0
    assert set(np.unique(moved)) <= {0, 255}
    assert not np.array_equal(moved, mask)
    assert (red & covered).sum() / (red | covered).sum() > 0.8


@pytest.mark.parametrize("transform", ["gaussian_blur", "gaussian_noise", "color_jitter", "random_shadow"])
def test_photometric_drift_changes_pixels_not_the_mask(transform: str) -> None:
    image, mask = _square_scene()
    drifted, same = apply_drift(Image.fromarray(image), Image.fromarray(mask), _recipe_with(transform))
    assert isinstance(drifted, Image.Image) and isinstance(same, Image.Image)
    assert np.array_equal(np.asarray(same), mask)
    assert not np.array_equal(np.asarray(drifted), image)


def test_grayscale_images_stay_grayscale() -> None:
    image = np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)
    for path in PATHS[:30]:
        drifted, _ = apply_drift(image, None, drift_params(5, path))
        assert isinstance(drifted, np.ndarray) and drifted.shape == image.shape and drifted.dtype == np.uint8


def test_preview_grid_writes_a_png(category: Path, tmp_path: Path) -> None:
    out = preview_grid(scan_category(category), 3341, 2, tmp_path / "fig5.png")
    with Image.open(out) as png:
        assert png.format == "PNG" and png.width > png.height > 100


def test_preview_refuses_a_dataset_without_test_images() -> None:
    train_only = [Sample("/x/cat/train/good/1.png", 0, "train", "good")]
    with pytest.raises(SpecError, match="test split"):
        preview_grid(train_only, 1, 2, Path("unused.png"))

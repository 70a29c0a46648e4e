"""Split manipulations: never an image in two splits, deterministic per seed, shares as promised."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from viadk8s.catalog import SyntheticOptions
from viadk8s.data.layout import Sample, scan_category
from viadk8s.data.splits import (
    contaminate,
    make_synthetic_anomalies,
    subsample_train,
    supervised,
    synthetic_validation,
    validation_split,
)
from viadk8s.data.synthetic import ensure_category
from viadk8s.errors import SpecError

Split = Callable[[list[Sample], int], list[Sample]]


def _dataset(n_train: int = 100, n_good: int = 30, n_bad: int = 30, n_train_bad: int = 0) -> list[Sample]:
    """An in-memory category: the split functions never open the files."""
    samples = [Sample(f"/d/c/train/good/{i:03d}.png", 0, "train", "good") for i in range(n_train)]
    samples += [Sample(f"/d/c/train/bad/{i:03d}.png", 1, "train", "bad") for i in range(n_train_bad)]
    samples += [Sample(f"/d/c/test/good/{i:03d}.png", 0, "test", "good") for i in range(n_good)]
    samples += [
        Sample(f"/d/c/test/crack/{i:03d}.png", 1, "test", "crack", f"/d/c/ground_truth/crack/{i:03d}_mask.png")
        for i in range(n_bad)
    ]
    return samples


def _paths(samples: list[Sample], split: str, label: int | None = None) -> set[str]:
    return {s.image_path for s in samples if s.split == split and (label is None or s.label == label)}


SPLITS: dict[str, tuple[list[Sample], Split]] = {
    "contaminate": (_dataset(), lambda s, seed: contaminate(s, 0.08, seed)[0]),
    "validation_split": (_dataset(), lambda s, seed: validation_split(s, 0.2, seed=seed)),
    "synthetic_validation": (_dataset(), lambda s, seed: synthetic_validation(s, 0.2, seed)),
    "supervised": (_dataset(), lambda s, seed: supervised(s, 10, seed)),
    "supervised_own_bad": (_dataset(n_train_bad=20), lambda s, seed: supervised(s, 10, seed)),
    "subsample_train": (_dataset(), lambda s, seed: subsample_train(s, 0.25, seed)),
}


@pytest.mark.parametrize("name", SPLITS)
def test_no_image_in_two_splits_and_deterministic_per_seed(name: str) -> None:
    samples, split = SPLITS[name]
    out = split(samples, 3341)
    paths = [s.image_path for s in out]
    assert len(paths) == len(set(paths))
    train, test, val = (_paths(out, part) for part in ("train", "test", "val"))
    assert not (train & test) and not (train & val) and not (test & val)
    assert _paths(out, "test", 0) and _paths(out, "test", 1)
    assert out == split(samples, 3341)
    assert out != split(samples, 1954)
    labels = {s.image_path: s.label for s in samples}
    assert all(labels[s.image_path] == s.label for s in out)


@pytest.mark.parametrize("fraction", [0.04, 0.08, 0.16])
def test_contamination_share_of_the_resulting_train_set(fraction: float) -> None:
    samples = _dataset()
    out, moved = contaminate(samples, fraction, 3341)
    train_bad, train_good = _paths(out, "train", 1), _paths(out, "train", 0)
    assert train_bad == set(moved) and len(train_good) == 100
    assert abs(len(train_bad) / (len(train_bad) + len(train_good)) - fraction) <= 0.5 / (len(train_good) + len(train_bad))
    assert len(moved) == round(fraction * 100 / (1 - fraction))
    assert set(moved) <= _paths(samples, "test", 1) and not set(moved) & _paths(out, "test")
    assert all(s.label == 1 and s.mask_path for s in out if s.image_path in moved)


def test_contamination_zero_changes_nothing() -> None:
    samples = _dataset()
    assert contaminate(samples, 0.0, 1) == (samples, [])


@pytest.mark.parametrize("fraction", [0.5, -0.01, 0.7])
def test_contamination_outside_its_range_is_refused(fraction: float) -> None:
    with pytest.raises(SpecError, match=rf"contamination {fraction}.*allowed: 0 <= contamination < 0.5"):
        contaminate(_dataset(), fraction, 1)


def test_contamination_needs_enough_bad_test_images() -> None:
    with pytest.raises(SpecError, match="needs 19 bad test images.*there are 19"):
        contaminate(_dataset(n_bad=19), 0.16, 1)
    assert len(contaminate(_dataset(n_bad=20), 0.16, 1)[1]) == 19


def test_validation_split_is_stratified_and_disjoint_from_test() -> None:
    out = validation_split(_dataset(n_good=30, n_bad=10), seed=5)
    assert len(_paths(out, "val", 0)) == 6 and len(_paths(out, "val", 1)) == 2
    assert len(_paths(out, "test", 0)) == 24 and len(_paths(out, "test", 1)) == 8
    assert _paths(out, "train") == _paths(_dataset(), "train")


def test_validation_split_refuses_to_empty_the_test_set() -> None:
    with pytest.raises(SpecError, match="leave no bad test image"):
        validation_split(_dataset(n_bad=1), seed=1)
    with pytest.raises(SpecError, match=r"validation fraction 1\.0 is not allowed"):
        validation_split(_dataset(), 1.0, seed=1)


def test_synthetic_validation_holds_out_good_train_images() -> None:
    out = synthetic_validation(_dataset(), 0.1, 3)
    assert len(_paths(out, "val", 0)) == 10 and not _paths(out, "val", 1) and len(_paths(out, "train")) == 90
    assert _paths(out, "test") == _paths(_dataset(), "test")
    with pytest.raises(SpecError, match="leave no good train image"):
        synthetic_validation(_dataset(n_train=1), 0.5, 3)


def test_synthetic_anomalies_are_written_with_their_masks(tmp_path: Path) -> None:
    options = SyntheticOptions(categories=["fabric"], n_train=6, n_test_good=2, n_test_bad=2, size=48)
    samples = synthetic_validation(scan_category(ensure_category(options, "fabric", tmp_path / "cache")), 0.5, 11)
    held_out = [s for s in samples if s.split == "val"]
    anomalies = make_synthetic_anomalies(held_out, tmp_path / "anomalies", 11)
    assert len(anomalies) == len(held_out) == 3
    for anomaly, good in zip(anomalies, held_out, strict=True):
        assert (anomaly.label, anomaly.split) == (1, "val") and anomaly.mask_path
        image, original = np.asarray(Image.open(anomaly.image_path)), np.asarray(Image.open(good.image_path))
        mask = np.asarray(Image.open(anomaly.mask_path)) > 0
        assert image.shape == original.shape and mask.any()
        assert np.array_equal(image[~mask], original[~mask])  # only the masked region changed
        assert not np.array_equal(image[mask], original[mask])
    again = make_synthetic_anomalies(held_out, tmp_path / "again", 11)
    assert [Path(a.image_path).read_bytes() for a in anomalies] == [Path(a.image_path).read_bytes() for a in again]


def test_supervised_moves_k_bad_test_images() -> None:
    out = supervised(_dataset(n_bad=12), 10, 2)
    assert len(_paths(out, "train", 1)) == 10 and len(_paths(out, "test", 1)) == 2
    with pytest.raises(SpecError, match="supervised k=12 needs 12"):
        supervised(_dataset(n_bad=12), 12, 2)
    assert supervised(_dataset(), 0, 2) == _dataset()


def test_supervised_uses_the_datasets_own_labelled_bad_images() -> None:
    samples = _dataset(n_train_bad=20)
    out = supervised(samples, 10, 4)
    kept = _paths(out, "train", 1)
    assert len(kept) == 10 and kept <= _paths(samples, "train", 1)
    assert _paths(out, "test") == _paths(samples, "test")
    assert len(_paths(supervised(_dataset(n_train_bad=3), 10, 4), "train", 1)) == 3


def test_subsample_train_keeps_a_share_of_the_good_images() -> None:
    out = subsample_train(_dataset(n_train_bad=4), 0.25, 9)
    assert len(_paths(out, "train", 0)) == 25 and len(_paths(out, "train", 1)) == 4
    assert _paths(out, "test") == _paths(_dataset(), "test")
    assert len(_paths(subsample_train(_dataset(n_train=2), 0.1, 9), "train")) == 1
    assert subsample_train(_dataset(), 1.0, 9) == _dataset()
    with pytest.raises(SpecError, match=r"train fraction 0 is not allowed; allowed: 0 < fraction <= 1"):
        subsample_train(_dataset(), 0, 9)

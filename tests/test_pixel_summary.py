"""The per-image pixel summary: hand-counted cases, binned vs exact metrics on random maps with ties,
bootstrap intervals, pairing and a tampered file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from viadk8s import metrics, pixel_summary
from viadk8s.errors import SpecError
from viadk8s.pixel_summary import PIXEL_METRICS, PIXEL_TOLERANCE, PixelSummary, summarise


def _random_run(seed: int, n: int = 12, size: int = 48, ties: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps with square defects (some touching diagonally: one 8-connected region) and noise."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    for i in range(n // 2):
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, size - 4, 2)
            side = rng.integers(1, size // 3)
            masks[i, y : y + side, x : x + side] = True
    maps = rng.gamma(rng.uniform(0.5, 3), size=masks.shape) + rng.uniform(0.2, 3) * masks * rng.random((n, 1, 1))
    if ties:
        maps = np.round(maps, 1)
    return torch.tensor(maps, dtype=torch.float32), torch.tensor(masks)


def _names(n: int) -> list[str]:
    return [f"img{i:03d}.png" for i in range(n)]


def test_hand_counted_case() -> None:
    # image 0: good pixels 0.1, 0.2; a defect region of one pixel, 0.9 (8-connected to nothing else)
    # image 1: no defect; good pixels 0.1, 0.5, 0.9 (tied with the defect), 0.2
    maps = np.array([[[0.1, 0.2], [0.0, 0.9]], [[0.1, 0.5], [0.9, 0.2]]], np.float32)
    masks = np.array([[[0, 0], [0, 1]], [[0, 0], [0, 0]]], bool)
    maps[0, 1, 0] = 0.3  # a second good pixel of image 0 (three good, one bad)
    summary = summarise(maps, masks, ["a.png", "b.png"])
    assert summary.grid.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.5, 0.9])  # every value is a threshold here
    # bins: values with 0..5 thresholds at or below them
    assert summary.good.tolist() == [[0, 1, 1, 1, 0, 0], [0, 1, 1, 0, 1, 1]]
    assert summary.regions.tolist() == [[0, 0, 0, 0, 0, 1]] and summary.region_image.tolist() == [0]
    found = summary.metrics()
    # 1 bad (0.9) against 7 good: above all but the tied 0.9, which counts half: (6 + 0.5) / 7
    assert found["pixel_AUROC"] == pytest.approx(6.5 / 7)
    # at >= 0.9: TP 1, FP 1 → F1 = 2 / (1 + 1 + 1)
    assert found["pixel_F1Max"] == pytest.approx(2 / 3)
    # PRO is 1 from FPR 1/7 on; the curve (0,0)→(1/7,1): area to 0.3 = 0.3 - 1/14, normalised by 0.3
    assert found["pixel_AUPRO"] == pytest.approx((0.3 - 1 / 14) / 0.3)
    exact = metrics.pixel_metrics(torch.tensor(maps), torch.tensor(masks))
    assert found == pytest.approx(exact, abs=1e-6)


def test_regions_are_eight_connected_components() -> None:
    masks = np.zeros((1, 5, 5), bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # diagonal neighbours: one region
    masks[0, 4, 4] = True  # alone: a second
    maps = np.arange(25, dtype=np.float32).reshape(1, 5, 5)
    summary = summarise(maps, masks, ["x"])
    assert sorted(summary.regions.sum(-1).tolist()) == [1, 2] and summary.region_image.tolist() == [0, 0]
    exact = metrics.pixel_metrics(torch.tensor(maps), torch.tensor(masks))
    assert summary.metrics()["pixel_AUPRO"] == pytest.approx(exact["pixel_AUPRO"], abs=1e-6)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
def test_binned_metrics_are_within_the_tolerance_of_the_exact_ones(seed: int, ties: bool) -> None:
    maps, masks = _random_run(seed, ties=ties)
    summary = summarise(maps, masks, _names(len(maps)))
    exact, binned = metrics.pixel_metrics(maps, masks), summary.metrics()
    for metric in PIXEL_METRICS:
        assert binned[metric] == pytest.approx(exact[metric], abs=PIXEL_TOLERANCE / 2), metric
    assert binned["pixel_F1Max"] <= exact["pixel_F1Max"] + 1e-12  # a subset of the exact curve's points


def test_a_grid_of_every_value_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    maps, masks = _random_run(7, n=6, size=32, ties=True)
    monkeypatch.setattr(pixel_summary, "threshold_grid", lambda good, bad: np.unique(np.concatenate([good, bad])))
    binned, exact = summarise(maps, masks, _names(6)).metrics(), metrics.pixel_metrics(maps, masks)
    assert binned == pytest.approx(exact, abs=1e-6)


def test_a_separate_auroc_map_gives_pixel_auroc_alone() -> None:
    maps, masks = _random_run(3)
    other = torch.flip(maps, dims=[-1])
    binned = summarise(maps, masks, _names(len(maps)), auroc_maps=other).metrics()
    exact = metrics.pixel_metrics(maps, masks, other)
    assert binned == pytest.approx(exact, abs=PIXEL_TOLERANCE / 2)
    assert binned["pixel_AUROC"] != pytest.approx(metrics.pixel_metrics(maps, masks)["pixel_AUROC"], abs=1e-3)


def test_round_trip_and_a_tampered_file(tmp_path: Path) -> None:
    maps, masks = _random_run(1)
    summary = summarise(maps, masks, _names(len(maps)))
    path = tmp_path / "pixel_summary.npz"
    summary.write(path)
    again = PixelSummary.from_bytes(path.read_bytes())
    assert again.metrics() == summary.metrics() and again.images.tolist() == _names(len(maps))
    reported = metrics.pixel_metrics(maps, masks)
    assert again.disagreements(reported) == []
    # the defect pixels of every region moved to the lowest bin: the model now looks blind
    moved = again.regions.copy()
    moved[:, 0], moved[:, 1:] = moved.sum(-1), 0
    tampered = PixelSummary(again.images, again.grid, again.good, moved, again.region_image)
    path.write_bytes(tampered.to_bytes())
    wrong = PixelSummary.from_bytes(path.read_bytes()).disagreements(reported)
    assert [w.split(" ")[0] for w in wrong] == list(PIXEL_METRICS)
    with pytest.raises(ValueError, match="not a pixel summary"):
        PixelSummary.from_bytes(b"garbage")


def test_bootstrap_is_seeded_and_brackets_the_point() -> None:
    maps, masks = _random_run(2, n=16)
    summary = summarise(maps, masks, _names(16))
    found = pixel_summary.intervals(summary, resamples=200, seed=5)
    assert found == pixel_summary.intervals(summary, resamples=200, seed=5)
    point = summary.metrics()
    for metric, (low, high) in found.items():
        assert low <= point[metric] + 1e-3 and point[metric] - 1e-3 <= high and low < high, metric
    # each resample draws as many images with defects as the test set has: all metrics stay defined
    assert np.isfinite(pixel_summary.distribution(summary, 50, 0)).all()


def test_bootstrap_weights_equal_a_resampled_test_set() -> None:
    maps, masks = _random_run(4, n=8, size=32)
    summary = summarise(maps, masks, _names(8))
    drawn = np.array([0, 0, 5, 6, 6, 7, 1, 3])
    weights = np.bincount(drawn, minlength=8)[None, :]
    resampled = summarise(maps[drawn], masks[drawn], _names(8))
    by_weights = pixel_summary.metrics_batch(summary, weights)[:, 0]
    # the resampled test set has its own grid: both within the tolerance of its exact metrics
    exact = metrics.pixel_metrics(maps[drawn], masks[drawn])
    assert by_weights == pytest.approx([exact[m] for m in PIXEL_METRICS], abs=PIXEL_TOLERANCE)
    assert resampled.metrics() == pytest.approx(exact, abs=PIXEL_TOLERANCE)


def test_paired_difference_finds_a_better_model_and_refuses_other_images() -> None:
    maps, masks = _random_run(6, n=16)
    sharp = summarise(maps + 3 * masks, masks, _names(16))
    blurred = summarise(maps, masks, _names(16))
    found = pixel_summary.paired_difference(sharp, blurred, "pixel_AUPRO", resamples=200)
    assert found.verdict == "better" and found.estimate > 0
    shuffled = summarise(maps.flip(0), masks.flip(0), _names(16)[::-1])  # same images, another order
    same = pixel_summary.paired_difference(blurred, shuffled, "pixel_AUROC", resamples=200)
    assert same.estimate == pytest.approx(0, abs=PIXEL_TOLERANCE) and same.verdict == "no detectable difference"
    other = summarise(maps, masks, [f"other{i}" for i in range(16)])
    with pytest.raises(SpecError, match="different images"):
        pixel_summary.paired_difference(sharp, other, "pixel_AUROC", resamples=50)

"""Images reach the models with their dynamic range: 16-bit and 12-bit-in-16 data score like their
8-bit twin; every format, mode and mask convention; bad files are one data error naming them."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from PIL import Image

from tests.checks import assert_image_metrics_match_scores
from viadk8s.catalog import SyntheticOptions
from viadk8s.data.images import BadImage, decode, detect_bit_depth, inspect, read_image, read_mask
from viadk8s.data.synthetic import ensure_category

GRAY = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)


def _save(values: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, values)
    else:
        Image.fromarray(values).save(path)
    return path


def test_16_bit_png_and_tiff_are_scaled_not_clipped(tmp_path: Path) -> None:
    eight = read_image(_save(GRAY, tmp_path / "g8.png"))
    for name in ("g16.png", "g16.tif"):
        wide = _save(GRAY.astype(np.uint16) * 257, tmp_path / name)  # the same levels on 16 bits
        assert inspect(wide).container_bits == 16
        assert torch.allclose(read_image(wide, 16), eight, atol=1e-6), name
    clipped = np.asarray(Image.open(tmp_path / "g16.png").convert("RGB"))  # what anomalib's reader does
    assert (clipped[..., 0] == 255).mean() > 0.99  # nearly white: the bug this module exists for


def test_12_bit_in_16_keeps_its_levels_and_is_detected(tmp_path: Path) -> None:
    twelve = np.round(GRAY.astype(np.float64) * 4095 / 255).astype(np.uint16)
    paths = [_save(twelve, tmp_path / f"t{i}.png") for i in range(3)]
    assert detect_bit_depth(paths) == (12, "detected from 3 16-bit train images (largest value 4095)")
    assert torch.allclose(read_image(paths[0], 12), read_image(_save(GRAY, tmp_path / "g8.png")), atol=0.5 / 4095)
    assert len(torch.unique(read_image(paths[0], 12))) == 256  # every level survives
    assert detect_bit_depth([_save(GRAY, tmp_path / "g8.png")]) == (8, "8-bit images")
    assert detect_bit_depth([_save(GRAY.astype(np.uint16) * 257, tmp_path / "f.tif")])[0] == 16


def test_every_format_and_mode_reaches_three_channels_in_range(tmp_path: Path) -> None:
    rgb = np.stack([GRAY, GRAY[::-1], GRAY.T], axis=-1)
    rgba = np.concatenate([rgb, np.full((16, 16, 1), 7, np.uint8)], axis=-1)  # an alpha that is no colour
    cases: dict[str, Callable[[Path], Path]] = {
        "gray.bmp": lambda p: _save(GRAY, p),
        "rgb.jpg": lambda p: _save(rgb, p),
        "rgb.tif": lambda p: _save(rgb, p),
        "rgb16.tif": lambda p: _save(rgb.astype(np.uint16) * 257, p),
        "rgba.png": lambda p: _save(rgba, p),
        "palette.png": lambda p: (Image.fromarray(rgb).convert("P").save(p), p)[1],
        "binary.png": lambda p: (Image.fromarray(GRAY > 127).save(p), p)[1],
    }
    for name, make in cases.items():
        path = make(tmp_path / name)
        image = read_image(path, 16 if "16" in name else 8)
        assert image.shape == (3, 16, 16) and image.dtype == torch.float32, name
        assert 0 <= float(image.min()) and float(image.max()) <= 1 and float(image.max()) > 0.9, name
    assert torch.allclose(read_image(tmp_path / "rgba.png"), read_image(_save(rgb, tmp_path / "rgb.png")))
    assert torch.allclose(read_image(tmp_path / "rgb16.tif", 16), read_image(tmp_path / "rgb.png"), atol=1e-6)


def test_masks_any_nonzero_pixel_is_defect_whatever_the_format(tmp_path: Path) -> None:
    defect = np.zeros((8, 8), np.uint8)
    defect[2:4, 3:6] = 1
    palette = Image.fromarray(defect, mode="P")
    palette.putpalette([0, 0, 0] * 256)  # every index drawn black: only the index says "defect"
    palette.save(tmp_path / "p.png")
    _save(defect.astype(np.uint16) * 4095, tmp_path / "m16.png")
    _save(np.stack([defect * 0, defect * 0, defect * 200, np.full_like(defect, 255)], -1), tmp_path / "rgba.png")
    _save(defect.astype(bool), tmp_path / "m.tif")
    for name in ("p.png", "m16.png", "rgba.png", "m.tif"):
        assert torch.equal(read_mask(tmp_path / name), torch.from_numpy(defect)), name
    big = _save(np.kron(defect, np.ones((2, 2), np.uint8)) * 255, tmp_path / "big.png")  # twice its image's size
    assert torch.equal(read_mask(big, (8, 8)), torch.from_numpy(defect))


def test_truncated_and_foreign_files_name_themselves(tmp_path: Path) -> None:
    good = _save(np.stack([GRAY] * 3, -1), tmp_path / "a.png")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(good.read_bytes()[:-60])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for path in (truncated, text):
        with pytest.raises(BadImage, match=str(path)) as err:
            decode(path)
        assert err.value.exit_code == 2


def _twin(source: Path, target: Path, convert: Callable[[np.ndarray], np.ndarray], suffix: str) -> None:
    """A copy of an 8-bit MVTec-layout category, every image converted (grayscale), masks as they are."""
    for path in source.rglob("*.png"):
        out = target / path.relative_to(source)
        if "ground_truth" in path.parts:
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out)
        else:
            _save(convert(np.asarray(Image.open(path).convert("L"))), out.with_suffix(suffix))


def test_a_16_bit_dataset_scores_like_its_8_bit_twin(cli, tmp_path: Path) -> None:  # noqa: ANN001
    source = ensure_category(
        SyntheticOptions(categories=["tiles"], n_train=10, n_test_good=6, n_test_bad=6, size=64), "tiles", tmp_path / "gen"
    )
    twins = {
        "eight": (lambda a: a, ".png"),
        "sixteen": (lambda a: a.astype(np.uint16) * 257, ".tif"),
        "twelve": (lambda a: np.round(a.astype(np.float64) * 4095 / 255).astype(np.uint16), ".png"),
    }
    for name, (convert, suffix) in twins.items():
        _twin(source, tmp_path / name / "tiles", convert, suffix)
    config = tmp_path / "viadk8s.yaml"
    config.write_text(
        yaml.safe_dump({"store": str(tmp_path / "store"), "datasets": {n: {"path": str(tmp_path / n)} for n in twins}})
    )
    results = {}
    for name in twins:
        spec = {"sweep": "bits", "experiment": "evaluation", "model": "padim", "dataset": name, "category": "tiles"}
        spec |= {"seed": 5, "image_size": 64, "weights": "random"}
        done = cli("worker", "--spec", "-", "--config", str(config), stdin=json.dumps(spec))
        assert done.returncode == 0, done.stderr[-3000:]
        (path,) = [p for p in (tmp_path / "store" / "runs" / "bits").glob("*/result.json") if name in p.read_text()]
        results[name] = assert_image_metrics_match_scores(path)
    assert {n: r["data"]["images"]["bit_depth"] for n, r in results.items()} == {"eight": 8, "sixteen": 16, "twelve": 12}
    assert "detected from 10 16-bit train images" in results["twelve"]["data"]["images"]["bit_depth_source"]
    eight = results["eight"]["metrics"]
    assert eight["image_AUROC"] > 0.6  # the twin is worth comparing with: it separates good from bad
    for name in ("sixteen", "twelve"):
        for metric, value in results[name]["metrics"].items():
            assert value == pytest.approx(eight[metric], abs=0.02), (name, metric)


def test_a_truncated_training_image_is_bad_data_naming_the_file(cli, tmp_path: Path) -> None:  # noqa: ANN001
    root = ensure_category(SyntheticOptions(categories=["tiles"], n_train=4, size=64), "tiles", tmp_path / "gen")
    broken = sorted((root / "train" / "good").glob("*.png"))[1]
    broken.write_bytes(broken.read_bytes()[:200])
    config = tmp_path / "viadk8s.yaml"
    config.write_text(yaml.safe_dump({"store": str(tmp_path / "store"), "datasets": {"cut": {"path": str(root.parent)}}}))
    spec = {"sweep": "cut", "experiment": "evaluation", "model": "padim", "dataset": "cut", "category": "tiles", "seed": 1}
    done = cli("worker", "--spec", "-", "--config", str(config), stdin=json.dumps(spec | {"image_size": 64, "weights": "random"}))
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: image") and str(broken) in last and "Traceback" not in done.stderr
    assert not list((tmp_path / "store" / "runs").rglob("result.json"))

"""``viadk8s datasets check`` finds every problem in one pass; ``upload`` refuses a dataset with errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from viadk8s import catalog
from viadk8s.catalog import SyntheticOptions
from viadk8s.data.check import check_category, check_dataset
from viadk8s.data.layout import scan_category
from viadk8s.data.synthetic import ensure_category

OPTIONS = SyntheticOptions(categories=["tiles", "fabric"], n_train=4, n_test_good=3, n_test_bad=3, size=64)


def _dataset(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for category in OPTIONS.categories:
        shutil.copytree(ensure_category(OPTIONS, category, tmp_path / "gen"), root / category)
    return root


def _break(root: Path) -> dict[str, Path]:
    """One of each problem, in the tiles category (fabric stays clean)."""
    tiles = root / "tiles"
    truncated = sorted((tiles / "train" / "good").glob("*.png"))[0]
    truncated.write_bytes(truncated.read_bytes()[:150])
    leaked = sorted((tiles / "test" / "good").glob("*.png"))[0]
    shutil.copyfile(sorted((tiles / "train" / "good").glob("*.png"))[1], leaked)
    mask = next((tiles / "ground_truth").rglob("*.png"))
    orphan = mask.with_name("no_such_image_mask.png")
    shutil.copyfile(mask, orphan)
    Image.open(mask).resize((32, 32), Image.NEAREST).save(mask)
    (root / "empty" / "test").mkdir(parents=True)
    return {"truncated": truncated, "leaked": leaked, "orphan": orphan, "resized": mask}


def test_check_reports_every_problem_once(tmp_path: Path) -> None:
    root = _dataset(tmp_path)
    broken = _break(root)
    report = check_dataset(root)
    by_category = {c.name: c for c in report.categories}
    assert set(by_category) == {"tiles", "fabric", "empty"}
    assert by_category["fabric"].findings == []
    assert by_category["fabric"].counts["train/good"] == 4 and by_category["fabric"].counts["test/good"] == 3
    assert sum(n for k, n in by_category["fabric"].counts.items() if k.startswith("test/") and k != "test/good") == 3
    assert by_category["fabric"].formats == {"PNG RGB 8-bit": 10} and by_category["fabric"].sizes == {"64x64": 10}
    lines = [f.line() for f in report.findings]
    assert any(line.startswith(f"error: {broken['truncated']}: cannot be read") for line in lines), lines
    assert any(line.startswith(f"error: {broken['leaked']}: same file as the training image") for line in lines), lines
    assert f"warning: {broken['orphan']}: mask without an image in test/" in lines
    assert any(line.startswith(f"warning: {broken['resized']}: mask is 32x32, its image 64x64") for line in lines), lines
    assert any("empty" in f.path and f.level == "error" for f in report.findings)
    assert len(report.errors) == 3


def test_check_sees_bit_depths(tmp_path: Path) -> None:
    root = _dataset(tmp_path)
    for path in (root / "fabric").rglob("*.png"):
        if "ground_truth" not in path.parts:
            gray = np.asarray(Image.open(path).convert("L")).astype(np.uint16) * 16  # 12 bits of 16
            Image.fromarray(gray).save(path)
    formats = {c.name: c.formats for c in check_dataset(root).categories}
    assert formats["fabric"] == {"PNG I;16 12-bit": 10}


def test_cli_check_and_upload_refuse_a_broken_dataset(cli, tmp_path: Path) -> None:  # noqa: ANN001
    root = _dataset(tmp_path)
    clean = cli("datasets", "check", str(root))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "tiles" in clean.stdout and "PNG RGB 8-bit" in clean.stdout
    broken = _break(root)
    checked = cli("datasets", "check", str(root))
    assert checked.returncode == 2
    assert str(broken["truncated"]) in checked.stdout and checked.stderr.strip().startswith("error: dataset")
    upload = cli("datasets", "upload", "mine", "--from", str(root), "--store", str(tmp_path / "store"))
    assert upload.returncode == 2, upload.stderr
    (line,) = upload.stderr.strip().splitlines()
    assert "has errors; first: error:" in line and "+2 more" in line
    assert not (tmp_path / "store" / "datasets").exists()  # nothing uploaded


def _flat(path: Path, value: int, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value, value, value)).save(path)
    return path


def _square(path: Path) -> Path:
    pixels = np.zeros((16, 16), np.uint8)
    pixels[2:6, 2:6] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def test_loader_and_check_pair_masks_by_one_rule_in_every_format(tmp_path: Path) -> None:
    """``<stem>_mask.<ext>`` or ``<stem>.<ext>`` for every format the loader reads, any letter case;
    where one image has two masks the first wins, and check names the other as unused."""
    root = tmp_path / "03"
    for i in range(3):
        _flat(root / "train" / "good" / f"{i:03d}.bmp", 10 + i)
        _flat(root / "test" / "good" / f"{i:03d}.bmp", 20 + i)
    masks = {"000": "000.bmp", "001": "001_mask.png", "002": "002.tif", "003": "003_mask.BMP", "004": "004_mask.png"}
    for i, stem in enumerate([*masks, "005"]):
        _flat(root / "test" / "ko" / f"{stem}.bmp", 100 + i)
    for name in (*masks.values(), "004.bmp"):
        _square(root / "ground_truth" / "ko" / name)
    loaded = {Path(s.image_path).stem: s.mask_path for s in scan_category(root) if s.label == 1}
    assert loaded == {**{stem: str(root / "ground_truth" / "ko" / name) for stem, name in masks.items()}, "005": None}
    lines = [f.line() for f in check_category(root).findings]
    truth = root / "ground_truth" / "ko"
    assert lines == [
        f"warning: {truth / '004.bmp'}: not used: 004.bmp's mask is {truth / '004_mask.png'}",
        f"warning: {root / 'test' / 'ko' / '005.bmp'}: 1 bad images have no mask: pixel metrics off",
    ]


def test_check_of_a_catalog_dataset_compares_the_publishers_counts(cli, tmp_path: Path) -> None:  # noqa: ANN001
    """``datasets check visa`` applies VisA's published counts even without a convert.json."""
    for n, category in enumerate(catalog.datasets()["visa"].categories):
        for i, folder in enumerate(["train/good"] * 3 + ["test/good"] * 2 + ["test/bad"]):
            _flat(tmp_path / "data" / category / folder / f"{i:03d}.png", 20 * n + i)
        _square(tmp_path / "data" / category / "ground_truth" / "bad" / "005_mask.png")
    candle = tmp_path / "data" / "candle"
    assert check_category(candle).published is None  # a folder alone names no dataset
    assert check_category(candle, "visa").published is False
    config = tmp_path / "viadk8s.yaml"
    config.write_text(f"store: {tmp_path / 'store'}\ndatasets: {{visa: {{path: {tmp_path / 'data'}}}}}\n")
    done = cli("datasets", "check", "visa", "--config", str(config))
    printed = " ".join(done.stdout.split())  # rich wraps long lines
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"warning: {candle}: counts differ from VisA's published ones" in printed
    assert "train good 3 (published: 900), test good 2 (published: 100), test bad 1 (published: 100)" in printed
    assert printed.count("│ differ │") == 12

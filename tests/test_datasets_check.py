"""``viadk8s datasets check`` finds every problem in one pass; ``upload`` refuses a dataset with errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from viadk8s.catalog import SyntheticOptions
from viadk8s.data.check import check_dataset
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

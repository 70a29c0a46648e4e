"""Converters: tiny fakes of each source's published layout, converted and read back with scan_category."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from viadk8s.data.convert import CONVERTERS, convert
from viadk8s.data.layout import Sample, scan_category
from viadk8s.errors import SpecError


def _image(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (value, value, value)).save(path)
    return path


def _mask(path: Path, box: tuple[int, int, int, int] = (4, 4, 10, 10), value: int = 255) -> Path:
    pixels = np.zeros((16, 16), np.uint8)
    pixels[box[1] : box[3], box[0] : box[2]] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _parses(root: Path) -> list[Sample]:
    """The converted category reads as MVTec layout, with a binary mask for every bad test image."""
    samples = scan_category(root)
    assert any(s.split == "train" and s.label == 0 for s in samples)
    for s in samples:
        if s.split == "test" and s.label == 1:
            assert s.mask_path, s.image_path
            assert set(np.unique(np.asarray(Image.open(s.mask_path)))) <= {0, 255}
    return samples


def _names(samples: list[Sample], split: str, defect: str | None = None) -> set[str]:
    return {Path(s.image_path).name for s in samples if s.split == split and (defect is None or s.defect == defect)}


def _realiad_class(root: Path, cat: str) -> None:
    """Real-IAD: OK/<sample>/ and NG/<defect>/<sample>/, five camera views, masks beside the NG images."""
    for sample in range(1, 6):
        for view in range(1, 6):
            _image(root / cat / "OK" / f"S{sample:04d}" / f"{cat}_{sample:04d}_OK_C{view}_2023.jpg")
    for sample, defect in ((10, "AK"), (11, "HS"), (12, "AK")):
        for view in range(1, 6):
            image = _image(root / cat / "NG" / defect / f"S{sample:04d}" / f"{cat}_{sample:04d}_NG_{defect}_C{view}_2023.jpg", 30)
            _mask(image.with_suffix(".png"))


def test_realiad_keeps_top_view_and_paper_classes_merging_defects(tmp_path: Path) -> None:
    src = tmp_path / "realiad_1024"
    for cat in ("pcb", "usb", "audiojack"):
        _realiad_class(src, cat)
    written = convert("realiad", src, tmp_path / "out")
    assert written == ["pcb", "usb"]  # audiojack is not one of the paper's 8 classes
    for cat in written:
        samples = _parses(tmp_path / "out" / cat)
        assert all("_C1_" in Path(s.image_path).name for s in samples)
        assert {s.defect for s in samples if s.label == 1} == {"bad"}
        assert len(_names(samples, "test", "bad")) == 3
        assert len(_names(samples, "test", "good")) == 1 and len(_names(samples, "train", "good")) == 4
    assert not (tmp_path / "out" / "audiojack").exists()


def test_realiad_uses_an_official_split_file(tmp_path: Path) -> None:
    src = tmp_path / "Real-IAD" / "realiad_256"
    _realiad_class(src, "usb")

    def entry(path: str, anomaly: str) -> dict[str, str | None]:
        return {
            "category": "usb",
            "anomaly_class": anomaly,
            "image_path": path,
            "mask_path": path.replace(".jpg", ".png") if anomaly != "OK" else None,
        }

    ok = [f"OK/S{s:04d}/usb_{s:04d}_OK_C{v}_2023.jpg" for s in range(1, 6) for v in (1, 2)]
    ng = [f"NG/AK/S0010/usb_0010_NG_AK_C{v}_2023.jpg" for v in (1, 2)]
    split = {
        "meta": {"prefix": "usb", "normal_class": "OK"},
        "train": [entry(p, "OK") for p in ok[:6]],
        "test": [entry(p, "OK") for p in ok[6:]] + [entry(p, "AK") for p in ng],
    }
    jsons = tmp_path / "Real-IAD" / "realiad_jsons" / "realiad_jsons"
    jsons.mkdir(parents=True)
    (jsons / "usb.json").write_text(json.dumps(split))
    assert convert("realiad", src, tmp_path / "out") == ["usb"]
    samples = _parses(tmp_path / "out" / "usb")
    assert _names(samples, "train") == {Path(p).name for p in ok[:6] if "_C1_" in p}
    assert _names(samples, "test", "good") == {Path(p).name for p in ok[6:] if "_C1_" in p}
    assert _names(samples, "test", "bad") == {"usb_0010_NG_AK_C1_2023.jpg"}


def test_sensum_puts_150_goods_in_test_by_seed_143(tmp_path: Path) -> None:
    src = tmp_path / "SensumSODF"
    for i in range(160):
        _image(src / "capsule" / "negative" / "data" / f"{i:03d}.png", i)
    for i in range(4):
        _image(src / "capsule" / "positive" / "data" / f"{i:03d}.png", 7)
        _mask(src / "capsule" / "positive" / "annotation" / f"{i:03d}.png", value=1)
    assert convert("sensum_sodf", src, tmp_path / "out") == ["capsule"]
    samples = _parses(tmp_path / "out" / "capsule")
    names = sorted(f"{i:03d}.png" for i in range(160))
    expected = {names[i] for i in np.random.default_rng(143).permutation(160)[:150]}
    assert _names(samples, "test", "good") == expected
    assert _names(samples, "train") == set(names) - expected
    assert len(_names(samples, "test", "bad")) == 4


def test_sensum_needs_more_goods_than_the_test_share(tmp_path: Path) -> None:
    src = tmp_path / "SensumSODF"
    for i in range(150):
        _image(src / "softgel" / "negative" / "data" / f"{i:03d}.png")
    with pytest.raises(SpecError, match="needs more than 150 good images, found 150"):
        convert("sensum_sodf", src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _mvtec_class(root: Path, defects: tuple[str, ...], mask_suffix: str = "_mask") -> None:
    for i in range(3):
        _image(root / "train" / "good" / f"{i:03d}.png")
        _image(root / "test" / "good" / f"{i:03d}.png")
    for defect in defects:
        _image(root / "test" / defect / "000.png", 20)
        _mask(root / "ground_truth" / defect / f"000{mask_suffix}.png")


def test_viaduct_keeps_the_papers_12_classes(tmp_path: Path) -> None:
    src = tmp_path / "viaduct"
    _mvtec_class(src / "tack", ("scratch", "dent"))
    _mvtec_class(src / "3_pole_socket_housing", ("crack",), mask_suffix="")
    _mvtec_class(src / "not_in_the_paper", ("crack",))
    assert convert("viaduct", src, tmp_path / "out") == ["3_pole_socket_housing", "tack"]
    assert {s.defect for s in _parses(tmp_path / "out" / "tack") if s.label} == {"scratch", "dent"}
    _parses(tmp_path / "out" / "3_pole_socket_housing")
    assert not (tmp_path / "out" / "not_in_the_paper").exists()


def test_mvtec_loco_merges_mask_folders_and_keeps_defect_kinds_apart(tmp_path: Path) -> None:
    root = tmp_path / "loco" / "juice_bottle"
    for i in range(3):
        _image(root / "train" / "good" / f"{i:03d}.png")
        _image(root / "validation" / "good" / f"v{i:03d}.png")
        _image(root / "test" / "good" / f"{i:03d}.png")
    for defect in ("logical_anomalies", "structural_anomalies"):
        _image(root / "test" / defect / "000.png", 20)
        _mask(root / "ground_truth" / defect / "000" / "000.png", (0, 0, 4, 4), value=255)
        _mask(root / "ground_truth" / defect / "000" / "001.png", (8, 8, 12, 12), value=17)
    assert convert("mvtec_loco", tmp_path / "loco", tmp_path / "out") == ["juice_bottle__logical", "juice_bottle__structural"]
    for kind in ("logical", "structural"):  # each kind apart, with every good image: the paper averages the two
        samples = _parses(tmp_path / "out" / f"juice_bottle__{kind}")
        assert {s.defect for s in samples if s.label} == {f"{kind}_anomalies"}
        assert _names(samples, "train") == {"000.png", "001.png", "002.png"}  # validation/good is not used
        assert sum(1 for s in samples if s.split == "test" and not s.label) == 3
    logical = tmp_path / "out" / "juice_bottle__logical"
    merged = np.asarray(Image.open(logical / "ground_truth" / "logical_anomalies" / "000_mask.png"))
    assert merged.sum() == 2 * 16 * 255 and merged[1, 1] == merged[9, 9] == 255


def test_aebad_writes_each_drift_subset_as_its_own_category(tmp_path: Path) -> None:
    root = tmp_path / "AeBAD" / "AeBAD_S"
    for i in range(3):
        _image(root / "train" / "good" / "0" / f"{i:03d}.png")
    subsets = ("same", "background", "illumination", "view")
    for n, subset in enumerate(subsets):
        _image(root / "test" / "good" / subset / f"{subset}_g.png", 40 + n)
        for defect in ("ablation", "groove"):
            _image(root / "test" / defect / subset / f"{subset}_{defect}.png", 60 + n)
            _mask(root / "ground_truth" / defect / subset / f"{subset}_{defect}.png")
    written = convert("aebad", tmp_path / "AeBAD", tmp_path / "out")
    assert sorted(written) == ["AeBAD_S", "AeBAD_S__background", "AeBAD_S__illumination", "AeBAD_S__view"]
    for category, subset in zip(["AeBAD_S", *sorted(written)[1:]], ["same", "background", "illumination", "view"], strict=True):
        samples = _parses(tmp_path / "out" / category)
        assert _names(samples, "train") == {"0__000.png", "0__001.png", "0__002.png"}
        assert {n.split("_")[0] for n in _names(samples, "test")} == {subset}
        assert {s.defect for s in samples if s.label} == {"ablation", "groove"}


def test_images_are_hard_linked_and_the_provenance_says_so(tmp_path: Path) -> None:
    src = tmp_path / "viaduct"
    _mvtec_class(src / "tack", ("scratch",))
    convert("viaduct", src, tmp_path / "out")
    out = tmp_path / "out" / "tack"
    assert (out / "train" / "good" / "000.png").stat().st_ino == (src / "tack" / "train" / "good" / "000.png").stat().st_ino
    provenance = json.loads((out / "convert.json").read_text())
    assert provenance["images_linked"] == 7 and provenance["images_copied"] == 0 and provenance["masks_written"] == 1


@pytest.mark.parametrize("kind", sorted(CONVERTERS))
def test_wrong_tree_is_refused_and_nothing_is_written(kind: str, tmp_path: Path) -> None:
    src = tmp_path / "somewhere_else"
    _mvtec_class(src / "bottle", ("broken",))  # an MVTec AD class: none of the converters' sources
    with pytest.raises(SpecError, match=rf"{kind} source .*expected .*not found|{kind} source .*expected .*found none"):
        convert(kind, src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_incomplete_source_is_refused_before_writing(tmp_path: Path) -> None:
    src = tmp_path / "viaduct"
    _mvtec_class(src / "tack", ("scratch",))
    _mvtec_class(src / "pcb", ())
    with pytest.raises(SpecError, match="category 'pcb' has no test defective images"):
        convert("viaduct", src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_failure_while_writing_leaves_no_output(tmp_path: Path) -> None:
    src = tmp_path / "viaduct"
    _mvtec_class(src / "pcb", ("scratch",))
    _mvtec_class(src / "tack", ("scratch",))
    (src / "tack" / "ground_truth" / "scratch" / "000_mask.png").write_text("not a png")
    with pytest.raises(SpecError, match="000_mask.png' is not an image"):
        convert("viaduct", src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_output_category_is_never_overwritten(tmp_path: Path) -> None:
    src = tmp_path / "viaduct"
    _mvtec_class(src / "tack", ("scratch",))
    _mvtec_class(src / "pcb", ("scratch",))
    (tmp_path / "out" / "tack").mkdir(parents=True)
    with pytest.raises(SpecError, match=r"output folder '.*out/tack' already exists"):
        convert("viaduct", src, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tack"]
    assert not any((tmp_path / "out" / "tack").iterdir())


def test_unknown_kind_lists_the_allowed_ones(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="unknown dataset kind to convert 'visa'; allowed: realiad, sensum_sodf, viaduct"):
        convert("visa", tmp_path, tmp_path / "out")

"""Converters: tiny stand-ins that follow each publisher's layout exactly (folder and file names, split
files with the publisher's fields, masks as the publisher makes them), converted and read back."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from viadk8s.data.check import check_dataset
from viadk8s.data.convert import CONVERTERS, Options, convert
from viadk8s.data.layout import Sample, scan_category
from viadk8s.errors import SpecError

CATEGORY_COUNTS = ("train good", "test good", "test bad")


def _image(path: Path, value: int = 100, size: int = 16, seed: int | None = None) -> Path:
    """A flat grey image, or seeded noise (every seed its own bytes); PIL picks the format from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if seed is None:
        Image.new("RGB", (size, size), (value, value, value)).save(path)
    else:
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def _mask(path: Path, box: tuple[int, int, int, int] = (4, 4, 10, 10), value: int = 255, size: int = 16) -> Path:
    """A one-channel mask: ``value`` inside ``box`` (x0, y0, x1, y1), 0 elsewhere."""
    pixels = np.zeros((size, size), np.uint8)
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


def _counts(samples: list[Sample]) -> tuple[int, int, int]:
    """(train good, test good, test bad) of a converted category."""
    return (
        sum(s.split == "train" and s.label == 0 for s in samples),
        sum(s.split == "test" and s.label == 0 for s in samples),
        sum(s.split == "test" and s.label == 1 for s in samples),
    )


def _names(samples: list[Sample], split: str, defect: str | None = None) -> set[str]:
    return {Path(s.image_path).name for s in samples if s.split == split and (defect is None or s.defect == defect)}


def _provenance(root: Path) -> dict:
    return json.loads((root / "convert.json").read_text())


# Real-IAD ------------------------------------------------------------------------------------------------


def _ok_view(cat: str, sample: int, view: int) -> str:
    return f"OK/S{sample:04d}/{cat}_{sample:04d}_OK_C{view}_20230922101530.jpg"


def _ng_view(cat: str, sample: int, defect: str, view: int) -> str:
    return f"NG/{defect}/S{sample:04d}/{cat}_{sample:04d}_NG_{defect}_C{view}_20230922101530.jpg"


NG_SAMPLES = {10: ("HS", (1, 2)), 11: ("AK", (2,))}  # sample -> (defect, the views that show it: only these have a mask)


def _realiad_class(images: Path, cat: str) -> None:
    """Real-IAD's image folder: OK/<sample>/ and NG/<defect>/<sample>/, five camera views per sample,
    a mask ``<stem>.png`` beside each NG view that shows the defect."""
    for sample in range(1, 5):
        for view in range(1, 6):
            _image(images / cat / _ok_view(cat, sample, view))
    for sample, (defect, shown) in NG_SAMPLES.items():
        for view in range(1, 6):
            image = _image(images / cat / _ng_view(cat, sample, defect, view), 30)
            if view in shown:
                _mask(image.with_suffix(".png"))


def _realiad_split(cat: str) -> dict:
    """A ``realiad_jsons_sv/<cat>.json`` with the publisher's fields: views of defective samples that do
    not show the defect are listed as OK without a mask."""

    def entry(path: str, anomaly: str, mask: bool) -> dict[str, str | None]:
        return {"category": cat, "anomaly_class": anomaly, "image_path": path, "mask_path": path[:-4] + ".png" if mask else None}

    test = [entry(_ok_view(cat, 4, v), "OK", False) for v in (1, 3)]
    for sample, (defect, shown) in NG_SAMPLES.items():
        test += [entry(_ng_view(cat, sample, defect, v), defect if v in shown else "OK", v in shown) for v in (1, 2, 3)]
    return {
        "meta": {"prefix": cat, "normal_class": "OK", "pre_transform": False},
        "train": [entry(_ok_view(cat, s, v), "OK", False) for s in (1, 2, 3) for v in (1, 2, 4)],
        "test": test,
    }


@pytest.mark.parametrize("archive", ["realiad_jsons_sv", "realiad_jsons/realiad_jsons_sv"])
def test_realiad_uses_the_publishers_single_view_split(tmp_path: Path, archive: str) -> None:
    """Both published layouts of the JSON archive: beside realiad_1024/ (the publisher's README) or in
    a folder of its own (anomalib's); an entry marked OK is good even in an NG folder."""
    images = tmp_path / "Real-IAD" / "realiad_1024"
    for cat in ("usb", "pcb", "audiojack"):
        _realiad_class(images, cat)
    splits = tmp_path / "Real-IAD" / archive
    for cat in ("usb", "pcb", "audiojack"):
        splits.mkdir(parents=True, exist_ok=True)
        (splits / f"{cat}.json").write_text(json.dumps(_realiad_split(cat)))
    assert list(convert("realiad", images, tmp_path / "out")) == ["pcb", "usb"]  # audiojack is not a paper class
    for cat in ("pcb", "usb"):
        samples = _parses(tmp_path / "out" / cat)
        assert _counts(samples) == (9, 2 + 3, 3)  # NG views 3 (sample 10) and 1, 3 (sample 11) are OK: good
        assert _names(samples, "test", "bad") == {
            f"{cat}_0010_NG_HS_C1_20230922101530.jpg",
            f"{cat}_0010_NG_HS_C2_20230922101530.jpg",
            f"{cat}_0011_NG_AK_C2_20230922101530.jpg",
        }
        assert f"{cat}_0011_NG_AK_C1_20230922101530.jpg" in _names(samples, "test", "good")
        split = _provenance(tmp_path / "out" / cat)["split"]
        digest = hashlib.sha256((splits / f"{cat}.json").read_bytes()).hexdigest()
        assert split == {
            "source": "publisher: realiad_jsons_sv",
            "file": str((splits / f"{cat}.json").resolve()),
            "sha256": digest,
        }
    assert not (tmp_path / "out" / "audiojack").exists()


def test_realiad_without_a_split_file_stops_and_names_the_files(cli, tmp_path: Path) -> None:  # noqa: ANN001
    images = tmp_path / "Real-IAD" / "realiad_1024"
    _realiad_class(images, "usb")
    (tmp_path / "Real-IAD" / "realiad_jsons" / "realiad_jsons").mkdir(parents=True)  # the multi-view split is not used
    (tmp_path / "Real-IAD" / "realiad_jsons" / "realiad_jsons" / "usb.json").write_text(json.dumps(_realiad_split("usb")))
    done = cli("datasets", "convert", "realiad", str(images), str(tmp_path / "out"))
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    beside, own = (
        tmp_path / "Real-IAD" / "realiad_jsons_sv" / "usb.json",
        tmp_path / "Real-IAD" / "realiad_jsons" / "realiad_jsons_sv" / "usb.json",
    )
    assert f"no single-view split file for 'usb': looked for {beside} and {own}" in line and "--rule-split" in line
    assert not (tmp_path / "out").exists()


def test_realiad_rule_split_only_when_asked(cli, tmp_path: Path) -> None:  # noqa: ANN001
    images = tmp_path / "Real-IAD" / "realiad_256"
    _realiad_class(images, "usb")
    done = cli("datasets", "convert", "realiad", str(images), str(tmp_path / "out"), "--rule-split")
    assert done.returncode == 0, done.stderr
    assert "usb: train good 3, test good 2, test bad 1; split: rule: camera C1 only" in done.stdout
    samples = _parses(tmp_path / "out" / "usb")
    assert all("_C1_" in Path(s.image_path).name for s in samples)
    assert _names(samples, "test", "bad") == {"usb_0010_NG_HS_C1_20230922101530.jpg"}
    assert "usb_0011_NG_AK_C1_20230922101530.jpg" in _names(samples, "test", "good")  # its C1 view has no mask
    assert _provenance(tmp_path / "out" / "usb")["split"]["source"].startswith("rule: camera C1 only, 20% of the OK samples")


def test_realiad_split_file_naming_a_missing_image_is_refused(tmp_path: Path) -> None:
    images = tmp_path / "realiad_1024"
    _realiad_class(images, "usb")
    split = _realiad_split("usb")
    split["train"][0]["image_path"] = "OK/S0099/gone.jpg"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "usb.json").write_text(json.dumps(split))
    with pytest.raises(SpecError, match=r"usb.json' names '.*OK/S0099/gone.jpg', which does not exist"):
        convert("realiad", images, tmp_path / "out", Options(split=tmp_path / "mine"))
    (tmp_path / "mine" / "usb.json").write_text(json.dumps({"train": []}))
    with pytest.raises(SpecError, match=r"is not a Real-IAD split file .*KeyError\('meta'\)"):
        convert("realiad", images, tmp_path / "out", Options(split=tmp_path / "mine"))
    assert not (tmp_path / "out").exists()


# BTAD ----------------------------------------------------------------------------------------------------

BTAD_FORMATS = {"01": (".bmp", ".png"), "02": (".png", ".png"), "03": (".bmp", ".bmp")}  # (images, masks) per class


def _btad(root: Path, size: int = 16, n: tuple[int, int, int] = (4, 2, 3)) -> Path:
    """``BTech_Dataset_transformed/<class>/{train/ok, test/ok, test/ko, ground_truth/ko}``."""
    published = root / "BTech_Dataset_transformed"
    for cls, (image, mask) in BTAD_FORMATS.items():
        for offset, folder, count in ((0, "train/ok", n[0]), (100, "test/ok", n[1]), (200, "test/ko", n[2])):
            for i in range(count):
                _image(published / cls / folder / f"{i:04d}{image}", size=size, seed=1000 * int(cls) + offset + i)
        for i in range(n[2]):
            _mask(published / cls / "ground_truth" / "ko" / f"{i:04d}{mask}", (0, 0, size // 2, size // 2), 255, size)
    return published


def test_btad_from_the_published_archive(tmp_path: Path) -> None:
    _btad(tmp_path / "btad")
    assert list(convert("btad", tmp_path / "btad", tmp_path / "out")) == ["01", "02", "03"]
    for cls, (image, _) in BTAD_FORMATS.items():
        samples = _parses(tmp_path / "out" / cls)
        assert _counts(samples) == (4, 2, 3)
        assert {s.defect for s in samples if s.label} == {"ko"} and _names(samples, "test", "ko") == {
            f"000{i}{image}" for i in range(3)
        }
        assert _provenance(tmp_path / "out" / cls)["split"] == {"source": "publisher: its train/ok, test/ok and test/ko folders"}
        mask = np.asarray(Image.open(tmp_path / "out" / cls / "ground_truth" / "ko" / "0000_mask.png"))
        assert mask[:8, :8].min() == 255 and mask.sum() == 64 * 255
    assert not check_dataset(tmp_path / "out").findings


def test_btad_class_03_run_has_pixel_metrics(cli, tmp_path: Path) -> None:  # noqa: ANN001
    """Class 03 ships .bmp masks: converted, checked and run through the worker, its run has pixel metrics."""
    _btad(tmp_path / "btad", size=64, n=(8, 4, 4))
    assert cli("datasets", "convert", "btad", str(tmp_path / "btad"), str(tmp_path / "out")).returncode == 0
    checked = cli("datasets", "check", str(tmp_path / "out"))
    assert checked.returncode == 0 and "warning:" not in checked.stdout, checked.stdout
    config = tmp_path / "viadk8s.yaml"
    config.write_text(yaml.safe_dump({"store": str(tmp_path / "store"), "datasets": {"btad": {"path": str(tmp_path / "out")}}}))
    spec = {"sweep": "b", "experiment": "evaluation", "model": "padim", "dataset": "btad", "category": "03", "seed": 1}
    spec |= {"image_size": 64, "weights": "random"}
    done = cli("worker", "--spec", "-", "--config", str(config), stdin=json.dumps(spec))
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = (tmp_path / "store" / "runs" / "b").glob("*/result.json")
    found = json.loads(result.read_text())
    assert found["data"]["pixel_masks"] is True and found["data"]["n_test_bad"] == 4
    assert all(found["metrics"][m] is not None for m in ("pixel_AUROC", "pixel_AUPRO", "pixel_F1Max"))


# VisA ----------------------------------------------------------------------------------------------------


def _visa(root: Path, counts: dict[str, tuple[int, int, int]]) -> Path:
    """The unpacked VisA_20220922.tar: ``<object>/Data/Images/{Normal,Anomaly}/*.JPG``, index masks
    ``<object>/Data/Masks/Anomaly/*.png`` (defect class ids, 0 = background) and ``split_csv/1cls.csv``."""
    rows = []
    for obj, (train, test_good, test_bad) in counts.items():
        for i in range(train + test_good):
            image = f"{obj}/Data/Images/Normal/{i:04d}.JPG"
            _image(root / image, size=8, seed=i)  # every image its own bytes: no train/test leak
            rows.append([obj, "train" if i < train else "test", "normal", image, ""])
        for i in range(test_bad):
            image, mask = f"{obj}/Data/Images/Anomaly/{i:03d}.JPG", f"{obj}/Data/Masks/Anomaly/{i:03d}.png"
            _image(root / image, 30, 8)
            _mask(root / mask, (1, 1, 4, 4), value=1 + i % 3, size=8)
            rows.append([obj, "test", "anomaly", image, mask])
    (root / "split_csv").mkdir(parents=True)
    with (root / "split_csv" / "1cls.csv").open("w", newline="") as file:
        csv.writer(file).writerows([["object", "split", "label", "image", "mask"], *rows])
    return root / "split_csv" / "1cls.csv"


def test_visa_follows_the_publishers_split_file(tmp_path: Path) -> None:
    split = _visa(tmp_path / "VisA", {"candle": (5, 2, 3), "pcb1": (4, 1, 2)})
    written = convert("visa", tmp_path / "VisA", tmp_path / "out")
    assert list(written) == ["candle", "pcb1"]
    for obj, expected in (("candle", (5, 2, 3)), ("pcb1", (4, 1, 2))):
        samples = _parses(tmp_path / "out" / obj)
        assert _counts(samples) == expected
        assert _names(samples, "train") == {f"{i:04d}.JPG" for i in range(expected[0])}
        assert {s.defect for s in samples if s.label} == {"bad"}
        mask = np.asarray(Image.open(tmp_path / "out" / obj / "ground_truth" / "bad" / "001_mask.png"))  # class id 2
        assert mask[1:4, 1:4].min() == 255 and mask.sum() == 9 * 255
        digest = hashlib.sha256(split.read_bytes()).hexdigest()
        assert _provenance(tmp_path / "out" / obj)["split"] == {
            "source": "publisher: split_csv/1cls.csv",
            "file": str(split.resolve()),
            "sha256": digest,
        }


def test_visa_counts_are_checked_against_the_publishers(cli, tmp_path: Path) -> None:  # noqa: ANN001
    """Capsules at its published size (542 / 60 / 100, tiny images): check says 'match', then 'differ'."""
    _visa(tmp_path / "VisA", {"capsules": (542, 60, 100)})
    elsewhere = tmp_path / "split.csv"
    (tmp_path / "VisA" / "split_csv" / "1cls.csv").rename(elsewhere)
    assert (
        cli(
            "datasets", "convert", "visa", str(tmp_path / "VisA"), str(tmp_path / "out"), "--split-csv", str(elsewhere)
        ).returncode
        == 0
    )
    report = check_dataset(tmp_path / "out")
    (capsules,) = report.categories
    assert capsules.published is True and not report.findings
    next((tmp_path / "out" / "capsules" / "train" / "good").iterdir()).unlink()
    (capsules,) = check_dataset(tmp_path / "out").categories
    assert capsules.published is False
    (finding,) = capsules.findings
    assert finding.level == "warning" and finding.message.startswith(
        "counts differ from VisA's published ones (split_csv/1cls.csv"
    )
    assert finding.message.endswith(": train good 541 (published: 542)")
    checked = cli("datasets", "check", str(tmp_path / "out"))
    printed = " ".join(checked.stdout.split())  # rich wraps long lines
    assert checked.returncode == 0 and "differ" in printed and "train good 541 (published: 542)" in printed


def test_visa_without_its_split_file_says_what_and_where(cli, tmp_path: Path) -> None:  # noqa: ANN001
    _visa(tmp_path / "VisA", {"candle": (2, 1, 1)})
    (tmp_path / "VisA" / "split_csv" / "1cls.csv").unlink()
    done = cli("datasets", "convert", "visa", str(tmp_path / "VisA"), str(tmp_path / "out"))
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "the publisher's 1-class split file" in line and "split_csv/1cls.csv (columns object,split,label,image,mask)" in line
    assert "VisA_20220922.tar" in line and "github.com/amazon-science/spot-diff" in line and "--split-csv FILE" in line


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda text: text.replace("object,split", "obj,split"),
            r"has columns \['obj', 'split', 'label', 'image', 'mask'\]; expected",
        ),
        (lambda text: text.replace(",normal,", ",weird,", 1), r"line 2: unknown label 'weird'; allowed: normal, anomaly"),
        (lambda text: text.replace(",train,", ",val,", 1), r"line 2: unknown split 'val'; allowed: train, test"),
        (
            lambda text: text.replace("0000.JPG", "9999.JPG", 1),
            r"names '.*candle/Data/Images/Normal/9999.JPG', which does not exist",
        ),
    ],
)
def test_visa_bad_split_file_names_the_bad_value(tmp_path: Path, edit, message: str) -> None:  # noqa: ANN001
    split = _visa(tmp_path / "VisA", {"candle": (2, 1, 1)})
    split.write_text(edit(split.read_text()))
    with pytest.raises(SpecError, match=message):
        convert("visa", tmp_path / "VisA", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# SensumSODF, VIADUCT, MVTec LOCO, AeBAD --------------------------------------------------------------------


def test_sensum_puts_150_goods_in_test_by_seed_143(tmp_path: Path) -> None:
    src = tmp_path / "SensumSODF"
    for i in range(160):
        _image(src / "capsule" / "negative" / "data" / f"{i:03d}.png", i)
    for i in range(4):
        _image(src / "capsule" / "positive" / "data" / f"{i:03d}.png", 7)
        _mask(src / "capsule" / "positive" / "annotation" / f"{i:03d}.png", value=1)
    assert list(convert("sensum_sodf", src, tmp_path / "out")) == ["capsule"]
    samples = _parses(tmp_path / "out" / "capsule")
    names = sorted(f"{i:03d}.png" for i in range(160))
    expected = {names[i] for i in np.random.default_rng(143).permutation(160)[:150]}
    assert _names(samples, "test", "good") == expected
    assert _names(samples, "train") == set(names) - expected
    assert _counts(samples) == (10, 150, 4)
    assert _provenance(tmp_path / "out" / "capsule")["split"]["source"].startswith("rule (protocol.md): seed 143")


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
    assert list(convert("viaduct", src, tmp_path / "out")) == ["3_pole_socket_housing", "tack"]
    assert {s.defect for s in _parses(tmp_path / "out" / "tack") if s.label} == {"scratch", "dent"}
    assert _counts(_parses(tmp_path / "out" / "3_pole_socket_housing")) == (3, 3, 1)
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
    assert list(convert("mvtec_loco", tmp_path / "loco", tmp_path / "out")) == [
        "juice_bottle__logical",
        "juice_bottle__structural",
    ]
    for kind in ("logical", "structural"):  # each kind apart, with every good image: the paper averages the two
        samples = _parses(tmp_path / "out" / f"juice_bottle__{kind}")
        assert {s.defect for s in samples if s.label} == {f"{kind}_anomalies"}
        assert _names(samples, "train") == {"000.png", "001.png", "002.png"}  # validation/good is not used
        assert _counts(samples) == (3, 3, 1)
    logical = tmp_path / "out" / "juice_bottle__logical"
    merged = np.asarray(Image.open(logical / "ground_truth" / "logical_anomalies" / "000_mask.png"))
    assert merged.sum() == 2 * 16 * 255 and merged[1, 1] == merged[9, 9] == 255
    (finding,) = [f for f in check_dataset(logical).findings if f.level == "warning"]  # far from the paper's numbers
    assert finding.message.endswith("train good 3 (published: 335), test good 3 (published: 94), test bad 1 (published: 142)")


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
        assert _counts(samples) == (3, 1, 2)


# Every converter -----------------------------------------------------------------------------------------


def test_images_are_hard_linked_and_the_provenance_says_so(tmp_path: Path) -> None:
    src = tmp_path / "viaduct"
    _mvtec_class(src / "tack", ("scratch",))
    convert("viaduct", src, tmp_path / "out")
    out = tmp_path / "out" / "tack"
    assert (out / "train" / "good" / "000.png").stat().st_ino == (src / "tack" / "train" / "good" / "000.png").stat().st_ino
    provenance = _provenance(out)
    assert provenance["images_linked"] == 7 and provenance["images_copied"] == 0 and provenance["masks_written"] == 1
    assert provenance["kind"] == "viaduct" and provenance["split"] == {"source": "publisher: its train and test folders"}


@pytest.mark.parametrize("kind", sorted(set(CONVERTERS) - {"visa"}))
def test_wrong_tree_is_refused_and_nothing_is_written(kind: str, tmp_path: Path) -> None:
    src = tmp_path / "somewhere_else"
    _mvtec_class(src / "bottle", ("broken",))  # an MVTec AD class: none of the converters' sources
    with pytest.raises(SpecError, match=rf"{kind} source .*expected .*not found|{kind} source .*expected .*found none"):
        convert(kind, src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_visa_wrong_tree_is_refused(tmp_path: Path) -> None:
    _visa(tmp_path / "VisA", {"not_visa": (2, 1, 1)})
    with pytest.raises(SpecError, match=r"visa source .*expected <object>/Data/Images for one of its classes, found none"):
        convert("visa", tmp_path / "VisA", tmp_path / "out")


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
    with pytest.raises(SpecError, match="000_mask.png' cannot be read"):
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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("mvtec", "SRC", "DST"), "unknown dataset kind to convert 'mvtec'; allowed: btad, visa, realiad, sensum_sodf"),
        (("btad", "SRC", "DST", "--split-csv", "x.csv"), "--split-csv applies to visa only, not to 'btad'"),
        (("visa", "SRC", "DST", "--rule-split"), "--rule-split applies to realiad only, not to 'visa'"),
        (("realiad", "SRC", "DST", "--split-dir", "nope"), "realiad split folder 'nope' does not exist"),
        (("btad", "nope", "DST"), "btad source folder 'nope' does not exist"),
        (("realiad", ".", "DST"), "realiad source '.' is the Real-IAD folder; pass one of its image folders: realiad_256"),
    ],
)
def test_cli_bad_input_is_one_line(cli, tmp_path: Path, args: tuple[str, ...], message: str) -> None:  # noqa: ANN001
    (tmp_path / "SRC").mkdir()
    _realiad_class(tmp_path / "SRC", "usb")
    (tmp_path / "realiad_256").mkdir()
    done = cli("datasets", "convert", *args)
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and message in line, line
    assert not (tmp_path / "DST").exists()

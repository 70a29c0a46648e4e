"""Convert the paper's datasets from their published layouts to the MVTec layout viadk8s reads.

::

    <dst>/<category>/train/good/<image>
    <dst>/<category>/test/good/<image>
    <dst>/<category>/test/<defect>/<image>
    <dst>/<category>/ground_truth/<defect>/<image stem>_mask.png
    <dst>/<category>/convert.json        (provenance: kind, source, linked/copied counts)

A converter first reads the whole source into a plan (nothing is written if the source is not the
expected tree), then writes each category in a temporary folder beside it and renames it into
place; if anything fails, what this call wrote is removed. An existing ``<dst>/<category>`` is
never overwritten. Images are hard-linked when source and destination share a file system (no
extra space; editing one edits both), else copied; ``convert.json`` records which. Masks are
always re-encoded as binary 0/255 PNG (the union when a source has several masks per image).

Source layouts (from the public datasets and their loaders in anomalib, MMR, SuperSimpleNet):

- ``realiad`` (Real-IAD, e.g. ``realiad_1024/``): ``<cat>/OK/<sample>/<cat>_<id>_OK_C<v>_<time>.jpg``
  and ``<cat>/NG/<defect>/<sample>/..._C<v>_....jpg`` with the mask beside it as ``<stem>.png`` (or
  ``<stem>_mask.png``). Only the top view (camera ``C1``) and the 8 classes of the paper are kept;
  defect classes are merged into one defect folder ``bad``. The split comes from an official
  ``realiad_jsons`` file ``<cat>.json`` (``{"train": [...], "test": [...]}``, entries with
  ``image_path``/``mask_path`` relative to the category folder and ``anomaly_class``, ``OK`` = good)
  looked up in ``src``, ``src/realiad_jsons``, ``src/realiad_jsons/realiad_jsons`` and
  ``src/../realiad_jsons/realiad_jsons``. Without one **(decision)**: all NG images go to test;
  the OK sample folders are shuffled with ``default_rng(0)`` and 20 % of them (at least one, all
  views of a sample together) go to test, the rest to train.
- ``sensum_sodf``: ``<cat>/negative/data/NNN.png``, ``<cat>/positive/data/NNN.png`` and masks
  ``<cat>/positive/annotation/NNN.png``. One split (protocol.md): the good images, sorted by name,
  are shuffled with ``default_rng(143)``; the first 150 go to test, the rest to train; all
  defective images go to test (defect folder ``bad``) with their masks.
- ``viaduct`` (VIADUCT): assumed already in MVTec layout per class (``train/good``, ``test/<defect>``,
  ``ground_truth/<defect>/<stem>[_mask].png``); only the paper's 12 classes are kept.
- ``mvtec_loco``: MVTec layout with defect folders ``logical_anomalies`` and ``structural_anomalies``
  (kept apart, so both means can be reported) and masks as folders
  ``ground_truth/<defect>/<stem>/000.png`` (one file per annotated defect), merged into one mask.
  ``validation/good`` is not used (as in anomalib, training uses ``train/good``).
- ``aebad`` (AeBAD_S, ``src`` = the ``AeBAD_S`` folder or its parent): ``train/good[/<sub>]/*.png``,
  ``test/<defect>/<subset>/*.png`` with masks of the same name in ``ground_truth/<defect>/<subset>/``,
  subsets ``same`` (no drift), ``background``, ``illumination``, ``view``. Each subset becomes its
  own category so they can be reported separately: ``AeBAD_S`` (the ``same`` subset) and
  ``AeBAD_S__<subset>`` for each drift subset, all with the same training images.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from viadk8s import catalog
from viadk8s.data.layout import IMAGE_SUFFIXES
from viadk8s.errors import SpecError, one_of

MERGED_DEFECT = "bad"
SENSUM_SEED, SENSUM_TEST_GOOD = 143, 150
REALIAD_SEED, REALIAD_TEST_FRACTION, REALIAD_VIEW = 0, 0.2, "_C1_"
AEBAD_NO_DRIFT = "same"


@dataclass(frozen=True)
class Item:
    """One image of a converted category, with where it comes from."""

    split: Literal["train", "test"]
    defect: str  # "good" or the defect folder
    name: str  # file name in the output folder
    image: Path
    masks: tuple[Path, ...] = ()  # merged into one mask


Plan = dict[str, list[Item]]


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``target`` and rename it to ``target`` on success.

    Readers never see a half-written folder; on failure the temporary folder is removed.
    """
    if target.exists():
        raise SpecError(f"output folder {str(target)!r} already exists; remove it or choose another")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _first_file(*candidates: Path) -> tuple[Path, ...]:
    """The first candidate that exists, as a 0- or 1-tuple of masks."""
    return next(((p,) for p in candidates if p.is_file()), ())


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


SUBSET = "__"  # "<class>__<subset>": a category that is one part of a class (AeBAD drift, LOCO defect kind)
LOCO_KINDS = {"logical": "logical_anomalies", "structural": "structural_anomalies"}


def _kept_classes(kind: str, src: Path, has_class: Callable[[Path], bool], expected: str) -> list[str]:
    """The catalog's classes of ``kind`` present in ``src``; an error naming the expected tree if none is."""
    classes = dict.fromkeys(c.split(SUBSET)[0] for c in catalog.datasets()[kind].categories)  # "cls__subset" -> "cls"
    present = [c for c in classes if has_class(src / c)]
    if not present:
        raise SpecError(f"{kind} source {str(src)!r}: expected {expected} for one of its classes, found none")
    return present


def _mvtec_items(root: Path, mask_folder: Callable[[Path, str, Path], tuple[Path, ...]]) -> list[Item]:
    """Items of one class already in MVTec layout; ``mask_folder`` finds the masks of a test image."""
    items = [Item("train", "good", p.name, p) for p in _images(root / "train" / "good")]
    for defect_dir in _subfolders(root / "test"):
        defect = defect_dir.name
        for image in _images(defect_dir):
            masks = () if defect == "good" else mask_folder(root, defect, image)
            items.append(Item("test", defect, image.name, image, masks))
    return items


def _mvtec_masks(root: Path, defect: str, image: Path) -> tuple[Path, ...]:
    folder = root / "ground_truth" / defect
    return _first_file(folder / f"{image.stem}_mask.png", folder / f"{image.stem}.png")


def _loco_masks(root: Path, defect: str, image: Path) -> tuple[Path, ...]:
    return tuple(_images(root / "ground_truth" / defect / image.stem))


def _viaduct(src: Path) -> Plan:
    classes = _kept_classes("viaduct", src, lambda c: (c / "train" / "good").is_dir(), "<class>/train/good")
    return {c: _mvtec_items(src / c, _mvtec_masks) for c in classes}


def _mvtec_loco(src: Path) -> Plan:
    """Each class twice, with its logical and with its structural anomalies (and all its good images):
    the per-dataset mean is then the paper's mean of logical and structural results."""
    classes = _kept_classes("mvtec_loco", src, lambda c: (c / "train" / "good").is_dir(), "<class>/train/good")
    plan: Plan = {}
    for cls in classes:
        items = _mvtec_items(src / cls, _loco_masks)
        for kind, folder in LOCO_KINDS.items():
            others = set(LOCO_KINDS.values()) - {folder}
            plan[f"{cls}{SUBSET}{kind}"] = [item for item in items if item.defect not in others]
    return plan


def _sensum(src: Path) -> Plan:
    plan: Plan = {}
    for cat in _kept_classes("sensum_sodf", src, lambda c: (c / "negative" / "data").is_dir(), "<class>/negative/data"):
        goods = _images(src / cat / "negative" / "data")
        if len(goods) <= SENSUM_TEST_GOOD:
            found = f"needs more than {SENSUM_TEST_GOOD} good images, found {len(goods)}"
            raise SpecError(f"sensum_sodf source {str(src / cat)!r}: {found}")
        order = np.random.default_rng(SENSUM_SEED).permutation(len(goods))
        to_test = {goods[i] for i in order[:SENSUM_TEST_GOOD]}
        items = [Item("test" if p in to_test else "train", "good", p.name, p) for p in goods]
        annotations = src / cat / "positive" / "annotation"
        for image in _images(src / cat / "positive" / "data"):
            items.append(Item("test", MERGED_DEFECT, image.name, image, _first_file(annotations / f"{image.stem}.png")))
        plan[cat] = items
    return plan


def _realiad_json(src: Path, cat: str) -> Path | None:
    jsons = Path("realiad_jsons")
    folders = (src, src / jsons, src / jsons / jsons, src.parent / jsons / jsons)
    return next((f / f"{cat}.json" for f in folders if (f / f"{cat}.json").is_file()), None)


def _json_item(root: Path, part: Literal["train", "test"], entry: dict[str, str | None]) -> Item:
    image = root / str(entry["image_path"])
    good = entry["anomaly_class"] == "OK"
    mask = entry.get("mask_path")
    masks = (root / mask,) if mask and not good else ()
    return Item(part, "good" if good else MERGED_DEFECT, image.name, image, masks)


def _realiad_from_json(root: Path, split_file: Path) -> list[Item]:
    """Items of the official split, top view only."""
    try:
        split = json.loads(split_file.read_text())
        parts: tuple[Literal["train", "test"], ...] = ("train", "test")
        items = [_json_item(root, part, e) for part in parts for e in split[part] if REALIAD_VIEW in Path(e["image_path"]).name]
    except (ValueError, KeyError, TypeError) as err:
        raise SpecError(f"realiad split file {str(split_file)!r} is not a realiad_jsons file: {err!r}") from None
    missing = next((p for i in items for p in (i.image, *i.masks) if not p.is_file()), None)
    if missing:
        raise SpecError(f"realiad split file {str(split_file)!r} names {str(missing)!r}, which does not exist")
    return items


def _top_view(folder: Path) -> list[Path]:
    """Camera-C1 images of a sample folder (Real-IAD images are JPEG; the PNGs beside them are masks)."""
    return [p for p in _images(folder) if REALIAD_VIEW in p.name and p.suffix.lower() != ".png"]


def _realiad_by_rule(root: Path) -> list[Item]:
    """Our split when no official file is given: see the module docstring."""
    samples = [s for s in _subfolders(root / "OK") if _top_view(s)]
    order = np.random.default_rng(REALIAD_SEED).permutation(len(samples))
    n_test = min(len(samples) - 1, max(1, round(REALIAD_TEST_FRACTION * len(samples))))
    to_test = {samples[i] for i in order[:n_test]}
    items = [Item("test" if s in to_test else "train", "good", p.name, p) for s in samples for p in _top_view(s)]
    for sample in (s for d in _subfolders(root / "NG") for s in _subfolders(d)):
        items += [
            Item("test", MERGED_DEFECT, p.name, p, _first_file(p.with_suffix(".png"), p.with_name(f"{p.stem}_mask.png")))
            for p in _top_view(sample)
        ]
    return items


def _realiad(src: Path) -> Plan:
    classes = _kept_classes("realiad", src, lambda c: (c / "OK").is_dir(), "<class>/OK/<sample>/*_C1_*.jpg")
    plan: Plan = {}
    for cat in classes:
        split_file = _realiad_json(src, cat)
        plan[cat] = _realiad_from_json(src / cat, split_file) if split_file else _realiad_by_rule(src / cat)
    return plan


def _aebad(src: Path) -> Plan:
    root = src / "AeBAD_S" if (src / "AeBAD_S").is_dir() else src
    subsets = [d.name for d in _subfolders(root / "test" / "good")]
    train_good = root / "train" / "good"
    train = [Item("train", "good", p.name, p) for p in _images(train_good)]
    train += [Item("train", "good", f"{d.name}__{p.name}", p) for d in _subfolders(train_good) for p in _images(d)]
    if not train or AEBAD_NO_DRIFT not in subsets:
        expected = f"AeBAD_S/train/good and AeBAD_S/test/good/{AEBAD_NO_DRIFT}"
        raise SpecError(f"aebad source {str(src)!r}: expected {expected}, not found")
    plan: Plan = {}
    for subset in subsets:
        items = list(train)
        for defect_dir in _subfolders(root / "test"):
            masks = root / "ground_truth" / defect_dir.name / subset
            for image in _images(defect_dir / subset):
                mask = () if defect_dir.name == "good" else _first_file(masks / image.name)
                items.append(Item("test", defect_dir.name, image.name, image, mask))
        plan["AeBAD_S" if subset == AEBAD_NO_DRIFT else f"AeBAD_S__{subset}"] = items
    return plan


CONVERTERS: dict[str, Callable[[Path], Plan]] = {
    "realiad": _realiad,
    "sensum_sodf": _sensum,
    "viaduct": _viaduct,
    "aebad": _aebad,
    "mvtec_loco": _mvtec_loco,
}


def _check(kind: str, src: Path, dst: Path, plan: Plan) -> None:
    """Refuse before writing anything: incomplete categories, name clashes, existing output."""
    for cat, items in plan.items():
        present = {(i.split, i.defect == "good") for i in items}
        for need, what in ((("train", True), "train good"), (("test", True), "test good"), (("test", False), "test defective")):
            if need not in present:
                raise SpecError(f"{kind} source {str(src)!r}: category {cat!r} has no {what} images")
        targets = [(i.split, i.defect, i.name) for i in items]
        if len(set(targets)) != len(targets):
            clash = next(t for t in targets if targets.count(t) > 1)
            raise SpecError(f"{kind} source {str(src)!r}: two images of {cat!r} would both become {'/'.join(clash)!r}")
        if (dst / cat).exists():
            raise SpecError(f"output folder {str(dst / cat)!r} already exists; remove it or choose another destination")


def _place(src: Path, dst: Path) -> bool:
    """Hard-link ``src`` to ``dst``, or copy it where linking is impossible; True when linked."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
        return True
    except OSError:
        shutil.copy2(src, dst)
        return False


def _foreground(mask: Path) -> np.ndarray:
    try:
        with Image.open(mask) as image:
            return np.asarray(image.convert("L")) > 0
    except UnidentifiedImageError:
        raise SpecError(f"mask {str(mask)!r} is not an image") from None


def _write_mask(masks: tuple[Path, ...], dst: Path) -> None:
    union = np.logical_or.reduce([_foreground(m) for m in masks])
    dst.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(union.astype(np.uint8) * 255).save(dst)


def _write_category(root: Path, items: list[Item], provenance: dict[str, str]) -> None:
    linked = 0
    for item in items:
        linked += _place(item.image, root / item.split / item.defect / item.name)
        if item.masks:
            _write_mask(item.masks, root / "ground_truth" / item.defect / f"{Path(item.name).stem}_mask.png")
    counts = {"images_linked": linked, "images_copied": len(items) - linked, "masks_written": sum(bool(i.masks) for i in items)}
    (root / "convert.json").write_text(json.dumps({**provenance, **counts}, indent=2))


def convert(kind: str, src: Path, dst: Path) -> list[str]:
    """Convert dataset ``kind`` at ``src`` into MVTec layout under ``dst``; returns the categories written."""
    if kind not in CONVERTERS:
        raise one_of("dataset kind to convert", kind, list(CONVERTERS))
    if not src.is_dir():
        raise SpecError(f"{kind} source folder {str(src)!r} does not exist")
    plan = CONVERTERS[kind](src)
    _check(kind, src, dst, plan)
    created = not dst.exists()
    written: list[str] = []
    try:
        for cat, items in plan.items():
            with atomic_folder(dst / cat) as tmp:
                _write_category(tmp, items, {"kind": kind, "source": str(src), "category": cat})
            written.append(cat)
    except BaseException:
        for folder in [dst] if created else [dst / cat for cat in written]:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return written

"""Real-IAD (``src`` = an image folder such as ``Real-IAD/realiad_1024``): the publisher's single-view split.

Images: ``<class>/OK/<sample>/<class>_<id>_OK_C<v>_<time>.jpg`` and
``<class>/NG/<defect>/<sample>/..._C<v>_....jpg`` with a mask ``<stem>.png`` beside each view that
shows the defect. Only the 8 classes of the paper are kept; defect classes are merged into ``bad``.

The split is the publisher's single-view one (the split of its ``RealIAD-C1`` experiment),
``realiad_jsons_sv/<class>.json``, looked up where the publisher's JSON archive is unpacked: beside
the image folder (``Real-IAD/realiad_jsons_sv/``, the publisher's README) or in a folder of its own
(``Real-IAD/realiad_jsons/realiad_jsons_sv/``, anomalib's layout), or in ``--split-dir``. The file
(from the publisher's loader ``datasets/explicit_dataset.py``): ``{"meta": {"prefix": ...,
"normal_class": "OK"}, "train": [...], "test": [...]}``, each entry
``{"category", "anomaly_class", "image_path", "mask_path"}`` with paths relative to
``<image folder>/<prefix>``. As in that loader, training entries are good, and a test entry is good
when its ``anomaly_class`` is the normal class or it has no mask: the views of a defective sample
that do not show the defect are good images even in an ``NG`` folder.

Without a split file the conversion stops (naming the files looked for) unless the user asks for
viadk8s's rule-based split (``--rule-split``): top view (camera ``C1``) only; every NG view with a
mask goes to test as ``bad``, one without a mask to test as ``good``; the OK sample folders are
shuffled with ``default_rng(0)`` and 20 % of them (at least one) go to test, the rest to train.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np

from viadk8s.data.convert.common import (
    MERGED_DEFECT,
    Category,
    Item,
    Options,
    Plan,
    first_file,
    images,
    kept_classes,
    split_file,
    subfolders,
)
from viadk8s.errors import SpecError

SPLIT_FOLDER = "realiad_jsons_sv"
ARCHIVE_FOLDER = "realiad_jsons"  # the JSON archive unpacked into a folder of its own
PUBLISHED_AT = "realiad_jsons.zip, from the publisher (realiad4ad.github.io/Real-IAD)"
RULE_SEED, RULE_TEST_FRACTION, RULE_VIEW = 0, 0.2, "_C1_"
RULE = f"rule: camera C1 only, {RULE_TEST_FRACTION:.0%} of the OK samples to test (seed {RULE_SEED})"
FORMAT = "{'meta': {'prefix', 'normal_class'}, 'train': [...], 'test': [...]}, entries with image_path, mask_path, anomaly_class"


def _split_folders(src: Path, options: Options) -> list[Path]:
    if options.split is not None:
        if not options.split.is_dir():
            raise SpecError(f"realiad split folder {str(options.split)!r} does not exist; pass the folder of <class>.json")
        return [options.split]
    return [src.parent / SPLIT_FOLDER, src.parent / ARCHIVE_FOLDER / SPLIT_FOLDER]


def _item(root: Path, part: Literal["train", "test"], entry: dict[str, Any], normal: str) -> Item:
    image = root / str(entry["image_path"])
    mask = entry["mask_path"]
    good = part == "train" or entry["anomaly_class"] == normal or not mask
    return Item(part, "good" if good else MERGED_DEFECT, image.name, image, () if good else (root / str(mask),))


def _from_split_file(src: Path, path: Path) -> list[Item]:
    """Items of the publisher's split, every entry as the file says."""
    try:
        split = json.loads(path.read_text())
        root, normal = src / str(split["meta"]["prefix"]), str(split["meta"]["normal_class"])
        parts: tuple[Literal["train", "test"], ...] = ("train", "test")
        items = [_item(root, part, entry, normal) for part in parts for entry in split[part]]
    except (ValueError, KeyError, TypeError) as err:
        raise SpecError(f"realiad split file {str(path)!r} is not a Real-IAD split file ({FORMAT}): {err!r}") from None
    missing = next((p for i in items for p in (i.image, *i.masks) if not p.is_file()), None)
    if missing:
        raise SpecError(f"realiad split file {str(path)!r} names {str(missing)!r}, which does not exist")
    return items


def _top_view(folder: Path) -> list[Path]:
    """Camera-C1 images of a sample folder (Real-IAD images are JPEG; the PNGs beside them are masks)."""
    return [p for p in images(folder) if RULE_VIEW in p.name and p.suffix.lower() != ".png"]


def _by_rule(root: Path) -> list[Item]:
    """viadk8s's split where the publisher's is absent: see the module docstring."""
    samples = [s for s in subfolders(root / "OK") if _top_view(s)]
    order = np.random.default_rng(RULE_SEED).permutation(len(samples))
    n_test = min(len(samples) - 1, max(1, round(RULE_TEST_FRACTION * len(samples))))
    to_test = {samples[i] for i in order[:n_test]}
    items = [Item("test" if s in to_test else "train", "good", p.name, p) for s in samples for p in _top_view(s)]
    for sample in (s for d in subfolders(root / "NG") for s in subfolders(d)):
        for view in _top_view(sample):
            mask = first_file(view.with_suffix(".png"), view.with_name(f"{view.stem}_mask.png"))
            items.append(Item("test", MERGED_DEFECT if mask else "good", view.name, view, mask))
    return items


def realiad(src: Path, options: Options) -> Plan:
    image_folders = [str(d) for d in subfolders(src) if d.name.startswith("realiad_") and not d.name.startswith(ARCHIVE_FOLDER)]
    if image_folders:
        raise SpecError(
            f"realiad source {str(src)!r} is the Real-IAD folder; pass one of its image folders: {', '.join(image_folders)}"
        )
    classes = kept_classes("realiad", src, lambda c: (c / "OK").is_dir(), "<class>/OK/<sample>/*.jpg")
    folders = _split_folders(src, options)
    plan: Plan = {}
    for cat in classes:
        path = next((f / f"{cat}.json" for f in folders if (f / f"{cat}.json").is_file()), None)
        if path is not None:
            plan[cat] = Category(_from_split_file(src, path), split_file(f"publisher: {SPLIT_FOLDER}", path))
        elif options.rule_split:
            plan[cat] = Category(_by_rule(src / cat), {"source": RULE})
        else:
            looked = " and ".join(str(f / f"{cat}.json") for f in folders)
            raise SpecError(
                f"realiad: no single-view split file for {cat!r}: looked for {looked}; it comes in {PUBLISHED_AT}: "
                f"unpack it beside {src.name}/ or pass --split-dir DIR (or --rule-split for viadk8s's own split)"
            )
    return plan

"""VisA (``src`` = ``VisA_20220922.tar`` unpacked): the publisher's 1-class split.

Images: ``<object>/Data/Images/Normal/*.JPG`` and ``<object>/Data/Images/Anomaly/*.JPG``; masks
``<object>/Data/Masks/Anomaly/*.png`` hold defect class indices (0 = background, 1.. = the
object's defect classes, see spot-diff's ``id2class``). The split is the publisher's
``split_csv/1cls.csv`` (header ``object,split,label,image,mask``; paths relative to ``src``;
label ``normal`` or ``anomaly``), which the tar holds beside the objects; ``--split-csv FILE``
names another copy. As the publisher's ``utils/prepare_data.py``: each row's image goes to
``<split>/good`` (label normal) or ``<split>/bad``, and the masks of bad test images become binary
(any non-zero value is defect, written 0/255 like every converter's).
"""

from __future__ import annotations

import csv
from pathlib import Path

from viadk8s.data.convert.common import MERGED_DEFECT, Category, Item, Options, Plan, kept_classes, split_file
from viadk8s.errors import SpecError, one_of

SPLIT_CSV = Path("split_csv") / "1cls.csv"
HEADER = ["object", "split", "label", "image", "mask"]
LABELS = {"normal": "good", "anomaly": MERGED_DEFECT}
PUBLISHED_AT = "VisA_20220922.tar and github.com/amazon-science/spot-diff (split_csv/1cls.csv)"


def _rows(path: Path) -> list[dict[str, str]]:
    """The split file's rows; one line naming what is wrong with it otherwise."""
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        if reader.fieldnames != HEADER:
            raise SpecError(f"visa split file {str(path)!r} has columns {reader.fieldnames}; expected {HEADER}")
        rows = list(reader)
    for number, row in enumerate(rows, start=2):
        where = f"split file {str(path)!r}, line {number}:"
        if row["split"] not in ("train", "test"):
            raise SpecError(f"{where} {one_of('split', row['split'], ['train', 'test'])}")
        if row["label"] not in LABELS:
            raise SpecError(f"{where} {one_of('label', row['label'], list(LABELS))}")
    return rows


def visa(src: Path, options: Options) -> Plan:
    path = options.split or src / SPLIT_CSV
    if not path.is_file():
        raise SpecError(
            f"visa: the publisher's 1-class split file {str(path)!r} does not exist; it is {SPLIT_CSV} "
            f"(columns {','.join(HEADER)}) of {PUBLISHED_AT}: pass it with --split-csv FILE"
        )
    objects = kept_classes("visa", src, lambda c: (c / "Data" / "Images").is_dir(), "<object>/Data/Images")
    items: dict[str, list[Item]] = {o: [] for o in objects}
    for row in _rows(path):
        if row["object"] not in items:
            continue  # not one of the paper's objects, or not unpacked
        image, defect = src / row["image"], LABELS[row["label"]]
        masks = (src / row["mask"],) if row["split"] == "test" and defect != "good" and row["mask"] else ()
        for needed in (image, *masks):
            if not needed.is_file():
                raise SpecError(f"visa split file {str(path)!r} names {str(needed)!r}, which does not exist")
        items[row["object"]].append(Item("train" if row["split"] == "train" else "test", defect, image.name, image, masks))
    provenance = split_file(f"publisher: {SPLIT_CSV}", path)
    return {o: Category(found, provenance) for o, found in items.items()}

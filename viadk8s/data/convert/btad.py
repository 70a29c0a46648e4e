"""BTAD (``btad.zip`` unpacked: ``BTech_Dataset_transformed/``, ``src`` = that folder or its parent).

Each class ``01``, ``02``, ``03`` ships ``train/ok``, ``test/ok``, ``test/ko`` and masks
``ground_truth/ko/<stem>.<ext>``; images and masks are ``.bmp`` or ``.png`` depending on the class
(class 03's masks are ``.bmp``). ``ok`` becomes ``good``; ``ko`` stays the defect folder's name.
The split is the publisher's folders; masks are paired by the loader's own rule
(:class:`viadk8s.data.layout.Masks`) and written as PNG like every converter's.
"""

from __future__ import annotations

from pathlib import Path

from viadk8s.data.convert.common import Category, Item, Options, Plan, images, kept_classes
from viadk8s.data.convert.mvtec import layout_masks

PUBLISHED_ROOT = "BTech_Dataset_transformed"
GOOD, BAD = "ok", "ko"


def btad(src: Path, _: Options) -> Plan:
    root = src / PUBLISHED_ROOT if (src / PUBLISHED_ROOT).is_dir() else src
    expected = f"<class>/train/{GOOD} (the published {PUBLISHED_ROOT} folder)"
    plan: Plan = {}
    for cls in kept_classes("btad", root, lambda c: (c / "train" / GOOD).is_dir(), expected):
        masks_of = layout_masks(root / cls)
        items = [Item("train", "good", p.name, p) for p in images(root / cls / "train" / GOOD)]
        items += [Item("test", "good", p.name, p) for p in images(root / cls / "test" / GOOD)]
        items += [Item("test", BAD, p.name, p, masks_of(BAD, p)) for p in images(root / cls / "test" / BAD)]
        plan[cls] = Category(items, {"source": f"publisher: its train/{GOOD}, test/{GOOD} and test/{BAD} folders"})
    return plan

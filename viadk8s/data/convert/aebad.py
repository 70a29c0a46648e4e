"""AeBAD (``src`` = the ``AeBAD_S`` folder or its parent).

Source: ``train/good[/<sub>]/*.png``, ``test/<defect>/<subset>/*.png`` with masks of the same name
in ``ground_truth/<defect>/<subset>/``, subsets ``same`` (no drift), ``background``,
``illumination``, ``view``. Each subset becomes its own category so they can be reported
separately: ``AeBAD_S`` (the ``same`` subset) and ``AeBAD_S__<subset>`` for each drift subset, all
with the same training images (named ``<sub>__<name>`` where they sit in sub-folders).
"""

from __future__ import annotations

from pathlib import Path

from viadk8s.data.convert.common import SUBSET, Category, Item, Options, Plan, first_file, images, subfolders
from viadk8s.errors import SpecError

AEBAD_NO_DRIFT = "same"


def aebad(src: Path, _: Options) -> Plan:
    root = src / "AeBAD_S" if (src / "AeBAD_S").is_dir() else src
    subsets = [d.name for d in subfolders(root / "test" / "good")]
    train_good = root / "train" / "good"
    train = [Item("train", "good", p.name, p) for p in images(train_good)]
    train += [Item("train", "good", f"{d.name}{SUBSET}{p.name}", p) for d in subfolders(train_good) for p in images(d)]
    if not train or AEBAD_NO_DRIFT not in subsets:
        expected = f"AeBAD_S/train/good and AeBAD_S/test/good/{AEBAD_NO_DRIFT}"
        raise SpecError(f"aebad source {str(src)!r}: expected {expected}, not found")
    plan: Plan = {}
    for subset in subsets:
        items = list(train)
        for defect_dir in subfolders(root / "test"):
            masks = root / "ground_truth" / defect_dir.name / subset
            for image in images(defect_dir / subset):
                mask = () if defect_dir.name == "good" else first_file(masks / image.name)
                items.append(Item("test", defect_dir.name, image.name, image, mask))
        plan["AeBAD_S" if subset == AEBAD_NO_DRIFT else f"AeBAD_S{SUBSET}{subset}"] = Category(items)
    return plan

"""Sources already in MVTec layout per class: VIADUCT and MVTec LOCO.

- ``viaduct`` (VIADUCT): no published file list could be found, so the MVTec layout is assumed per
  class (``train/good``, ``test/<defect>``, masks paired by :class:`viadk8s.data.layout.Masks`);
  only the paper's 12 classes are kept.
- ``mvtec_loco``: defect folders ``logical_anomalies`` and ``structural_anomalies`` kept apart (each
  class becomes ``<class>__logical`` and ``<class>__structural``, both with every good image, so the
  dataset mean is the paper's mean of the two); masks are folders
  ``ground_truth/<defect>/<stem>/000.png`` (one file per annotated defect), merged into one mask.
  ``validation/good`` is not used (as in anomalib, training uses ``train/good``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from viadk8s.data.convert.common import SUBSET, Category, Item, Options, Plan, images, kept_classes, subfolders
from viadk8s.data.layout import Masks

LOCO_KINDS = {"logical": "logical_anomalies", "structural": "structural_anomalies"}


def mvtec_items(root: Path, masks_of: Callable[[str, Path], tuple[Path, ...]]) -> list[Item]:
    """Items of one class in MVTec layout; ``masks_of(defect, image)`` finds the masks of a test image."""
    items = [Item("train", "good", p.name, p) for p in images(root / "train" / "good")]
    for defect_dir in subfolders(root / "test"):
        defect = defect_dir.name
        for image in images(defect_dir):
            items.append(Item("test", defect, image.name, image, () if defect == "good" else masks_of(defect, image)))
    return items


def layout_masks(root: Path) -> Callable[[str, Path], tuple[Path, ...]]:
    """The loader's own mask rule, for sources that follow it."""
    masks = Masks(root)

    def of(defect: str, image: Path) -> tuple[Path, ...]:
        mask = masks.of(defect, image)
        return (mask,) if mask else ()

    return of


def viaduct(src: Path, _: Options) -> Plan:
    classes = kept_classes("viaduct", src, lambda c: (c / "train" / "good").is_dir(), "<class>/train/good")
    return {c: Category(mvtec_items(src / c, layout_masks(src / c))) for c in classes}


def mvtec_loco(src: Path, _: Options) -> Plan:
    classes = kept_classes("mvtec_loco", src, lambda c: (c / "train" / "good").is_dir(), "<class>/train/good")
    plan: Plan = {}
    for cls in classes:
        root = src / cls
        items = mvtec_items(root, lambda defect, image, root=root: tuple(images(root / "ground_truth" / defect / image.stem)))
        for kind, folder in LOCO_KINDS.items():
            others = set(LOCO_KINDS.values()) - {folder}
            plan[f"{cls}{SUBSET}{kind}"] = Category([item for item in items if item.defect not in others])
    return plan

"""Convert the paper's datasets from the archives their publishers ship to the MVTec layout viadk8s reads.

::

    <dst>/<category>/train/good/<image>
    <dst>/<category>/test/good/<image>
    <dst>/<category>/test/<defect>/<image>
    <dst>/<category>/ground_truth/<defect>/<image stem>_mask.png
    <dst>/<category>/convert.json        (provenance: kind, source, split source, linked/copied counts)

One module per source, its docstring describing the published layout and where the split comes
from: ``btad``, ``visa``, ``realiad``, ``sensum`` (sensum_sodf), ``aebad``, ``mvtec`` (viaduct and
mvtec_loco); ``common`` holds what they share.
A converter first reads the whole source into a plan (nothing is written if the source is not the
expected tree or its split file is missing), then each category is written in a temporary folder
beside it and renamed into place; if anything fails, what this call wrote is removed. An existing
``<dst>/<category>`` is never overwritten. Images are hard-linked when source and destination
share a file system (no extra space; editing one edits both), else copied; ``convert.json``
records which, and ``split`` says where the train/test split comes from (a publisher's split file
with its sha256, the publisher's folders, or a rule). Masks are always re-encoded as binary 0/255
PNG, any non-zero pixel being defect (the union when a source has several masks per image).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from viadk8s.data.convert.aebad import aebad
from viadk8s.data.convert.btad import btad
from viadk8s.data.convert.common import Category, Item, Options, Plan, atomic_folder
from viadk8s.data.convert.mvtec import mvtec_loco, viaduct
from viadk8s.data.convert.realiad import realiad
from viadk8s.data.convert.sensum import sensum
from viadk8s.data.convert.visa import visa
from viadk8s.data.images import read_mask
from viadk8s.data.layout import MASK_SUFFIX
from viadk8s.errors import SpecError, one_of

__all__ = ["CONVERTERS", "Options", "atomic_folder", "convert"]

CONVERTERS: dict[str, Callable[[Path, Options], Plan]] = {
    "btad": btad,
    "visa": visa,
    "realiad": realiad,
    "sensum_sodf": sensum,
    "aebad": aebad,
    "viaduct": viaduct,
    "mvtec_loco": mvtec_loco,
}


def _check(kind: str, src: Path, dst: Path, plan: Plan) -> None:
    """Refuse before writing anything: incomplete categories, name clashes, existing output."""
    for cat, category in plan.items():
        present = {(i.split, i.defect == "good") for i in category.items}
        for need, what in ((("train", True), "train good"), (("test", True), "test good"), (("test", False), "test defective")):
            if need not in present:
                raise SpecError(f"{kind} source {str(src)!r}: category {cat!r} has no {what} images")
        clash = next((t for t, n in Counter((i.split, i.defect, i.name) for i in category.items).items() if n > 1), None)
        if clash:
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


def _write_mask(masks: tuple[Path, ...], dst: Path) -> None:
    union = np.logical_or.reduce([read_mask(m).numpy().astype(bool) for m in masks])
    dst.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(union.astype(np.uint8) * 255).save(dst)


def _write_category(root: Path, items: list[Item], provenance: dict[str, object]) -> None:
    linked = 0
    for item in items:
        linked += _place(item.image, root / item.split / item.defect / item.name)
        if item.masks:
            _write_mask(item.masks, root / "ground_truth" / item.defect / f"{Path(item.name).stem}{MASK_SUFFIX}.png")
    counts = {"images_linked": linked, "images_copied": len(items) - linked, "masks_written": sum(bool(i.masks) for i in items)}
    (root / "convert.json").write_text(json.dumps({**provenance, **counts}, indent=2))


def convert(kind: str, src: Path, dst: Path, options: Options | None = None) -> dict[str, Category]:
    """Convert dataset ``kind`` at ``src`` into MVTec layout under ``dst``; returns the categories written."""
    if kind not in CONVERTERS:
        raise one_of("dataset kind to convert", kind, list(CONVERTERS))
    if not src.is_dir():
        raise SpecError(f"{kind} source folder {str(src)!r} does not exist")
    plan = CONVERTERS[kind](src, options or Options())
    _check(kind, src, dst, plan)
    created = not dst.exists()
    written: list[str] = []
    try:
        for cat, category in plan.items():
            with atomic_folder(dst / cat) as tmp:
                provenance = {"kind": kind, "source": str(src), "category": cat, "split": category.split}
                _write_category(tmp, category.items, provenance)
            written.append(cat)
    except BaseException:
        for folder in [dst] if created else [dst / cat for cat in written]:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return plan

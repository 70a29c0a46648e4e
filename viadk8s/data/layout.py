"""The MVTec layout every dataset is converted to, read into a list of samples.

::

    <category>/train/good/*.png
    <category>/test/good/*.png
    <category>/test/<defect>/*.png
    <category>/ground_truth/<defect>/<stem>_mask.png   (or <stem>.png; any image format below)

:class:`Masks` is the one rule that pairs a test image with its mask: the loader and
``datasets check`` both use it, so a mask one of them sees the other sees too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from viadk8s.errors import SpecError

IMAGE_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")  # masks: the first format found wins
MASK_SUFFIX = "_mask"


@dataclass(frozen=True)
class Sample:
    image_path: str
    label: int  # 1 = anomalous
    split: Literal["train", "val", "test"]
    defect: str  # "good" or the defect folder name
    mask_path: str | None = None
    name: str = ""  # the path relative to the category folder; kept when drift writes a copy elsewhere


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


class Masks:
    """The mask files under ``<root>/ground_truth/<defect>/`` and which image each belongs to.

    The mask of test image ``<stem>.<any>`` is ``<stem>_mask.<ext>``, else ``<stem>.<ext>``, for
    any ``ext`` of :data:`IMAGE_SUFFIXES` in any letter case (BTAD's class 03 ships ``.bmp`` masks);
    when one name exists in several formats, the first in :data:`IMAGE_SUFFIXES` order is used.
    """

    def __init__(self, root: Path) -> None:
        self.files: list[Path] = []
        self._by_name: dict[tuple[str, str], Path] = {}
        ground_truth = root / "ground_truth"
        for folder in sorted(d for d in ground_truth.iterdir() if d.is_dir()) if ground_truth.is_dir() else []:
            files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            for path in sorted(files, key=lambda p: (IMAGE_SUFFIXES.index(p.suffix.lower()), p.name)):
                self._by_name.setdefault((folder.name, path.stem), path)
            self.files += sorted(files)

    def of(self, defect: str, image: Path) -> Path | None:
        """The mask of test image ``image`` of defect folder ``defect``, or None."""
        return self._by_name.get((defect, f"{image.stem}{MASK_SUFFIX}")) or self._by_name.get((defect, image.stem))


def scan_category(root: Path) -> list[Sample]:
    """All samples of one category folder; a clear error if the layout is not MVTec's."""
    train_good = root / "train" / "good"
    if not root.is_dir():
        raise SpecError(f"dataset folder {str(root)!r} does not exist")
    if not train_good.is_dir() or not _images(train_good):
        raise SpecError(f"dataset folder {str(root)!r} has no images in train/good (MVTec layout expected)")
    test = root / "test"
    if not test.is_dir():
        raise SpecError(f"dataset folder {str(root)!r} has no test folder (MVTec layout expected)")
    samples = [Sample(str(p), 0, "train", "good", name=p.relative_to(root).as_posix()) for p in _images(train_good)]
    train = root / "train"
    for defect_dir in sorted(d for d in train.iterdir() if d.is_dir() and d.name != "good"):
        samples += [Sample(str(p), 1, "train", defect_dir.name, name=p.relative_to(root).as_posix()) for p in _images(defect_dir)]
    masks = Masks(root)
    for defect_dir in sorted(d for d in test.iterdir() if d.is_dir()):
        defect = defect_dir.name
        for image in _images(defect_dir):
            mask = None if defect == "good" else masks.of(defect, image)
            name = image.relative_to(root).as_posix()
            samples.append(Sample(str(image), int(defect != "good"), "test", defect, str(mask) if mask else None, name))
    tested = [s for s in samples if s.split == "test"]
    if not any(s.label == 0 for s in tested) or not any(s.label == 1 for s in tested):
        raise SpecError(f"dataset folder {str(root)!r} needs good and bad images in test/")
    return samples


def has_pixel_masks(samples: list[Sample]) -> bool:
    """True when every bad test image has a mask: only then are pixel metrics defined."""
    return all(s.mask_path for s in samples if s.split == "test" and s.label == 1)


def discover_categories(root: Path) -> list[str]:
    """Category folders of a dataset: the sub-folders that hold ``train/good``."""
    if not root.is_dir():
        raise SpecError(f"dataset folder {str(root)!r} does not exist")
    return sorted(d.name for d in root.iterdir() if (d / "train" / "good").is_dir())

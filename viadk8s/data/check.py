"""``viadk8s datasets check``: open every image and mask of a dataset once, before a run trips on it.

Errors (``upload`` refuses them, a run would fail or measure the wrong thing): unreadable or
truncated files, unsupported pixel types, empty categories, bad test images without good ones,
files present in both train and test (same bytes: the test set leaks into training).
Warnings (a run works, but a user should know): masks without an image, bad images without a
mask (pixel metrics are then off for the category), masks whose size differs from their image
(resized with nearest neighbour at run time), and counts that differ from those the dataset's
publisher states (the catalog's ``counts``; the dataset is the one named, or the one a category's
``convert.json`` says it was converted from). Masks are paired with images by the loader's own
rule (:class:`viadk8s.data.layout.Masks`), so a mask counted here is a mask a run reads.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from viadk8s import catalog
from viadk8s.data.images import BadImage, bits_for, decode, inspect
from viadk8s.data.layout import IMAGE_SUFFIXES, MASK_SUFFIX, Masks, discover_categories
from viadk8s.errors import SpecError


@dataclass(frozen=True)
class Finding:
    level: Literal["error", "warning"]
    path: str
    message: str

    def line(self) -> str:
        return f"{self.level}: {self.path}: {self.message}"


@dataclass
class CategoryReport:
    name: str
    counts: Counter[str] = field(default_factory=Counter)  # "train/good", "test/scratch", ...
    formats: Counter[str] = field(default_factory=Counter)  # "PNG RGB 8-bit", "TIFF uint16x1 12-bit", ...
    sizes: Counter[str] = field(default_factory=Counter)  # "1500x1000"
    masks: int = 0
    findings: list[Finding] = field(default_factory=list)
    published: bool | None = None  # counts equal the publisher's; None: no published counts apply

    def add(self, level: Literal["error", "warning"], path: Path | str, message: str) -> None:
        self.findings.append(Finding(level, str(path), message))


@dataclass
class DatasetReport:
    root: str
    categories: list[CategoryReport]

    @property
    def findings(self) -> list[Finding]:
        return [f for c in self.categories for f in c.findings]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []


def _read(path: Path, report: CategoryReport) -> tuple[str, tuple[int, int]] | None:
    """Decode one file completely; its content hash and size, or None (an error is recorded)."""
    try:
        info = inspect(path)
        pixels = decode(path)
    except BadImage as err:
        report.add("error", path, str(err).replace(f"image {str(path)!r} ", ""))
        return None
    depth = bits_for(int(pixels.max())) if info.container_bits == 16 and pixels.size else info.container_bits
    report.formats[f"{info.format} {info.mode} {depth}-bit"] += 1
    report.sizes[f"{info.width}x{info.height}"] += 1
    return hashlib.sha256(path.read_bytes()).hexdigest(), info.size


def _converted_from(root: Path) -> str | None:
    """The dataset kind a category's ``convert.json`` names, if it has a readable one."""
    try:
        kind = json.loads((root / "convert.json").read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def _compare_published(root: Path, report: CategoryReport, dataset: str | None) -> None:
    """A warning when the category's counts differ from those its publisher states."""
    entry = catalog.datasets().get(dataset or _converted_from(root) or "")
    expected = entry.counts.categories.get(root.name) if entry and entry.counts else None
    if entry is None or entry.counts is None or expected is None:
        return
    bad = sum(n for k, n in report.counts.items() if k.startswith("test/") and k != "test/good")
    found = (report.counts["train/good"], report.counts["test/good"], bad)
    report.published = found == expected
    if not report.published:
        diffs = ", ".join(
            f"{what} {n} (published: {m})" for what, n, m in zip(catalog.COUNTED, found, expected, strict=True) if n != m
        )
        report.add("warning", root, f"counts differ from {entry.name}'s published ones ({entry.counts.source}): {diffs}")


def check_category(root: Path, dataset: str | None = None) -> CategoryReport:
    """Everything a run of this category would read, read once; ``dataset``: the catalog dataset it is
    a category of (default: the one its ``convert.json`` names), whose published counts apply."""
    report = CategoryReport(root.name)
    hashes: dict[str, dict[str, Path]] = {"train": {}, "test": {}}
    bad: dict[Path, tuple[str, tuple[int, int] | None]] = {}  # bad test image -> (defect, size if readable)
    for split in ("train", "test"):
        for path in _files(root / split):
            defect = path.relative_to(root / split).parts[0] if path.parent != root / split else "?"
            report.counts[f"{split}/{defect}"] += 1
            read = _read(path, report)
            if split == "test" and defect != "good":
                bad[path] = (defect, read[1] if read else None)
            if read is not None:
                hashes[split].setdefault(read[0], path)
    if not report.counts["train/good"]:
        report.add("error", root / "train" / "good", "no training images (empty category)")
    if not report.counts["test/good"] or not sum(
        n for k, n in report.counts.items() if k.startswith("test/") and k != "test/good"
    ):
        report.add("error", root / "test", "needs both good and bad test images")
    for digest in hashes["train"].keys() & hashes["test"].keys():
        report.add("error", hashes["test"][digest], f"same file as the training image {hashes['train'][digest]}")
    masks = Masks(root)
    image_of = {mask: image for image, (defect, _) in bad.items() if (mask := masks.of(defect, image))}
    paired = set(image_of.values())
    by_stem = {(defect, image.stem): image for image, (defect, _) in bad.items()}
    for mask in _files(root / "ground_truth"):
        report.masks += 1
        try:
            mask_size = inspect(mask).size
            decode(mask)
        except BadImage as err:
            report.add("error", mask, str(err).replace(f"image {str(mask)!r} ", ""))
            continue
        image = image_of.get(mask)
        if image is None:
            defect = mask.parent.name
            owner = by_stem.get((defect, mask.stem.removesuffix(MASK_SUFFIX))) or by_stem.get((defect, mask.stem))
            if owner is None:
                report.add("warning", mask, "mask without an image in test/")
            else:  # another format or name of the same image's mask wins
                report.add("warning", mask, f"not used: {owner.name}'s mask is {masks.of(bad[owner][0], owner)}")
            continue
        image_size = bad[image][1]
        if image_size is not None and mask_size != image_size:
            h, w = image_size
            report.add(
                "warning", mask, f"mask is {mask_size[1]}x{mask_size[0]}, its image {w}x{h}: resized (nearest) at run time"
            )
    unmasked = [image for image in bad if image not in paired]
    if report.masks and unmasked:  # a dataset with no masks at all is image-level, not broken
        report.add("warning", unmasked[0], f"{len(unmasked)} bad images have no mask: pixel metrics off")
    _compare_published(root, report, dataset)
    return report


def refuse_errors(report: DatasetReport) -> None:
    """One line naming the first bad file when the dataset has errors (exit 2)."""
    if report.errors:
        more = f" (+{len(report.errors) - 1} more: run 'viadk8s datasets check')" if len(report.errors) > 1 else ""
        raise SpecError(f"dataset {report.root!r} has errors; first: {report.errors[0].line()}{more}")


def check_dataset(root: Path) -> DatasetReport:
    """A folder of categories, or one category folder."""
    if (root / "train").is_dir():
        return DatasetReport(str(root), [check_category(root)])
    names = discover_categories(root)
    reports = [check_category(root / name) for name in names]
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in names and not p.name.startswith(".")):
        empty = CategoryReport(folder.name)
        empty.add("error", folder, "no train/good folder (empty category or not MVTec layout)")
        reports.append(empty)
    return DatasetReport(str(root), reports)

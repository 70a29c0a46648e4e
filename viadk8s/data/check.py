"""``viadk8s datasets check``: open every image and mask of a dataset once, before a run trips on it.

Errors (``upload`` refuses them, a run would fail or measure the wrong thing): unreadable or
truncated files, unsupported pixel types, empty categories, bad test images without good ones,
files present in both train and test (same bytes: the test set leaks into training).
Warnings (a run works, but a user should know): masks without an image, bad images without a
mask (pixel metrics are then off for the category), masks whose size differs from their image
(resized with nearest neighbour at run time).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from viadk8s.data.images import BadImage, bits_for, decode, inspect
from viadk8s.data.layout import IMAGE_SUFFIXES, discover_categories
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


def check_category(root: Path) -> CategoryReport:
    """Everything a run of this category would read, read once."""
    report = CategoryReport(root.name)
    hashes: dict[str, dict[str, Path]] = {"train": {}, "test": {}}
    sizes: dict[tuple[str, str], tuple[int, int]] = {}  # (defect, stem) -> image size, to pair masks
    for split in ("train", "test"):
        for path in _files(root / split):
            defect = path.relative_to(root / split).parts[0] if path.parent != root / split else "?"
            report.counts[f"{split}/{defect}"] += 1
            read = _read(path, report)
            if read is None:
                continue
            digest, size = read
            hashes[split].setdefault(digest, path)
            if split == "test" and defect != "good":
                sizes[(defect, path.stem)] = size
    if not report.counts["train/good"]:
        report.add("error", root / "train" / "good", "no training images (empty category)")
    if not report.counts["test/good"] or not sum(
        n for k, n in report.counts.items() if k.startswith("test/") and k != "test/good"
    ):
        report.add("error", root / "test", "needs both good and bad test images")
    for digest in hashes["train"].keys() & hashes["test"].keys():
        report.add("error", hashes["test"][digest], f"same file as the training image {hashes['train'][digest]}")
    paired: set[tuple[str, str]] = set()
    for mask in _files(root / "ground_truth"):
        report.masks += 1
        defect = mask.parent.name
        stem = mask.stem.removesuffix("_mask")
        try:
            mask_size = inspect(mask).size
            decode(mask)
        except BadImage as err:
            report.add("error", mask, str(err).replace(f"image {str(mask)!r} ", ""))
            continue
        if (defect, stem) not in sizes:
            report.add("warning", mask, "mask without an image in test/")
            continue
        paired.add((defect, stem))
        if mask_size != sizes[(defect, stem)]:
            h, w = sizes[(defect, stem)]
            report.add(
                "warning", mask, f"mask is {mask_size[1]}x{mask_size[0]}, its image {w}x{h}: resized (nearest) at run time"
            )
    unmasked = sorted(set(sizes) - paired)
    if report.masks and unmasked:  # a dataset with no masks at all is image-level, not broken
        defect, stem = unmasked[0]
        report.add("warning", root / "test" / defect / stem, f"{len(unmasked)} bad images have no mask: pixel metrics off")
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

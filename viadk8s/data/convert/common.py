"""What every converter shares: the plan it reads a source into, and the helpers that read sources."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from viadk8s import catalog
from viadk8s.data.layout import IMAGE_SUFFIXES
from viadk8s.errors import SpecError

MERGED_DEFECT = "bad"  # the defect folder of datasets whose defect classes are merged
SUBSET = "__"  # "<class>__<subset>": a category that is one part of a class (AeBAD drift, LOCO defect kind)
PUBLISHED_FOLDERS = {"source": "publisher: its train and test folders"}


@dataclass(frozen=True)
class Item:
    """One image of a converted category, with where it comes from."""

    split: Literal["train", "test"]
    defect: str  # "good" or the defect folder
    name: str  # file name in the output folder
    image: Path
    masks: tuple[Path, ...] = ()  # merged into one mask


@dataclass(frozen=True)
class Category:
    """A category's images and where its train/test split comes from (``convert.json`` → ``split``)."""

    items: list[Item]
    split: dict[str, str] = field(default_factory=lambda: dict(PUBLISHED_FOLDERS))


Plan = dict[str, Category]


@dataclass(frozen=True)
class Options:
    """What a user may choose beyond source and destination; each converter reads what applies to it."""

    split: Path | None = None  # visa: the 1-class split file; realiad: the folder of <class>.json
    rule_split: bool = False  # realiad: viadk8s's own split where the publisher's is absent


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


def images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def first_file(*candidates: Path) -> tuple[Path, ...]:
    """The first candidate that exists, as a 0- or 1-tuple of masks."""
    return next(((p,) for p in candidates if p.is_file()), ())


def subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def kept_classes(kind: str, src: Path, has_class: Callable[[Path], bool], expected: str) -> list[str]:
    """The catalog's classes of ``kind`` present in ``src``; an error naming the expected tree if none is."""
    classes = dict.fromkeys(c.split(SUBSET)[0] for c in catalog.datasets()[kind].categories)  # "cls__subset" -> "cls"
    present = [c for c in classes if has_class(src / c)]
    if not present:
        raise SpecError(f"{kind} source {str(src)!r}: expected {expected} for one of its classes, found none")
    return present


def split_file(source: str, path: Path) -> dict[str, str]:
    """``convert.json``'s record of a publisher's split file: which one, and its exact bytes' sha256."""
    return {"source": source, "file": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}

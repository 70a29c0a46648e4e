"""Where a dataset category lives on this machine: generated, or a folder the user declared."""

from __future__ import annotations

from pathlib import Path

from viadk8s.config import Config
from viadk8s.data.layout import discover_categories
from viadk8s.data.synthetic import ensure_category
from viadk8s.errors import SpecError, one_of


def is_local(config: Config, dataset: str) -> bool:
    """True when the dataset can be read on this machine without staging."""
    entry = config.dataset(dataset)
    return entry.synthetic is not None or entry.path is not None


def categories(config: Config, dataset: str) -> list[str]:
    """The catalog's categories, or those found in a user's folder."""
    entry = config.dataset(dataset)
    if entry.categories:
        return list(entry.categories)
    if entry.path is None:
        raise SpecError(f"dataset {dataset!r} has no categories: declare its folder in viadk8s.yaml")
    found = discover_categories(Path(entry.path).expanduser())
    if not found:
        raise SpecError(f"dataset folder {entry.path!r} has no category with train/good (MVTec layout expected)")
    return found


def resolve_category(config: Config, dataset: str, category: str) -> Path:
    """A local MVTec-layout folder for one category."""
    entry = config.dataset(dataset)
    if entry.synthetic is not None:
        return ensure_category(entry.synthetic, category, config.cache_path)
    if entry.path is None:
        raise SpecError(
            f"dataset {dataset!r} is not available on this machine: declare it in viadk8s.yaml as "
            f"'datasets: {{{dataset}: {{path: DIR}}}}' (DIR in MVTec layout)"
        )
    allowed = categories(config, dataset)
    if category not in allowed:
        raise one_of(f"category of dataset {dataset}", category, allowed)
    return Path(entry.path).expanduser() / category

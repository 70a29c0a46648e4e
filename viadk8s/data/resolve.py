"""Where a dataset category comes from on this machine: generated, a declared folder, or a
mirror in the store staged into the node cache."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from viadk8s import catalog
from viadk8s.catalog import DatasetEntry
from viadk8s.config import Config
from viadk8s.data.layout import discover_categories
from viadk8s.data.mirror import Manifest, read_manifest
from viadk8s.data.staging import stage
from viadk8s.data.synthetic import ensure_category
from viadk8s.errors import SpecError, one_of
from viadk8s.store import Store


class Datasets:
    """The datasets a config and its store make available (the store is opened only if needed)."""

    def __init__(self, config: Config, store: Store | None = None) -> None:
        self.config = config
        self._store = store
        self._manifests: dict[str, Manifest | None] = {}

    @cached_property
    def store(self) -> Store:
        return self._store or self.config.open_store()

    def manifest(self, key: str) -> Manifest | None:
        if key not in self._manifests:
            self._manifests[key] = read_manifest(self.store, key)
        return self._manifests[key]

    def _declared(self, key: str) -> bool:
        return key in catalog.datasets() or key in self.config.datasets

    def entry(self, key: str) -> DatasetEntry:
        """Catalog and config first; a dataset only mirrored in the store is known by its manifest."""
        if self._declared(key):
            return self.config.dataset(key)
        manifest = self.manifest(key)
        if manifest is None:
            raise one_of("dataset", key, self.config.dataset_keys())
        return DatasetEntry(key=key, name=key, masks=manifest.masks, categories=list(manifest.categories))

    def is_available(self, key: str) -> bool:
        """Generated, declared with a folder, or mirrored in the store."""
        entry = self.entry(key)
        return entry.synthetic is not None or entry.path is not None or self.manifest(key) is not None

    def categories(self, key: str) -> list[str]:
        """The catalog's categories, those of the mirror, or those found in a user's folder."""
        entry = self.entry(key)
        if entry.path is not None and not entry.categories:
            found = discover_categories(Path(entry.path).expanduser())
            if not found:
                raise SpecError(f"dataset folder {entry.path!r} has no category with train/good (MVTec layout expected)")
            return found
        return list(entry.categories)

    def resolve(self, key: str, category: str) -> Path:
        """A local MVTec-layout folder for one category, staging it from the store if needed."""
        entry = self.entry(key)
        if entry.synthetic is not None:
            return ensure_category(entry.synthetic, category, self.config.cache_path)
        allowed = self.categories(key)
        if category not in allowed:
            raise one_of(f"category of dataset {key}", category, allowed)
        if entry.path is not None:
            return Path(entry.path).expanduser() / category
        manifest = self.manifest(key)
        if manifest is None or category not in manifest.categories:
            raise SpecError(
                f"dataset {key!r} is not available on this machine: declare it in viadk8s.yaml as "
                f"'datasets: {{{key}: {{path: DIR}}}}' (DIR in MVTec layout) or mirror it with "
                f"'viadk8s datasets upload {key} --from DIR'"
            )
        cap = int(self.config.cache_max_gb * 2**30) if self.config.cache_max_gb else None
        return stage(self.store, manifest, category, self.config.cache_path, cap)[0]

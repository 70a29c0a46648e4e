"""Datasets (and pretrained weights) mirrored in the store: tar archives plus a manifest.

``datasets/<name>/<category>-<sha12>.tar[.gz]`` archives are content-addressed and uploaded
first; ``datasets/<name>/manifest.json`` (sha256, bytes, file counts) is written last, so a
reader never sees a manifest pointing at a missing or partial archive. The weights mirror
(:mod:`viadk8s.worker.weights`) uses the same archives, upload and verification.
"""

from __future__ import annotations

import hashlib
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from viadk8s.data.check import check_dataset, refuse_errors
from viadk8s.data.layout import discover_categories, has_pixel_masks, scan_category
from viadk8s.errors import SpecError
from viadk8s.store import Store

CHUNK = 4 * 2**20


class Archive(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    key: str
    sha256: str
    bytes: int
    files: int
    compression: Literal["none", "gzip"]


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    masks: Literal["pixel", "image"]
    categories: dict[str, Archive]
    updated: str

    @property
    def total_bytes(self) -> int:
        return sum(a.bytes for a in self.categories.values())


def manifest_key(name: str) -> str:
    return f"datasets/{name}/manifest.json"


def read_manifest(store: Store, name: str) -> Manifest | None:
    key = manifest_key(name)
    return Manifest.model_validate_json(store.read_bytes(key)) if store.exists(key) else None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _normalised(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Same bytes for the same files: no owner or time in the archive."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def _archive(files: list[Path], base: Path, out: Path, compress: bool) -> None:
    """``files`` named relative to ``base``; links are stored as the files they point to (a Hugging
    Face cache links its snapshots to blobs), so extraction never has to follow a link."""
    with tarfile.open(out, "w:gz" if compress else "w", dereference=True) as tar:
        for path in files:
            tar.add(path, arcname=str(path.relative_to(base)), filter=_normalised)


def upload_archive(store: Store, files: list[Path], base: Path, key_stem: str, work: Path, compress: bool = False) -> Archive:
    """Archive ``files`` (named relative to ``base``) and upload it as ``<key_stem>-<sha12>.tar[.gz]``."""
    suffix = ".tar.gz" if compress else ".tar"
    local = work / f"{Path(key_stem).name}{suffix}"
    _archive(files, base, local, compress)
    digest = sha256_file(local)
    key = f"{key_stem}-{digest[:12]}{suffix}"
    store.upload(key, local)
    size = local.stat().st_size
    local.unlink()
    return Archive(key=key, sha256=digest, bytes=size, files=len(files), compression="gzip" if compress else "none")


def upload_dataset(store: Store, name: str, source: Path, compress: bool = False) -> Manifest:
    """Mirror an MVTec-layout folder; categories already mirrored and not in ``source`` are kept."""
    categories = discover_categories(source)
    if not categories:
        raise SpecError(f"dataset folder {str(source)!r} has no category with train/good (MVTec layout expected)")
    refuse_errors(check_dataset(source))  # every image and mask opened once, before anything is uploaded
    scanned = {c: scan_category(source / c) for c in categories}
    masks: Literal["pixel", "image"] = "pixel" if all(has_pixel_masks(s) for s in scanned.values()) else "image"
    existing = read_manifest(store, name)
    archives = dict(existing.categories) if existing else {}
    with tempfile.TemporaryDirectory(prefix="viadk8s-upload-") as work:
        for category in categories:
            files = sorted(p for p in (source / category).rglob("*") if p.is_file() and not p.name.startswith("."))
            archives[category] = upload_archive(store, files, source, f"datasets/{name}/{category}", Path(work), compress)
    manifest = Manifest(
        name=name,
        masks=masks if not existing or existing.masks == masks else "image",
        categories=dict(sorted(archives.items())),
        updated=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    store.write_bytes(manifest_key(name), manifest.model_dump_json(indent=2).encode())
    return manifest


def verify_dataset(store: Store, name: str) -> list[str]:
    """Download every archive and check it against the manifest; returns the problems found."""
    manifest = read_manifest(store, name)
    if manifest is None:
        raise SpecError(
            f"dataset {name!r} is not mirrored in {store.uri}; mirror it with 'viadk8s datasets upload {name} --from DIR'"
        )
    return verify_archives(store, manifest.categories)


def verify_archives(store: Store, archives: dict[str, Archive]) -> list[str]:
    """Download each archive and check its sha256 and file count; returns one line per problem."""
    problems = []
    with tempfile.TemporaryDirectory(prefix="viadk8s-verify-") as work:
        for name, archive in archives.items():
            local = Path(work) / "archive"
            store.download(archive.key, local)
            digest = sha256_file(local)
            if digest != archive.sha256:
                problems.append(f"{name}: sha256 {digest[:12]}… does not match the manifest's {archive.sha256[:12]}…")
                continue
            with tarfile.open(local) as tar:
                files = sum(1 for member in tar if member.isfile())
            if files != archive.files:
                problems.append(f"{name}: {files} files, the manifest says {archive.files}")
    return problems

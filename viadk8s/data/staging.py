"""Stage a mirrored category into a node cache, once per node, safely under concurrency.

``<cache>/datasets/<name>/<sha16>/<category>/…`` is shared by every pod of a node (hostPath or
PVC). An exclusive file lock makes concurrent pods download an archive once; the archive is
verified (sha256) before it is extracted into a temporary folder and renamed into place. A
worker keeps a shared lock on what it uses for its lifetime, so least-recently-used eviction
(to respect a size cap) never removes a category under a running worker.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tarfile
import time
from pathlib import Path

from viadk8s.data.mirror import Manifest, sha256_file
from viadk8s.errors import SpecError
from viadk8s.store import Store

log = logging.getLogger(__name__)
USED = ".used"  # touched on every use: the LRU clock
SIZE = ".bytes"
_held: dict[Path, int] = {}  # entry -> its shared lock, kept until the process exits


def _lock(path: Path, mode: int) -> int | None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _entry_size(entry: Path) -> int:
    try:
        return int((entry / SIZE).read_text())
    except (OSError, ValueError):
        return sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())


def evict(cache: Path, need: int, max_bytes: int) -> None:
    """Remove least-recently-used entries nobody holds until ``need`` more bytes fit."""
    root = cache / "datasets"
    entries = [e for e in root.glob("*/*") if e.is_dir() and not e.name.startswith(".")]
    total = sum(_entry_size(e) for e in entries)
    for entry in sorted(entries, key=lambda e: (e / USED).stat().st_mtime if (e / USED).exists() else 0):
        if total + need <= max_bytes:
            return
        fd = _lock(root / ".locks" / f"{entry.parent.name}-{entry.name}.lock", fcntl.LOCK_EX | fcntl.LOCK_NB)
        if fd is None:
            continue  # in use by another worker
        try:
            size = _entry_size(entry)
            shutil.rmtree(entry, ignore_errors=True)
            total -= size
            log.info("cache: evicted %s (%d MB)", entry, size // 2**20)
        finally:
            os.close(fd)
    if total + need > max_bytes:
        log.warning(
            "cache: %d MB needed, cap %d MB, everything else is in use; staging anyway", need // 2**20, max_bytes // 2**20
        )


def stage(store: Store, manifest: Manifest, category: str, cache: Path, max_bytes: int | None = None) -> tuple[Path, bool]:
    """The local folder of a mirrored category, and whether this call downloaded it."""
    archive = manifest.categories[category]
    root = cache / "datasets"
    entry = root / manifest.name / archive.sha256[:16]
    if entry in _held:  # this process staged it already (and holds it)
        return entry / category, False
    fd = _lock(root / ".locks" / f"{manifest.name}-{entry.name}.lock", fcntl.LOCK_EX)
    assert fd is not None
    downloaded = False
    try:
        if not (entry / category).is_dir():
            if max_bytes:
                evict(cache, 2 * archive.bytes, max_bytes)
            _download_and_extract(store, archive.key, archive.sha256, entry)
            downloaded = True
        (entry / USED).touch()
        fcntl.flock(fd, fcntl.LOCK_SH)  # keep using it; others may use it too, nobody evicts it
        _held[entry] = fd
    except BaseException:
        os.close(fd)
        raise
    return entry / category, downloaded


def _download_and_extract(store: Store, key: str, sha256: str, entry: Path) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    download = entry.parent / f".{entry.name}.{os.getpid()}.download"
    extract = entry.parent / f".{entry.name}.{os.getpid()}.extract"
    start = time.perf_counter()
    try:
        store.download(key, download)
        digest = sha256_file(download)
        if digest != sha256:
            raise SpecError(
                f"archive {store.uri}/{key} is corrupt: sha256 {digest[:12]}… does not match the manifest's "
                f"{sha256[:12]}…; removed from the cache, re-upload it with 'viadk8s datasets upload'"
            )
        with tarfile.open(download) as tar:
            tar.extractall(extract, filter="data")  # refuses absolute paths, '..' and links out of the folder
        (extract / SIZE).write_text(str(sum(p.stat().st_size for p in extract.rglob("*") if p.is_file())))
        shutil.rmtree(entry, ignore_errors=True)  # a leftover from a crash, never a complete entry
        extract.rename(entry)
        log.info("cache: staged %s in %.1f s", key, time.perf_counter() - start)
    finally:
        download.unlink(missing_ok=True)
        shutil.rmtree(extract, ignore_errors=True)

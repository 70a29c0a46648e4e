"""Stage a mirrored category into a node cache, once per node, safely under concurrency.

``<cache>/datasets/<name>/<sha16>/<category>/…`` is shared by every pod of a node (hostPath or
PVC). An exclusive file lock makes concurrent pods download an archive once; the archive is
verified (sha256) before it is extracted into a temporary folder and renamed into place. A
worker keeps a shared lock on what it uses for its lifetime, so least-recently-used eviction
(to respect a size cap) never removes a category under a running worker.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

from viadk8s.data.mirror import Manifest, sha256_file
from viadk8s.errors import InfraError, SpecError
from viadk8s.store import Store

log = logging.getLogger(__name__)
USED = ".used"  # touched on every use: the LRU clock
SIZE = ".bytes"
_held: dict[Path, int] = {}  # entry -> its shared lock, kept until the process exits


def file_lock(path: Path, mode: int) -> int | None:
    """An open, ``flock``-ed file descriptor; None when ``LOCK_NB`` is asked and someone holds it."""
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
        fd = file_lock(root / ".locks" / f"{entry.parent.name}-{entry.name}.lock", fcntl.LOCK_EX | fcntl.LOCK_NB)
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
    fd = file_lock(root / ".locks" / f"{manifest.name}-{entry.name}.lock", fcntl.LOCK_EX)
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
    with verified_extract(store, key, sha256, entry, "viadk8s datasets upload") as extract:
        (extract / SIZE).write_text(str(sum(p.stat().st_size for p in extract.rglob("*") if p.is_file())))
        shutil.rmtree(entry, ignore_errors=True)  # a leftover from a crash, never a complete entry
        extract.rename(entry)


@contextlib.contextmanager
def verified_extract(store: Store, key: str, sha256: str, target: Path, upload_command: str) -> Iterator[Path]:
    """Download an archive, check its sha256 and extract it into a temporary folder beside ``target``
    (one file system: the caller renames what it needs into place, atomically). The download and the
    folder are removed on exit, whatever happens; a full disk is an infrastructure error."""
    download = target.parent / f".{target.name}.{os.getpid()}.download"
    extract = target.parent / f".{target.name}.{os.getpid()}.extract"
    start = time.perf_counter()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        store.download(key, download)
        digest = sha256_file(download)
        if digest != sha256:
            raise SpecError(
                f"archive {store.uri}/{key} is corrupt: sha256 {digest[:12]}… does not match the manifest's "
                f"{sha256[:12]}…; removed from the cache, re-upload it with '{upload_command}'"
            )
        with tarfile.open(download) as tar:
            tar.extractall(extract, filter="data")  # refuses absolute paths, '..' and links out of the folder
        yield extract
        log.info("cache: staged %s in %.1f s", key, time.perf_counter() - start)
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise InfraError(f"no space left in {target.parent} while staging {store.uri}/{key}; nothing was kept") from None
    finally:
        download.unlink(missing_ok=True)
        shutil.rmtree(extract, ignore_errors=True)

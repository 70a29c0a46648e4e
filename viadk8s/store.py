"""Object storage for sweeps and results, behind one small API.

Every write is atomic (a temporary name, then a rename), so a crash never leaves a half-written
object under its final key. ``result.json`` is written last and is the run's commit marker.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from viadk8s.errors import SpecError


class Store(Protocol):
    uri: str

    def exists(self, key: str) -> bool: ...
    def read_bytes(self, key: str) -> bytes: ...
    def write_bytes(self, key: str, data: bytes) -> str: ...  # returns the version versions() lists
    def upload(self, key: str, path: Path) -> None: ...
    def download(self, key: str, path: Path) -> None: ...
    def list(self, prefix: str) -> Iterator[str]: ...
    def versions(self, prefix: str) -> dict[str, str]: ...
    def local_path(self, key: str) -> Path | None: ...
    def move(self, key: str, new_key: str) -> None: ...


class FileStore:
    """A folder on a local or shared file system."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = f"file://{root}"

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise SpecError(f"store key {key!r} escapes the store")
        return path

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def write_bytes(self, key: str, data: bytes) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return _version(path)

    def upload(self, key: str, path: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.copyfile(path, temporary)
        os.replace(temporary, target)

    def download(self, key: str, path: Path) -> None:
        shutil.copyfile(self._path(key), path)

    def versions(self, prefix: str) -> dict[str, str]:
        """Files under a prefix (temporary ones excepted) with a version: modification time and size."""
        base = self._path(prefix)
        if not base.is_dir():
            return {}
        found = {}
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                found[str(path.relative_to(self.root))] = _version(path)
        return found

    def list(self, prefix: str) -> Iterator[str]:
        return iter(self.versions(prefix))

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def move(self, key: str, new_key: str) -> None:
        os.replace(self._path(key), self._path(new_key))


def _version(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_mtime_ns}-{stat.st_size}"


def open_store(uri: str, addressing_style: str = "auto", max_attempts: int = 5) -> Store:
    """A store from its URI: ``file://DIR`` or ``s3://BUCKET[/PREFIX]``."""
    if uri.startswith("file://"):
        return FileStore(Path(uri.removeprefix("file://")))
    if uri.startswith("s3://"):
        from viadk8s.s3 import S3Store

        return S3Store(uri, addressing_style, max_attempts)
    scheme = uri.split("://", 1)[0]
    raise SpecError(f"store {uri!r}: scheme {scheme!r} is not supported; allowed: file://DIR, s3://BUCKET[/PREFIX]")

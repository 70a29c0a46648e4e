"""The node cache: least-recently-used eviction under a size cap never removes what a worker holds."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import TINY
from viadk8s.catalog import SyntheticOptions
from viadk8s.data.mirror import upload_dataset
from viadk8s.data.synthetic import ensure_category
from viadk8s.store import FileStore

STAGE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from viadk8s.data.mirror import read_manifest
    from viadk8s.data.staging import stage
    from viadk8s.store import open_store
    store = open_store(sys.argv[1])
    path, downloaded = stage(store, read_manifest(store, "mine"), sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))
    print(path, downloaded, flush=True)
    if sys.argv[5] == "hold":
        sys.stdin.read()  # a running worker: keeps its shared lock until its stdin closes
    """
)


def stage(store: FileStore, category: str, cache: Path, cap: int, hold: bool = False) -> subprocess.Popen[str]:
    args = [sys.executable, "-c", STAGE, store.uri, category, str(cache), str(cap), "hold" if hold else "exit"]
    return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def staged(proc: subprocess.Popen[str]) -> Path:
    line = proc.stdout.readline() if proc.stdout else ""
    assert line, proc.stderr.read() if proc.stderr else ""
    return Path(line.split()[0])


def test_lru_eviction_under_a_cap_spares_held_categories(tmp_path: Path) -> None:
    options = SyntheticOptions(**TINY)
    (tmp_path / "src").mkdir()
    for category in options.categories:
        ensure_category(options, category, tmp_path / "gen").rename(tmp_path / "src" / category)
    store = FileStore(tmp_path / "store")
    manifest = upload_dataset(store, "mine", tmp_path / "src")
    cap = int(2.5 * max(a.bytes for a in manifest.categories.values()))  # room for one category and a download
    cache = tmp_path / "cache"

    first = stage(store, "tiles", cache, cap)
    tiles = staged(first)
    assert first.wait(60) == 0 and tiles.is_dir()  # that worker has finished: its category may go
    second = stage(store, "fabric", cache, cap, hold=True)
    fabric = staged(second)
    assert fabric.is_dir() and not tiles.exists()  # least recently used, nobody holds it: evicted

    third = stage(store, "tiles", cache, cap)
    assert staged(third).is_dir() and fabric.is_dir()  # held by the running worker: kept, over the cap
    assert third.wait(60) == 0 and "everything else is in use" in (third.stderr.read() if third.stderr else "")
    second.communicate("", timeout=60)

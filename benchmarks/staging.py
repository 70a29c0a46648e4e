"""Dataset staging against a real S3 server (SeaweedFS on 127.0.0.1); aggregation is aggregation.py.

Measured in this run:
* cold staging of a ~200 MB category by viadk8s vs ``s5cmd cp`` + ``tar x`` (target ratio <= 1.2);
* a warm cache hit in a fresh process (target < 0.2 s).

    python benchmarks/staging.py [--mb 200] [--repeats 3]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from PIL import Image
from table import Row, limit_row, ratio_row, run_alone

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.servers: the same servers the tests use

from tests.servers import BUCKET, seaweedfs  # noqa: E402
from viadk8s.data.mirror import read_manifest, upload_dataset  # noqa: E402
from viadk8s.store import open_store  # noqa: E402

WARM = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from viadk8s.data.mirror import read_manifest
    from viadk8s.data.staging import stage
    from viadk8s.store import open_store
    store = open_store(sys.argv[1], "path")
    manifest = read_manifest(store, "bench")
    start = time.perf_counter()
    path, downloaded = stage(store, manifest, "big", Path(sys.argv[2]))
    print(time.perf_counter() - start, downloaded)
    """
)


def make_category(root: Path, megabytes: int) -> Path:
    """Incompressible 512 px images in MVTec layout, about ``megabytes`` in total."""
    rng = np.random.default_rng(0)
    category = root / "bench" / "big"
    count = max(4, megabytes * 2**20 // (512 * 512 * 3))
    for i in range(count):
        folder = ["train/good", "test/good", "test/bad"][0 if i < count * 0.6 else 1 if i < count * 0.8 else 2]
        path = category / folder / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(path, compress_level=0)
        if folder == "test/bad":
            mask = category / "ground_truth" / "bad" / f"{i:04d}_mask.png"
            mask.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((512, 512), np.uint8)).save(mask)
    return root / "bench"


def measure(mb: int = 200, repeats: int = 3) -> list[Row]:
    """The staging rows (see the module's docstring)."""
    work = Path(tempfile.mkdtemp(prefix="viadk8s-bench-"))
    with seaweedfs(work / "s3") as server:
        os.environ.update(server.env)
        env = {**os.environ}
        store_uri = f"s3://{BUCKET}/bench"
        store = open_store(store_uri, "path")
        manifest = upload_dataset(store, "bench", make_category(work / "src", mb))
        archive = manifest.categories["big"]
        s5cmd = shutil.which("s5cmd", path=str(Path(sys.executable).parent)) or "s5cmd"
        ours, baseline = [], []
        for _ in range(repeats):
            cache = work / "cache"
            shutil.rmtree(cache, ignore_errors=True)
            out = subprocess.run(
                [sys.executable, "-c", WARM, store_uri, str(cache)], check=True, capture_output=True, text=True, env=env
            )
            ours.append(float(out.stdout.split()[0]))
            target = work / "s5"
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            start = time.perf_counter()
            subprocess.run(
                [s5cmd, "--endpoint-url", server.endpoint, "cp", f"s3://{BUCKET}/bench/{archive.key}", str(target / "a.tar")],
                check=True,
                capture_output=True,
                env=env,
            )
            subprocess.run(["tar", "xf", str(target / "a.tar"), "-C", str(target)], check=True)
            baseline.append(time.perf_counter() - start)
        warm = subprocess.run(
            [sys.executable, "-c", WARM, store_uri, str(work / "cache")], check=True, capture_output=True, text=True, env=env
        ).stdout.split()
        if read_manifest(store, "bench") is None:
            sys.exit("the benchmark's manifest is missing from the store it was uploaded to")
    shutil.rmtree(work, ignore_errors=True)
    size = f"{archive.files} files, {archive.bytes / 2**20:.0f} MB archive"
    return [
        ratio_row(
            f"cold staging s of a category ({size}): viadk8s (download + sha256 + extract) vs s5cmd cp + tar x",
            "s5cmd + tar",
            min(baseline),
            min(ours),
            1.2,
            f"best of {repeats}",
        ),
        limit_row("warm cache hit s, fresh process", float(warm[0]), 0.2, note=f"downloaded={warm[1]}"),
    ]


if __name__ == "__main__":
    run_alone(measure, __doc__)

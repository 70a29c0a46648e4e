"""Dataset staging and result aggregation against a real S3 server (SeaweedFS on 127.0.0.1).

Prints, all measured in this run:
* cold staging of a ~200 MB category by viadk8s vs ``s5cmd cp`` + ``tar x`` (target ratio <= 1.2);
* a warm cache hit in a fresh process (target < 0.2 s);
* aggregation of 10,000 synthetic results from a file store and from S3, first and again after
  a few more runs finished (target < 5 s).

    python benchmarks/staging.py [--mb 200] [--results 10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.servers: the same servers the tests use

from tests.servers import BUCKET, seaweedfs  # noqa: E402
from viadk8s.aggregate import tables  # noqa: E402
from viadk8s.data.mirror import read_manifest, upload_dataset  # noqa: E402
from viadk8s.results import RESULT, DataSummary, RunResult, Timings, load_results, run_prefix  # noqa: E402
from viadk8s.spec import RunSpec  # noqa: E402
from viadk8s.store import FileStore, Store, open_store  # noqa: E402

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


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, capture_output=True)
    return time.perf_counter() - start


def fake_results(store: Store, count: int, first: int = 0) -> None:
    """``count`` committed results of a plausible sweep (values are random, shape is real)."""
    rng = np.random.default_rng(1)
    models, datasets = ["patchcore", "padim", "fastflow", "reverse_distillation"], ["visa", "mpdd", "btad", "realiad"]

    def one(i: int) -> None:
        spec = RunSpec(
            sweep="bench",
            experiment="evaluation",
            model=models[i % 4],
            dataset=datasets[(i // 4) % 4],
            category=f"c{(i // 16) % 25}",
            seed=i // 400,
        )
        metrics = {
            m: float(rng.uniform(0.5, 1.0))
            for m in ("image_AUROC", "image_F1Max", "pixel_AUROC", "pixel_AUPRO", "pixel_F1Max", "image_PG2", "image_PB2")
        }
        result = RunResult(
            run_key=spec.run_key,
            spec=spec,
            metrics=metrics,
            epochs=1,
            device="cpu",
            versions={},
            timings=Timings(fit_s=1, test_s=1, test_images_per_s=1, peak_memory_mb=1, memory_kind="cpu_rss"),
            data=DataSummary(n_train=1, n_test_good=1, n_test_bad=1, pixel_masks=True),
            finished_at="now",
        )
        store.write_bytes(f"{run_prefix(spec)}/{RESULT}", result.model_dump_json().encode())

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(one, range(first, first + count)))


def aggregate_seconds(store: Store) -> tuple[float, int]:
    start = time.perf_counter()
    results = load_results(store, sweep_id="bench")
    tables(results, ["image_AUROC", "pixel_AUPRO", "image_PG2"])
    return time.perf_counter() - start, len(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--results", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="viadk8s-bench-"))
    with seaweedfs(work / "s3") as server:
        os.environ.update(server.env)
        env = {**os.environ}
        store_uri = f"s3://{BUCKET}/bench"
        store = open_store(store_uri, "path")
        manifest = upload_dataset(store, "bench", make_category(work / "src", args.mb))
        archive = manifest.categories["big"]
        print(f"category: {archive.files} files, {archive.bytes / 2**20:.0f} MB archive")
        s5cmd = shutil.which("s5cmd", path=str(Path(sys.executable).parent)) or "s5cmd"
        ours, baseline = [], []
        for _ in range(args.repeats):
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
        print(
            f"cold staging: viadk8s {min(ours):.2f} s (download + sha256 + extract), s5cmd+tar {min(baseline):.2f} s, "
            f"ratio {min(ours) / min(baseline):.2f} (target <= 1.2)"
        )
        warm = subprocess.run(
            [sys.executable, "-c", WARM, store_uri, str(work / "cache")], check=True, capture_output=True, text=True, env=env
        ).stdout.split()
        print(f"warm cache hit: {float(warm[0]):.3f} s, downloaded={warm[1]} (target < 0.2 s)")
        assert read_manifest(store, "bench") is not None
        local = FileStore(work / "results")
        fake_results(local, args.results)
        seconds, count = aggregate_seconds(local)
        print(f"aggregate {count} results from a file store: {seconds:.2f} s (target < 5 s)")
        remote = open_store(f"s3://{BUCKET}/results", "path")
        fake_results(remote, args.results)
        seconds, count = aggregate_seconds(remote)
        print(f"aggregate {count} results from S3, first time (every result fetched): {seconds:.2f} s (target < 5 s)")
        fake_results(remote, args.results // 100, first=args.results)  # a few runs finish meanwhile
        seconds, count = aggregate_seconds(remote)
        new = args.results // 100
        print(f"aggregate {count} results from S3 again, {new} new (snapshot + new ones): {seconds:.2f} s (target < 5 s)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

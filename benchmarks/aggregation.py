"""Aggregation of 10,000 results (load + tables) from a file store and from S3 (SeaweedFS on 127.0.0.1).

Results are committed as the worker commits them (:func:`viadk8s.results.commit_result`, 32 at a
time, so writers race on the index shards as finishing pods do). Measured in this run:

* a file store (target < 5 s);
* S3, first aggregation, through the index the writers keep (target < 5 s), against the same
  results written without an index (as before it: every result fetched with boto3, 32 at a time);
* S3 again after 1 % more runs finished (target < 5 s).

    python benchmarks/aggregation.py [--results 10000]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from table import Row, limit_row, run_alone

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.servers: the same servers the tests use

from tests.servers import BUCKET, seaweedfs  # noqa: E402
from viadk8s.aggregate import tables  # noqa: E402
from viadk8s.results import INDEX, RESULT, DataSummary, RunResult, Timings, commit_result, load_results, run_prefix  # noqa: E402
from viadk8s.spec import RunSpec  # noqa: E402
from viadk8s.store import FileStore, Store, open_store  # noqa: E402


def fake_result(i: int, rng: np.random.Generator) -> RunResult:
    """Result ``i`` of a plausible sweep (values are random, shape is real)."""
    models, datasets = ["patchcore", "padim", "fastflow", "reverse_distillation"], ["visa", "mpdd", "btad", "realiad"]
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
    return RunResult(
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


def fake_results(store: Store, count: int, first: int = 0, indexed: bool = True) -> None:
    """``count`` results committed by 32 writers at once; ``indexed=False`` writes them as before the index."""
    rng = np.random.default_rng(1)

    def write(result: RunResult) -> None:
        if indexed:
            commit_result(store, result)
        else:
            store.write_bytes(f"{run_prefix(result.spec)}/{RESULT}", result.model_dump_json(indent=2).encode())

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(write, [fake_result(i, rng) for i in range(first, first + count)]))


def aggregate(store: Store) -> tuple[float, int, str]:
    """Seconds to load the sweep and make its tables, results loaded, and a note: the seconds of
    each part and how many results were fetched one by one (not from the index)."""
    fetched = []
    read_bytes = store.read_bytes
    store.read_bytes = lambda key: (fetched.append(key) if f"/{INDEX}/" not in key else None) or read_bytes(key)  # type: ignore[method-assign]
    start = time.perf_counter()
    results = load_results(store, sweep_id="bench")
    loaded = time.perf_counter()
    tables(results, ["image_AUROC", "pixel_AUPRO", "image_PG2"])
    seconds = time.perf_counter() - start
    store.read_bytes = read_bytes  # type: ignore[method-assign]
    note = f"load_results {loaded - start:.2f} s + tables {seconds - (loaded - start):.2f} s; {len(fetched):,} fetched one by one"
    return seconds, len(results), note


def measure(results: int = 10_000) -> list[Row]:
    """The aggregation rows (see the module's docstring)."""
    with tempfile.TemporaryDirectory(prefix="viadk8s-bench-aggregation-") as tmp:
        local = FileStore(Path(tmp) / "results")
        fake_results(local, results)
        file_s, file_n, file_note = aggregate(local)
        with seaweedfs(Path(tmp) / "s3") as server:
            os.environ.update(server.env)
            before = open_store(f"s3://{BUCKET}/unindexed", "path")
            fake_results(before, results, indexed=False)
            before_s, before_n, before_note = aggregate(before)
            remote = open_store(f"s3://{BUCKET}/results", "path")
            fake_results(remote, results)
            first_s, first_n, first_note = aggregate(remote)
            new = results // 100
            fake_results(remote, new, first=results)  # a few runs finish meanwhile
            again_s, again_n, again_note = aggregate(remote)
    return [
        limit_row(f"aggregate {file_n:,} results from a file store, s", file_s, 5, note=file_note.split(";")[0]),
        limit_row(
            f"aggregate {first_n:,} results from S3, first time (writers' index), s",
            first_s,
            5,
            baseline=f"no index (each result fetched by boto3, 32 threads): {before_s:.2f} s for {before_n:,}",
            note=f"{first_note} (index entries lost to racing writers); ratio to no index {first_s / before_s:.3f}; "
            f"without the index: {before_note}",
        ),
        limit_row(
            f"aggregate {again_n:,} results from S3 again, {new} new, s",
            again_s,
            5,
            note=again_note,
        ),
    ]


if __name__ == "__main__":
    run_alone(measure, __doc__)

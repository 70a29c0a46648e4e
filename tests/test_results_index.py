"""Aggregation from S3 through the writers' index, on a real S3 server (SeaweedFS): committed
results are read from a few index shards instead of one GET each, and the index never decides what
a result says: changed, removed, unindexed or concurrently written results are all seen as stored."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.checks import made_up_result
from tests.servers import BUCKET, S3Server
from viadk8s.results import INDEX, RESULT, RunResult, commit_result, load_results, run_prefix
from viadk8s.spec import RunSpec
from viadk8s.store import FileStore, Store, open_store


@pytest.fixture
def store(s3: S3Server, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Store:
    """A fresh prefix of the bucket per test."""
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    return open_store(f"s3://{BUCKET}/{request.node.name.replace('[', '-').replace(']', '')}", "path")


def result(category: str, auroc: float, seed: int = 1) -> RunResult:
    spec = RunSpec(sweep="idx", experiment="evaluation", model="padim", dataset="synthetic", category=category, seed=seed)
    return made_up_result(spec, auroc)


def key_of(run: RunResult) -> str:
    return f"{run_prefix(run.spec)}/{RESULT}"


def counting_reads(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    reads: list[str] = []
    read_bytes = store.read_bytes
    monkeypatch.setattr(store, "read_bytes", lambda key: reads.append(key) or read_bytes(key))
    return reads


def aurocs(store: Store) -> dict[str, float]:
    return {r.spec.category: r.metrics["image_AUROC"] for r in load_results(store, "idx")}


def test_committed_results_are_read_from_the_index_alone(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = [result(f"c{i}", i / 100) for i in range(40)]
    for run in runs:
        commit_result(store, run)
    reads = counting_reads(store, monkeypatch)
    loaded = {r.run_key: r for r in load_results(store, "idx")}
    assert loaded == {r.run_key: r for r in runs}  # every field as committed
    assert reads and all(f"/{INDEX}/" in key for key in reads)  # no result fetched one by one
    assert len(reads) == len({r.run_key[:2] for r in runs}) < len(runs)  # one GET per shard


def test_changed_removed_and_unindexed_results_are_seen(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    for i, category in enumerate(("a", "b", "c", "d")):
        commit_result(store, result(category, 0.5 + i / 10))
    commit_result(store, result("a", 0.95))  # rewritten through the index
    bypass = result("b", 0.11)  # written by an older viadk8s, or its index update was lost
    store.write_bytes(key_of(bypass), bypass.model_dump_json().encode())
    late = result("e", 0.42)
    store.write_bytes(key_of(late), late.model_dump_json().encode())
    store.client.delete_object(Bucket=BUCKET, Key=f"{store.prefix}/{key_of(result('c', 0))}")  # type: ignore[attr-defined]
    reads = counting_reads(store, monkeypatch)
    assert aurocs(store) == {"a": 0.95, "b": 0.11, "d": 0.8, "e": 0.42}
    assert sorted(k for k in reads if f"/{INDEX}/" not in k) == sorted([key_of(bypass), key_of(late)])  # only those fetched
    reads.clear()
    assert aurocs(store) == {"a": 0.95, "b": 0.11, "d": 0.8, "e": 0.42}
    assert all(f"/{INDEX}/" in key for key in reads)  # the aggregation repaired the index


def test_results_committed_concurrently_are_never_lost(store: Store) -> None:
    """Many writers race on the same shards: some index entries are lost, no result is."""
    runs = [result(f"k{i}", round(0.3 + i / 1000, 3), seed=i % 3) for i in range(150)]
    with ThreadPoolExecutor(48) as pool:
        list(pool.map(lambda run: commit_result(store, run), runs))
    loaded = {(r.spec.category, r.spec.seed): r.metrics["image_AUROC"] for r in load_results(store, "idx")}
    assert loaded == {(r.spec.category, r.spec.seed): r.metrics["image_AUROC"] for r in runs}


def test_an_unreadable_index_costs_fetches_not_results(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    run = result("z", 0.77)
    commit_result(store, run)
    shard = f"runs/idx/{INDEX}/{run.run_key[:2]}.json"
    store.write_bytes(shard, b'{"runs/idx/')  # a truncated write
    with caplog.at_level(logging.WARNING):
        assert aurocs(store) == {"z": 0.77}
    assert any(f"results index {shard} is unreadable" in r.getMessage() for r in caplog.records)
    reads = counting_reads(store, monkeypatch)
    assert aurocs(store) == {"z": 0.77} and reads == [shard]  # rewritten whole


def test_a_local_store_keeps_no_index(tmp_path: Path) -> None:
    local = FileStore(tmp_path / "store")
    run = result("tiles", 0.6)
    commit_result(local, run)
    assert [p.relative_to(tmp_path / "store").as_posix() for p in (tmp_path / "store").rglob("*") if p.is_file()] == [key_of(run)]
    assert load_results(local, "idx") == [run]

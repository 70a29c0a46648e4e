"""A store that holds surprises: an invalid result.json is never a finished run nor a crash, and a
result from a newer viadk8s (with fields this one does not know) is read."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.checks import made_up_result
from viadk8s.results import RESULT, RunResult, is_done, load_results, run_prefix
from viadk8s.spec import RunSpec
from viadk8s.store import FileStore


def _spec(category: str) -> RunSpec:
    return RunSpec(sweep="s", experiment="evaluation", model="padim", dataset="tiny", category=category, seed=1)


def _store(tmp_path: Path) -> tuple[FileStore, list[RunResult]]:
    store = FileStore(tmp_path / "store")
    results = [made_up_result(_spec(c)) for c in ("tiles", "fabric")]
    for result in results:
        store.write_bytes(f"{run_prefix(result.spec)}/{RESULT}", result.model_dump_json().encode())
    return store, results


def test_an_invalid_result_is_moved_aside_and_redone(tmp_path: Path) -> None:
    store, (tiles, fabric) = _store(tmp_path)
    key = f"{run_prefix(tiles.spec)}/{RESULT}"
    truncated = store.read_bytes(key)[:80]
    store.write_bytes(key, truncated)
    assert is_done(store, fabric.spec)
    assert not is_done(store, tiles.spec)  # a run would redo it
    (aside,) = (tmp_path / "store" / run_prefix(tiles.spec)).glob(f"{RESULT}.invalid-*")
    assert aside.read_bytes() == truncated and not store.exists(key)  # kept, under a name that says so
    assert not is_done(store, tiles.spec)


def test_newer_results_are_read_and_bad_ones_skipped(tmp_path: Path, caplog) -> None:  # noqa: ANN001
    store, (tiles, fabric) = _store(tmp_path)
    newer = json.loads(fabric.model_dump_json())
    newer["confidence_intervals"] = {"image_AUROC": [0.8, 0.95]}  # fields a later version adds
    newer["spec"]["trainer"]["precision"] = "bf16"
    newer["data"]["defects"] = {"scratch": 3}
    store.write_bytes(f"{run_prefix(fabric.spec)}/{RESULT}", json.dumps(newer).encode())
    store.write_bytes(f"{run_prefix(tiles.spec)}/{RESULT}", b'{"run_key": "x", "metrics": {}}')
    assert [r.spec.category for r in load_results(store, "s")] == ["fabric"]
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"warning: skipping {run_prefix(tiles.spec)}/{RESULT}: not a valid result")


def test_aggregate_warns_once_per_bad_key_and_goes_on(cli, tmp_path: Path) -> None:  # noqa: ANN001
    store, (tiles, fabric) = _store(tmp_path)
    (tmp_path / "store" / run_prefix(tiles.spec) / RESULT).write_text('{"run_key": ')  # a full disk's leftover
    config = tmp_path / "viadk8s.yaml"
    config.write_text(yaml.safe_dump({"store": str(tmp_path / "store")}))
    done = cli("aggregate", "--sweep", "s", "--config", str(config), "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert "(1 runs)" in done.stdout and "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.strip()]
    assert f"skipping {run_prefix(tiles.spec)}/{RESULT}: not JSON" in line

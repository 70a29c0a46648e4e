"""Per-run overhead of one worker process per run against a pack (``--pack``), measured in one run.

The same ``--runs`` runs of one model (seeds 1..N on a synthetic category, random weights) go
through the local backend twice, one at a time: as N processes and as one pack of N. A run's
overhead is what its process costs beyond the fit and test that ``result.json`` times (start,
imports, staging, weights, result upload): (wall - sum of fit_s + test_s) / N. Both sweeps share one
store whose MLflow database is created before either is timed. Target: packed overhead per run
at most half the unpacked one (imports alone are about 8 s a process).

    python benchmarks/packing.py [--runs 8] [--size 64] [--model patchcore]
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from pathlib import Path

import yaml
from rich.console import Console
from table import Row, figure_row, ratio_row, run_alone

from viadk8s.backends.local import run_plan
from viadk8s.config import load_config
from viadk8s.plan import Selection, plan
from viadk8s.results import load_results
from viadk8s.tracking import prepare_tracking


def _sweep(config_path: Path, sweep: str, runs: int, size: int, model: str, pack: int) -> tuple[float, float]:
    """Wall seconds of the sweep, and the seconds its results timed (fit + test)."""
    config = load_config(str(config_path))
    seeds = list(range(1, runs + 1))
    selection = Selection(models=[model], datasets=["bench"], seeds=seeds, image_sizes=[size], weights="random", sweep=sweep)
    planned = plan("evaluation", selection, config)
    if config.tracking_uri:
        prepare_tracking(config.tracking_uri, config.store_uri, "evaluation", sweep)
    start = time.perf_counter()
    outcome = run_plan(planned, config, str(config_path), 1, Console(file=io.StringIO()), pack)
    wall = time.perf_counter() - start
    if outcome.failed:
        failure = outcome.failed[0]
        raise SystemExit(f"{len(outcome.failed)} runs failed, e.g. exit {failure.exit_code}: {failure.reason} ({failure.log})")
    timed = sum(r.timings.fit_s + r.timings.test_s for r in load_results(config.open_store(), sweep_id=sweep))
    return wall, timed


def measure(runs: int = 8, size: int = 64, model: str = "patchcore") -> list[Row]:
    """Per-run overhead, one process per run vs one pack of ``runs`` (see the module's docstring)."""
    work = Path(tempfile.mkdtemp(prefix="viadk8s-bench-pack-"))
    options = {"categories": ["tiles"], "n_train": 10, "n_test_good": 6, "n_test_bad": 6, "size": size}
    config = work / "viadk8s.yaml"
    settings = {"store": str(work / "store"), "cache_dir": str(work / "cache"), "datasets": {"bench": {"synthetic": options}}}
    config.write_text(yaml.safe_dump(settings))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the workers inherit it: random weights, nothing to fetch
    single_wall, single_timed = _sweep(config, "single", runs, size, model, 1)
    packed_wall, packed_timed = _sweep(config, "packed", runs, size, model, runs)
    single, packed = (single_wall - single_timed) / runs, (packed_wall - packed_timed) / runs
    label = f"packing: {runs} {model} runs at {size} px, local backend"
    return [
        ratio_row(f"{label}, overhead s per run, one pack vs a process each", "a process each", single, packed, 0.5),
        ratio_row(f"{label}, wall s of the sweep", "a process each", single_wall, packed_wall, None),
        figure_row(f"{label}, fit + test s (timed by the results), packed / a process each", packed_timed / single_timed),
    ]


if __name__ == "__main__":
    run_alone(measure, __doc__)

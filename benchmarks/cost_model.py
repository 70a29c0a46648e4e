"""The cost model's relative error on a sweep it was not calibrated on (issue #23), local backend.

Calibration sweep: each model (default PatchCore and PaDiM, random weights, one epoch) at each of
``--sizes`` (64 and 96 px) on two synthetic datasets of different sizes (8 train and 4 + 4 test
images; 24 and 8 + 8: a fit needs different amounts of work per model and size to tell start-up
from per-image cost), category tiles, seed 1, one worker process at a time; ``viadk8s calibrate
--sweep`` fits it into a cost table.
Held-out sweep: the same models at ``--held-out-size`` (128 px) on a third dataset (16 train, 6 + 6
test images: counts inside the calibrated range), categories tiles and fabric (fabric never
calibrated), seed 2. 128 px was not calibrated (sizes are multiples of 32: none lies between 64 and
96): ``CostTable.lookup`` takes the nearest measured size, 96 px, and scales its per-image costs by
pixel area (× 16/9), start-up unscaled: an extrapolation in size by the area rule, not by the fit.

Compared, like with like: each run's estimate (:func:`viadk8s.cost.estimate`, what ``plan
--estimate --costs FILE`` prints) less the table's ``overhead_s``, against the ``fit_s + test_s``
its ``result.json`` records (what the fit models; process start, imports and staging are not
timed per run and not fitted: ``overhead_s`` is the shipped table's). The held-out ``viadk8s run``
process's wall time against the estimate with overhead is one more row. The calibration sweep's
own error (its runs estimated from the table fitted on them) is the contrast, and a refit on both
sweeps shows what calibrating on the held-out runs too buys (in-sample for them).

    python benchmarks/cost_model.py [--models patchcore,padim] [--sizes 64,96] [--held-out-size 128] [--work DIR]

``--work DIR`` keeps the store there (default: a new temporary directory); running again with it
resumes: finished runs are skipped, the fit and the comparison are redone.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import yaml
from table import Row, figure_row, run_alone

from viadk8s.config import load_config
from viadk8s.cost import dump_tables, estimate, fit, load_tables
from viadk8s.results import RunResult, load_results

#: Synthetic datasets: two of different sizes to calibrate on, a third in between held out.
DATASETS = {
    "cal_small": {"categories": ["tiles"], "n_train": 8, "n_test_good": 4, "n_test_bad": 4, "size": 96},
    "cal_large": {"categories": ["tiles"], "n_train": 24, "n_test_good": 8, "n_test_bad": 8, "size": 96},
    "held_out": {"categories": ["tiles", "fabric"], "n_train": 16, "n_test_good": 6, "n_test_bad": 6, "size": 96},
}


def relative_errors(pairs: Sequence[tuple[float, float]]) -> tuple[float, float, float]:
    """Median and maximum of the runs' |estimate − actual| / actual, and the sweep total's signed
    (Σ estimate − Σ actual) / Σ actual, over (estimate, actual) pairs: the total is what a user
    budgets by, and per-run errors of opposite sign cancel in it."""
    per_run = [abs(e - a) / a for e, a in pairs]
    total_actual = sum(a for _, a in pairs)
    return statistics.median(per_run), max(per_run), (sum(e for e, _ in pairs) - total_actual) / total_actual


def _viadk8s(config: Path, *args: str) -> float:
    """Run one ``viadk8s`` command (exits on failure); its wall seconds."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "COLUMNS": "200"}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "viadk8s", *args, "--config", str(config)], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode:
        sys.exit(f"viadk8s {' '.join(args[:3])} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def _pairs(results: Sequence[RunResult], config: Path, costs: Path) -> tuple[list[tuple[float, float]], float]:
    """(estimate less overhead, fit + test seconds) per run, and the table's overhead per run."""
    est = estimate([r.spec for r in results], load_config(str(config)), costs)
    if est.missing:
        sys.exit(f"{costs} has no coefficients for {sorted({s.model for s in est.missing})}")
    timings = {r.run_key: r.timings for r in results}
    overhead = est.table.overhead_s
    return [(c.seconds - overhead, timings[c.spec.run_key].fit_s + timings[c.spec.run_key].test_s) for c in est.runs], overhead


def _rows(label: str, pairs: Sequence[tuple[float, float]], note: str) -> list[Row]:
    median, worst, total = relative_errors(pairs)
    actual = sum(a for _, a in pairs)
    return [
        figure_row(f"cost model: {label}, median |relative error| per run", median, note),
        figure_row(f"cost model: {label}, max |relative error| per run", worst, f"over {len(pairs)} runs"),
        figure_row(
            f"cost model: {label}, sweep total relative error (signed)",
            total,
            f"estimated {sum(e for e, _ in pairs):.1f} s against {actual:.1f} s of fit + test",
        ),
    ]


def measure(models: str = "patchcore,padim", sizes: str = "64,96", held_out_size: int = 128, work: str = "") -> list[Row]:
    """Calibrate on one sweep, estimate another, compare with what it took (see the module's docstring)."""
    started, load = time.perf_counter(), os.getloadavg()[0]
    folder = Path(work) if work else Path(tempfile.mkdtemp(prefix="viadk8s-bench-cost-"))
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "viadk8s.yaml"
    config.write_text(yaml.safe_dump({"store": str(folder / "store"), "cache_dir": str(folder / "cache"), "datasets": {
        name: {"synthetic": options} for name, options in DATASETS.items()}}))  # fmt: skip
    common = ("run", "-e", "evaluation", "--models", models, "--weights", "random", "--jobs", "1")
    _viadk8s(config, *common, "--sweep", "calibration", "--datasets", "cal_small,cal_large", "--image-size", sizes,
             "--categories", "tiles", "--seeds", "1")  # fmt: skip
    costs = folder / "costs.yaml"
    _viadk8s(config, "calibrate", "--sweep", "calibration", "--out", str(costs))
    store = load_config(str(config)).open_store()
    resumed = bool(load_results(store, sweep_id="held-out"))  # then its process wall is not the sweep's
    held_wall = _viadk8s(config, *common, "--sweep", "held-out", "--datasets", "held_out", "--image-size", str(held_out_size),
                         "--categories", "tiles,fabric", "--seeds", "2")  # fmt: skip
    calibration, held_out = load_results(store, sweep_id="calibration"), load_results(store, sweep_id="held-out")
    held_pairs, overhead = _pairs(held_out, config, costs)
    cal_pairs, _ = _pairs(calibration, config, costs)
    both = folder / "costs-both.yaml"
    both.write_text(dump_tables(fit([*calibration, *held_out], overhead, "calibration and held-out sweeps").tables))
    refit_pairs, _ = _pairs(held_out, config, both)
    (table,) = load_tables(costs)[0]
    held = DATASETS["held_out"]
    what = (
        f"{models} at {held_out_size} px, {held['n_train']} train + {held['n_test_good'] + held['n_test_bad']} test images, "
        f"{' and '.join(held['categories'])}, seed 2"
    )
    rows = _rows(
        f"held-out sweep ({what})",
        held_pairs,
        f"calibrated at {sizes} px on {table.device}: {held_out_size} px scaled by pixel area from the nearest",
    )
    rows += _rows(
        f"calibration sweep, in-sample ({models} at {sizes} px, 8 and 24 train images)", cal_pairs, "the fit's own error"
    )
    rows += _rows("held-out sweep, refit on both sweeps (in-sample)", refit_pairs, f"{held_out_size} px now calibrated")
    estimated = sum(e for e, _ in held_pairs) + overhead * len(held_pairs)
    if not resumed:
        rows.append(
            figure_row(
                "cost model: held-out sweep, process wall vs estimate with overhead, relative error",
                (estimated - held_wall) / held_wall,
                f"estimated {estimated:.1f} s ({overhead} s overhead per run, the shipped table's) against "
                f"{held_wall:.1f} s of `viadk8s run` (its own start and summary included)",
            )
        )
    rows.append(
        figure_row(
            "cost model: benchmark wall, min",
            (time.perf_counter() - started) / 60,
            f"{len(calibration)} + {len(held_out)} runs, load average {load:.1f} at the start, "
            f"{os.getloadavg()[0]:.1f} at the end",
        )
    )
    return rows


if __name__ == "__main__":
    run_alone(measure, __doc__)

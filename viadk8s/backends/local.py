"""Run a sweep on this machine: each run (or pack of runs, ``--pack``) is a ``viadk8s worker``
subprocess, exactly as in a pod; a pack's log is ``pack-<pack key>.log``, a run's ``<run key>.log``."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from viadk8s.backends import PackSize, pack, pack_key
from viadk8s.backends import pending as split
from viadk8s.config import Config
from viadk8s.plan import Plan
from viadk8s.spec import RunSpec
from viadk8s.tracking import prepare_tracking
from viadk8s.worker.env import LOADER_WORKERS, worker_env
from viadk8s.worker.pack import read_outcomes, specs_json

ERROR_PREFIX = "error: "


@dataclass
class Failure:
    spec: RunSpec
    exit_code: int
    reason: str
    log: Path


@dataclass
class Outcome:
    done: list[RunSpec] = field(default_factory=list)
    skipped: list[RunSpec] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)


def _reason(log: Path) -> str:
    """The worker's one-line error, else the last line it printed."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(ERROR_PREFIX)]
    return (errors or lines or ["no output"])[-1].removeprefix(ERROR_PREFIX)


def logs_dir(config: Config, sweep_id: str) -> Path:
    if config.store_uri.startswith("file://"):
        return Path(config.store_uri.removeprefix("file://")) / "logs" / sweep_id
    return config.cache_path / "logs" / sweep_id


def run_one(specs: list[RunSpec], config: Config, config_path: str | None, threads: int, log: Path) -> int:
    """One worker subprocess for one run or a pack; its output goes to ``log``. Returns the exit code."""
    # parallel local runs share the machine: each gets its slice of threads and of loader workers
    env = {**worker_env(threads), LOADER_WORKERS: str(max(0, threads - 1)), **os.environ, "VIADK8S_STORE": config.store_uri}
    if config_path:
        env["VIADK8S_CONFIG"] = str(Path(config_path).resolve())
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "viadk8s", "worker", "--spec", "-"],
            input=specs_json(specs),
            text=True,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            check=False,
        )
    return proc.returncode


def _log(logs: Path, specs: list[RunSpec]) -> Path:
    return logs / (f"{specs[0].run_key}.log" if len(specs) == 1 else f"pack-{pack_key(specs)}.log")


def _outcomes(specs: list[RunSpec], code: int, log: Path) -> list[tuple[RunSpec, Failure | None]]:
    """Each run's outcome: the process's for one run; for a pack, the line the worker printed per
    run, or (a process that died before printing them) the process's code and last error."""
    if len(specs) == 1 or code == 0:
        return [(spec, None if code == 0 else Failure(spec, code, _reason(log), log)) for spec in specs]
    printed = read_outcomes(log.read_text(errors="replace"))
    found = []
    for spec in specs:
        run_code, reason = printed.get(spec.run_key, (code, _reason(log)))
        found.append((spec, None if run_code == 0 else Failure(spec, run_code, reason, log)))
    return found


def run_plan(
    plan: Plan,
    config: Config,
    config_path: str | None,
    jobs: int,
    console: Console,
    size: PackSize = 1,
    costs: str | Path | None = None,
) -> Outcome:
    """Run what is not finished yet, ``jobs`` processes at a time, each one run or a pack of
    ``size`` (:func:`viadk8s.backends.pack`); failures do not stop the sweep."""
    left = split(plan, config.open_store())
    if config.tracking_uri:  # create (and migrate) the MLflow database once, not in N racing workers
        prepare_tracking(config.tracking_uri, config.store_uri, plan.sweep.experiment, plan.sweep.sweep_id)
    outcome = Outcome(skipped=left.done)
    groups = pack(left.todo, size, config, costs)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    logs = logs_dir(config, plan.sweep.sweep_id)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"sweep {plan.sweep.sweep_id}", total=len(left.todo))
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(run_one, specs, config, config_path, threads, _log(logs, specs)): specs for specs in groups}
            for future in as_completed(futures):
                specs = futures[future]
                for spec, failure in _outcomes(specs, future.result(), _log(logs, specs)):
                    if failure is None:
                        outcome.done.append(spec)
                    else:
                        outcome.failed.append(failure)
                    progress.advance(task)
                    progress.console.print(
                        f"{'ok  ' if failure is None else 'FAIL'} {spec.run_name} [{spec.run_key}]", markup=False, highlight=False
                    )
    return outcome

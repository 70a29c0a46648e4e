"""Run a sweep on this machine: each run is a ``viadk8s worker`` subprocess, exactly as in a pod."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from viadk8s.backends import pending as split
from viadk8s.config import Config
from viadk8s.plan import Plan
from viadk8s.spec import RunSpec
from viadk8s.tracking import prepare_tracking
from viadk8s.worker.env import LOADER_WORKERS, worker_env

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


def run_one(spec: RunSpec, config: Config, config_path: str | None, threads: int, log: Path) -> int:
    """One worker subprocess; its output goes to ``log``. Returns the exit code."""
    # parallel local runs share the machine: each gets its slice of threads and of loader workers
    env = {**worker_env(threads), LOADER_WORKERS: str(max(0, threads - 1)), **os.environ, "VIADK8S_STORE": config.store_uri}
    if config_path:
        env["VIADK8S_CONFIG"] = str(Path(config_path).resolve())
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "viadk8s", "worker", "--spec", "-"],
            input=spec.to_json(),
            text=True,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            check=False,
        )
    return proc.returncode


def run_plan(plan: Plan, config: Config, config_path: str | None, jobs: int, console: Console) -> Outcome:
    """Run what is not finished yet, ``jobs`` at a time; failures do not stop the sweep."""
    left = split(plan, config.open_store())
    if config.tracking_uri:  # create (and migrate) the MLflow database once, not in N racing workers
        prepare_tracking(config.tracking_uri, config.store_uri, plan.sweep.experiment, plan.sweep.sweep_id)
    outcome = Outcome(skipped=left.done)
    pending = left.todo
    threads = max(1, (os.cpu_count() or 1) // jobs)
    logs = logs_dir(config, plan.sweep.sweep_id)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"sweep {plan.sweep.sweep_id}", total=len(pending))
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {
                pool.submit(run_one, spec, config, config_path, threads, logs / f"{spec.run_key}.log"): spec for spec in pending
            }
            for future in as_completed(futures):
                spec, code = futures[future], future.result()
                log = logs / f"{spec.run_key}.log"
                if code == 0:
                    outcome.done.append(spec)
                else:
                    outcome.failed.append(Failure(spec, code, _reason(log), log))
                progress.advance(task)
                progress.console.print(
                    f"{'ok  ' if code == 0 else 'FAIL'} {spec.run_name} [{spec.run_key}]", markup=False, highlight=False
                )
    return outcome

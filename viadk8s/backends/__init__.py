"""Where runs execute: :mod:`.local` (worker subprocesses on this machine) and :mod:`.k8s`
(Kubernetes Jobs). What every backend shares lives here: the resume split.

A backend is one module (or package) plus its CLI commands: it takes a :class:`viadk8s.plan.Plan`,
asks :func:`pending` which runs are left, and starts a ``viadk8s worker`` for them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from viadk8s.plan import Plan
from viadk8s.results import is_done, save_sweep
from viadk8s.spec import RunSpec
from viadk8s.store import Store


@dataclass(frozen=True)
class Pending:
    """A sweep split by the store: the runs still to execute and those already finished."""

    todo: list[RunSpec]
    done: list[RunSpec]


def pending(plan: Plan, store: Store, record: bool = True) -> Pending:
    """Resume: save the sweep (unless ``record`` is False, as in a dry run) and keep the runs
    whose ``result.json`` is not committed. One existence check per run, 16 at a time (on an
    object store each is a request)."""
    if record:
        save_sweep(store, plan.sweep)
    runs = plan.sweep.runs
    with ThreadPoolExecutor(max_workers=16) as pool:
        finished = list(pool.map(lambda spec: is_done(store, spec), runs))
    return Pending(
        todo=[spec for spec, done in zip(runs, finished, strict=True) if not done],
        done=[spec for spec, done in zip(runs, finished, strict=True) if done],
    )

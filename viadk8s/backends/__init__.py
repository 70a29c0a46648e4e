"""Where runs execute: :mod:`.local` (worker subprocesses on this machine) and :mod:`.k8s`
(Kubernetes Jobs). What every backend shares lives here: the resume split.

A backend is one module (or package) plus its CLI commands: it takes a :class:`viadk8s.plan.Plan`,
asks :func:`pending` which runs are left, groups them with :func:`pack`, and starts one
``viadk8s worker`` per group.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from viadk8s.config import Config
from viadk8s.errors import SpecError
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


#: ``--pack``: at most N runs per worker process, or ``auto`` (as many as the cost model fits).
PackSize = int | Literal["auto"]


def pack_size(text: str) -> PackSize:
    """``--pack N|auto`` as given on the command line; 1 (the default) packs nothing."""
    if text == "auto":
        return "auto"
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise SpecError(f"bad --pack {text!r}; allowed: a number of runs (1 packs nothing) or auto")


def pack_key(specs: Sequence[RunSpec]) -> str:
    """A pack's run key: 16 hex digits from its runs' keys, so the same runs give the same name."""
    return hashlib.sha256("\n".join(sorted(s.run_key for s in specs)).encode()).hexdigest()[:16]


def pack(runs: Sequence[RunSpec], size: PackSize, config: Config, costs: str | Path | None = None) -> list[list[RunSpec]]:
    """The runs in groups that each one worker process runs in turn, in plan order.

    Runs the cost model estimates below ``cluster.pack.short_s`` are grouped by model and dataset
    (one process stages one dataset and loads one model's weights): ``size`` runs at most per
    group, or for ``auto`` as many as keep the group's estimate within ``cluster.pack.auto_s``.
    Any other run (longer, or of a model the cost table does not know) is a group of its own.
    """
    if size == 1:
        return [[spec] for spec in runs]
    from viadk8s.cost import estimate

    settings = config.cluster.pack
    seconds = {r.spec.run_key: r.seconds for r in estimate(runs, config, costs).runs}
    groups: list[list[RunSpec]] = []
    open_groups: dict[tuple[str, str], tuple[list[RunSpec], float]] = {}
    for spec in runs:
        cost = seconds.get(spec.run_key)
        if cost is None or cost >= settings.short_s:
            groups.append([spec])
            continue
        kind = (spec.model, spec.dataset)
        group, total = open_groups.get(kind, ([], 0.0))
        full = len(group) >= size if size != "auto" else total + cost > settings.auto_s
        if not group or full:
            group, total = [], 0.0
            groups.append(group)
        group.append(spec)
        open_groups[kind] = (group, total + cost)
    return groups

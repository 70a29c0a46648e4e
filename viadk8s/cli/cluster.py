"""Run experiments on a Kubernetes cluster: thin commands over :mod:`viadk8s.backends.k8s`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from viadk8s.cli.common import (
    ConfigPath,
    Experiment,
    PackOption,
    Store,
    app,
    console,
    err_console,
    friendly,
    selection_options,
)
from viadk8s.cli.runs import Costs, EstimateFlag, Parallel, show_estimate
from viadk8s.errors import SpecError, one_of
from viadk8s.plan import Selection, plan

if TYPE_CHECKING:
    from viadk8s.config import Config


Namespace = Annotated[str | None, typer.Option("--namespace", "-n", help="default: cluster.namespace, else the kube context's")]
Context = Annotated[str | None, typer.Option("--context", help="kubeconfig context (default: the current one)")]
Image = Annotated[str | None, typer.Option("--image", help="worker image (default: cluster.image)")]
DryRun = Annotated[str | None, typer.Option("--dry-run", help="client: render and check only; server: the API server checks too")]


def _cluster_config(config: str | None, store: str | None = None, **cluster_flags: str | None) -> Config:
    """The config with --namespace/--context/--image applied over env and file (a Config)."""
    from viadk8s.cluster_config import with_overrides
    from viadk8s.config import load_config

    cfg = load_config(config, store=store)
    return cfg.model_copy(update={"cluster": with_overrides(cfg.cluster, **cluster_flags)})


def _follow(cluster: Any, sweep_id: str | None, interval: float, timeout: float | None = None) -> Any:
    """Show a sweep's status live until every Job has finished; returns the last SweepStatus."""
    from rich.live import Live

    from viadk8s.backends.k8s import jobs
    from viadk8s.backends.k8s.view import status_view

    with Live(console=console, refresh_per_second=1) as live:
        return jobs.wait(cluster, sweep_id, on_update=lambda s: live.update(status_view(s)), interval=interval, timeout=timeout)


@app.command()
@friendly
@selection_options
def render(
    experiment: Experiment,
    out: Annotated[Path, typer.Option(help="folder for the manifests, one file per run")],
    selection: Selection,
    config: ConfigPath = None,
    namespace: Namespace = None,
    image: Image = None,
    pack: PackOption = "1",
    costs: Costs = None,
) -> None:
    """Write the Kubernetes manifests of an experiment (a ConfigMap and one Job per run or pack); nothing is contacted."""
    from viadk8s.backends import pack as packed
    from viadk8s.backends import pack_size
    from viadk8s.backends.k8s.client import resolve_namespace
    from viadk8s.backends.k8s.render import render_sweep

    cfg = _cluster_config(config, namespace=namespace, image=image)
    planned = plan(experiment, selection, cfg)
    groups = packed(planned.sweep.runs, pack_size(pack), cfg, costs)
    rendered = render_sweep(planned, cfg, resolve_namespace(cfg.cluster), groups)
    written = rendered.write(out)
    console.print(
        f"wrote {len(written)} manifests ({len(rendered.jobs)} Jobs + ConfigMap) to {out}", highlight=False, soft_wrap=True
    )
    for note in planned.notes:
        console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)


@app.command()
@friendly
@selection_options
def submit(
    experiment: Experiment,
    selection: Selection,
    store: Store = None,
    config: ConfigPath = None,
    namespace: Namespace = None,
    context: Context = None,
    image: Image = None,
    dry_run: DryRun = None,
    wait: Annotated[bool, typer.Option("--wait", help="wait until every Job has finished; exit 1 if one failed")] = False,
    timeout: Annotated[float | None, typer.Option(help="with --wait: give up after this many seconds")] = None,
    interval: Annotated[float, typer.Option(min=1, help="with --wait: seconds between status polls")] = 15,
    estimate: EstimateFlag = False,
    parallel: Parallel = None,
    costs: Costs = None,
    pack: PackOption = "1",
) -> None:
    """Submit an experiment as Kubernetes Jobs; finished runs and existing Jobs are skipped (submit again to resume)."""
    from viadk8s.backends import pack_size
    from viadk8s.backends.k8s import jobs
    from viadk8s.backends.k8s.client import connect
    from viadk8s.backends.k8s.view import submit_lines

    if dry_run not in (None, "client", "server"):
        raise one_of("--dry-run", dry_run, ["client", "server"])
    if wait and dry_run:
        raise SpecError("--wait needs a real submission: drop --dry-run")
    size = pack_size(pack)
    cfg = _cluster_config(config, store=store, namespace=namespace, context=context, image=image)
    planned = plan(experiment, selection, cfg)
    for note in planned.notes:
        console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
    if estimate:  # only the estimate: the cluster is not contacted
        return show_estimate(planned, cfg, costs, parallel, cfg.cluster.gpu.count)
    cluster = None if dry_run == "client" else connect(cfg.cluster)
    report = jobs.submit(planned, cfg, cluster, dry_run, size, costs)  # type: ignore[arg-type]
    for line in submit_lines(report):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    if wait and cluster is not None:
        final = _follow(cluster, planned.sweep.sweep_id, interval, timeout)
        if final.counts()["failed"]:
            raise typer.Exit(1)


@app.command()
@friendly
def status(
    sweep: Annotated[str | None, typer.Option("--sweep", help="only this sweep (default: every sweep in the namespace)")] = None,
    namespace: Namespace = None,
    context: Context = None,
    config: ConfigPath = None,
    watch: Annotated[bool, typer.Option("--watch", help="refresh until every Job has finished")] = False,
    interval: Annotated[float, typer.Option(min=1, help="with --watch: seconds between refreshes")] = 10,
) -> None:
    """Runs on the cluster: pending, running, succeeded, failed, each with its reason (a pack's runs one by one)."""
    from viadk8s.backends.k8s import jobs
    from viadk8s.backends.k8s.client import connect
    from viadk8s.backends.k8s.view import status_view

    cfg = _cluster_config(config, namespace=namespace, context=context)
    cluster = connect(cfg.cluster)
    if watch:
        _follow(cluster, sweep, interval)
    else:
        console.print(status_view(jobs.sweep_status(cluster, sweep, cfg.open_store())))


@app.command()
@friendly
def logs(
    run_key: Annotated[str, typer.Argument(help="the run key shown by `viadk8s plan` or `viadk8s status`")],
    sweep: Annotated[str | None, typer.Option("--sweep", help="the run's sweep, if the key is in several")] = None,
    namespace: Namespace = None,
    context: Context = None,
    config: ConfigPath = None,
    tail: Annotated[int | None, typer.Option(min=1, help="only the last N lines")] = None,
) -> None:
    """Print the worker log of a run's newest pod."""
    from viadk8s.backends.k8s import jobs
    from viadk8s.backends.k8s.client import connect

    cluster = connect(_cluster_config(config, namespace=namespace, context=context).cluster)
    pod, text = jobs.run_logs(cluster, run_key, sweep, tail)
    err_console.print(f"pod {pod}", highlight=False)
    sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")


@app.command()
@friendly
def cancel(
    sweep: Annotated[str, typer.Option("--sweep", help="the sweep whose Jobs are deleted")],
    namespace: Namespace = None,
    context: Context = None,
    config: ConfigPath = None,
) -> None:
    """Delete a sweep's Jobs and their pods (results already in the store stay)."""
    from viadk8s.backends.k8s import jobs
    from viadk8s.backends.k8s.client import connect

    cluster = connect(_cluster_config(config, namespace=namespace, context=context).cluster)
    deleted = jobs.cancel(cluster, sweep)
    console.print(f"sweep {sweep}: deleted {len(deleted)} Jobs in namespace {cluster.namespace}", highlight=False)

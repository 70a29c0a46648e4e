"""The ``viadk8s`` command: a thin Typer layer over the library (plan, backends, worker, aggregate)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from viadk8s import catalog
from viadk8s.errors import SpecError, Viadk8sError, one_of

if TYPE_CHECKING:
    from viadk8s.config import Config

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Benchmark anomaly-detection models the way production needs.")
console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def friendly(command: F) -> F:
    """Turn the library's errors into one line on stderr and the promised exit code."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except Viadk8sError as err:
            err_console.print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(err.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _seeds(value: str | None) -> list[int] | None:
    try:
        return [int(v) for v in _split(value) or []] or None
    except ValueError:
        raise SpecError(f"bad --seeds {value!r}; allowed: comma-separated integers") from None


Experiment = Annotated[str, typer.Option("--experiment", "-e", help="evaluation, input_size, validation, noisy_labels, data_drift, supervised")]
Models = Annotated[str | None, typer.Option(help="comma-separated model keys (default: the experiment's)")]
Datasets = Annotated[str | None, typer.Option(help="comma-separated dataset keys, or 'paper' (default: configured ones, else synthetic)")]
Categories = Annotated[str | None, typer.Option(help="comma-separated categories")]
Seeds = Annotated[str | None, typer.Option(help="comma-separated seeds (default: the experiment's)")]
ImageSize = Annotated[int | None, typer.Option(help="input size in pixels (overrides the experiment's)")]
Weights = Annotated[str | None, typer.Option(help="imagenet (default) or random")]
Epochs = Annotated[int | None, typer.Option("--max-epochs", help="cap every model's protocol epochs (smoke runs)")]
BatchSize = Annotated[int | None, typer.Option(help="train batch size (default 16)")]
SweepId = Annotated[str | None, typer.Option("--sweep", help="sweep id (default: the experiment name)")]
Store = Annotated[str | None, typer.Option(help="file://DIR or DIR (default ./viadk8s-runs)")]
ConfigPath = Annotated[str | None, typer.Option("--config", help="viadk8s.yaml (default $VIADK8S_CONFIG or ./viadk8s.yaml)")]


def _plan(experiment: str, config: Any, **chosen: Any):  # noqa: ANN202 - a Plan
    from viadk8s.plan import Selection, plan

    if chosen["weights"] not in (None, "imagenet", "random"):
        raise one_of("weights", chosen["weights"], ["imagenet", "random"])
    selection = Selection(
        models=_split(chosen["models"]), datasets=_split(chosen["datasets"]), categories=_split(chosen["categories"]),
        seeds=_seeds(chosen["seeds"]), image_size=chosen["image_size"], weights=chosen["weights"],
        max_epochs=chosen["epochs"], batch_size=chosen["batch_size"], sweep=chosen["sweep"],
    )
    return plan(experiment, selection, config)


@app.command("plan")
@friendly
def plan_command(
    experiment: Experiment, models: Models = None, datasets: Datasets = None, categories: Categories = None,
    seeds: Seeds = None, image_size: ImageSize = None, weights: Weights = None, epochs: Epochs = None,
    batch_size: BatchSize = None, sweep: SweepId = None, config: ConfigPath = None,
    format: Annotated[str, typer.Option("--format", help="table or json")] = "table",
) -> None:
    """Expand an experiment into its runs (nothing is executed or written)."""
    from viadk8s.config import load_config

    result = _plan(experiment, load_config(config), models=models, datasets=datasets, categories=categories,
                   seeds=seeds, image_size=image_size, weights=weights, epochs=epochs, batch_size=batch_size, sweep=sweep)
    if format == "json":
        sys.stdout.write(result.sweep.model_dump_json(indent=2) + "\n")
        return
    if format != "table":
        raise one_of("format", format, ["table", "json"])
    table = Table(title=f"{experiment}: {len(result.sweep.runs)} runs, sweep {result.sweep.sweep_id}")
    for column in ("run_key", "model", "dataset", "category", "seed", "size", "variant", "available"):
        table.add_column(column)
    for r in result.sweep.runs:
        available = "yes" if catalog.models()[r.model].available else "not yet"
        table.add_row(r.run_key, r.model, r.dataset, r.category, str(r.seed), str(r.image_size), r.variant.label(), available)
    console.print(table)
    for note in result.notes:
        console.print(f"note: {note}")


@app.command()
@friendly
def run(
    experiment: Experiment, models: Models = None, datasets: Datasets = None, categories: Categories = None,
    seeds: Seeds = None, image_size: ImageSize = None, weights: Weights = None, epochs: Epochs = None,
    batch_size: BatchSize = None, sweep: SweepId = None, store: Store = None, config: ConfigPath = None,
    jobs: Annotated[int, typer.Option(min=1, help="runs at a time")] = 1,
) -> None:
    """Run an experiment on this machine; finished runs are skipped (run again to resume)."""
    from viadk8s.backends.local import run_plan
    from viadk8s.config import load_config

    cfg = load_config(config, store=store)
    planned = _plan(experiment, cfg, models=models, datasets=datasets, categories=categories, seeds=seeds,
                    image_size=image_size, weights=weights, epochs=epochs, batch_size=batch_size, sweep=sweep)
    if not catalog.experiment(experiment).runnable:
        raise SpecError(f"experiment {experiment!r} can be planned but not run yet: its data-side variants are not implemented; runnable: "
                        + ", ".join(k for k, e in catalog.experiments().items() if e.runnable))
    for note in planned.notes:
        console.print(f"note: {note}")
    outcome = run_plan(planned, cfg, config, jobs, console)
    console.print(f"{len(outcome.done)} done, {len(outcome.skipped)} skipped (already finished), {len(outcome.failed)} failed")
    _print_summary(cfg, planned.sweep.sweep_id, experiment)
    for failure in outcome.failed:
        console.print(f"[red]failed[/red] {escape(f'{failure.spec.run_name} [{failure.spec.run_key}] exit {failure.exit_code}: {failure.reason}')}",
                      highlight=False)
        console.print(f"       log: {failure.log}", highlight=False)
    if outcome.failed:
        raise typer.Exit(1)


def _print_summary(config: Config, sweep_id: str, experiment: str) -> None:
    from viadk8s.aggregate import tables
    from viadk8s.results import load_results

    results = load_results(config.open_store(), sweep_id=sweep_id)
    if results:
        table = tables(results, catalog.experiment(experiment).metrics)["per_dataset"]
        console.print(table.to_markdown(), highlight=False, markup=False)


@app.command()
@friendly
def worker(
    spec: Annotated[str, typer.Option("--spec", help="a run spec JSON file, or - for standard input")],
    store: Store = None, config: ConfigPath = None,
) -> None:
    """Execute one run exactly as a Kubernetes pod does. Exit 0 done, 2 invalid input, 3 infrastructure."""
    from viadk8s.worker import main

    text = sys.stdin.read() if spec == "-" else _read(spec)
    raise typer.Exit(main(text, config_path=config, store=store))


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as err:
        raise SpecError(f"cannot read spec file {path!r}: {err.strerror}") from None


@app.command()
@friendly
def aggregate(
    sweep: SweepId = None,
    experiment: Annotated[str | None, typer.Option("--experiment", "-e", help="all sweeps of an experiment")] = None,
    store: Store = None, config: ConfigPath = None,
    format: Annotated[str, typer.Option("--format", help="md, csv or latex")] = "md",
    out: Annotated[Path | None, typer.Option(help="write the tables and runs.csv into this folder")] = None,
    metrics: Annotated[str | None, typer.Option(help="comma-separated metrics (default: the experiment's)")] = None,
) -> None:
    """Tables of a sweep's results: per dataset (with the mean D) and per category."""
    from viadk8s import aggregate as agg
    from viadk8s.config import load_config
    from viadk8s.results import load_results

    if (sweep is None) == (experiment is None):
        raise SpecError("give exactly one of --sweep ID or --experiment NAME")
    if format not in agg.FORMATS:
        raise one_of("format", format, list(agg.FORMATS))
    if experiment:
        catalog.experiment(experiment)
    results = load_results(load_config(config, store=store).open_store(), sweep_id=sweep, experiment=experiment)
    if not results:
        raise SpecError(f"no finished run in {'sweep ' + repr(sweep) if sweep else 'experiment ' + repr(experiment)}")
    chosen = _split(metrics) or catalog.experiment(experiment or results[0].spec.experiment).metrics
    named = agg.tables(results, chosen)
    for name, table in named.items():
        sys.stdout.write(f"\n{name} ({len(results)} runs)\n\n{agg.render(table, format)}\n")
    if out:
        for path in agg.write(out, results, named, format):
            err_console.print(f"wrote {path}", highlight=False)


datasets_app = typer.Typer(no_args_is_help=True, help="Mirror datasets into the store, list and verify them.")
mlflow_app = typer.Typer(no_args_is_help=True, help="MLflow housekeeping.")
app.add_typer(datasets_app, name="datasets")
app.add_typer(mlflow_app, name="mlflow")


@datasets_app.command("upload")
@friendly
def datasets_upload(
    name: Annotated[str, typer.Argument(help="dataset key, e.g. btad or your own name")],
    source: Annotated[Path, typer.Option("--from", help="MVTec-layout folder: one sub-folder per category")],
    store: Store = None, config: ConfigPath = None,
    compress: Annotated[bool, typer.Option(help="gzip the archives (smaller, slower to stage)")] = False,
) -> None:
    """Mirror a dataset once: one archive per category, then a manifest with sha256 and sizes."""
    from viadk8s.config import load_config
    from viadk8s.data.mirror import upload_dataset
    from viadk8s.spec import SWEEP_ID

    if not SWEEP_ID.match(name):
        raise SpecError(f"dataset name {name!r} not allowed; allowed: 1-40 lowercase letters, digits or '-'")
    target = load_config(config, store=store).open_store()
    manifest = upload_dataset(target, name, source, compress)
    console.print(f"{name}: {len(manifest.categories)} categories, {manifest.total_bytes / 2**20:.1f} MB, masks {manifest.masks}, "
                  f"in {target.uri}/datasets/{name}", highlight=False)


@datasets_app.command("list")
@friendly
def datasets_list(store: Store = None, config: ConfigPath = None) -> None:
    """Every dataset viadk8s knows, where it comes from, and whether the store mirrors it."""
    from viadk8s.config import load_config
    from viadk8s.data.mirror import read_manifest

    cfg = load_config(config, store=store)
    target = cfg.open_store()
    mirrored = {k.split("/")[1] for k in target.list("datasets/") if k.endswith("/manifest.json")}
    table = Table(title=f"datasets (store {target.uri})")
    for column in ("key", "source", "categories", "mirrored", "size MB"):
        table.add_column(column)
    for key in sorted({*cfg.dataset_keys(), *mirrored}):
        manifest = read_manifest(target, key) if key in mirrored else None
        entry = cfg.dataset(key) if key in cfg.dataset_keys() else None
        source = "generated" if entry and entry.synthetic else (entry.path if entry and entry.path else "catalog" if entry else "store")
        count = len(manifest.categories) if manifest else len(entry.categories) if entry else 0
        size = f"{manifest.total_bytes / 2**20:.1f}" if manifest else ""
        table.add_row(key, str(source), str(count), "yes" if manifest else "no", size)
    console.print(table)



@datasets_app.command("verify")
@friendly
def datasets_verify(name: str, store: Store = None, config: ConfigPath = None) -> None:
    """Download a mirrored dataset's archives and check them against its manifest."""
    from viadk8s.config import load_config
    from viadk8s.data.mirror import verify_dataset

    problems = verify_dataset(load_config(config, store=store).open_store(), name)
    if problems:
        raise SpecError(f"dataset {name!r} failed verification: " + "; ".join(problems))
    console.print(f"{name}: every archive matches its manifest", highlight=False)


@mlflow_app.command("sync")
@friendly
def mlflow_sync(sweep: SweepId = None, store: Store = None, config: ConfigPath = None) -> None:
    """Log to MLflow the finished runs whose tracking is still pending (MLflow was down)."""
    from viadk8s.config import load_config
    from viadk8s.tracking import sync_pending

    cfg = load_config(config, store=store)
    if not cfg.tracking_uri:
        raise SpecError("no MLflow tracking URI: set MLFLOW_TRACKING_URI or mlflow.tracking_uri in viadk8s.yaml")
    synced, pending = sync_pending(cfg.open_store(), cfg.tracking_uri, sweep)
    console.print(f"{synced} runs synced to {cfg.tracking_uri}, {pending} still pending", highlight=False)
    if pending:
        raise typer.Exit(3)


@app.command("catalog")
def catalog_command() -> None:
    """The models, datasets and experiments viadk8s knows, and which can run now."""
    table = Table(title="models")
    for column in ("key", "name", "group", "epochs", "available", "note"):
        table.add_column(column)
    for key, m in catalog.models().items():
        table.add_row(key, m.name, m.group, str(m.epochs), "yes" if m.available else "not yet", m.note)
    console.print(table)
    table = Table(title="datasets")
    for column in ("key", "name", "masks", "categories"):
        table.add_column(column)
    for key, d in catalog.datasets().items():
        table.add_row(key, d.name, d.masks, ", ".join(d.categories))
    console.print(table)
    table = Table(title="experiments")
    for column in ("key", "title", "axes", "runnable"):
        table.add_column(column)
    for key, e in catalog.experiments().items():
        table.add_row(key, e.title, json.dumps(e.axes), "yes" if e.runnable else "plan only")
    console.print(table)


# --- Kubernetes backend: thin commands over viadk8s.k8s ------------------------------------------

Namespace = Annotated[str | None, typer.Option("--namespace", "-n", help="default: cluster.namespace, else the kube context's")]
Context = Annotated[str | None, typer.Option("--context", help="kubeconfig context (default: the current one)")]
Image = Annotated[str | None, typer.Option("--image", help="worker image (default: cluster.image)")]
DryRun = Annotated[str | None, typer.Option("--dry-run", help="client: render and check only; server: the API server checks too")]


def _cluster_config(config: str | None, store: str | None = None, **cluster_flags: str | None) -> Any:
    """The config with --namespace/--context/--image applied over env and file (a Config)."""
    from viadk8s.config import load_config
    from viadk8s.k8s.settings import with_overrides

    cfg = load_config(config, store=store)
    return cfg.model_copy(update={"cluster": with_overrides(cfg.cluster, **cluster_flags)})


def _follow(cluster: Any, sweep_id: str | None, interval: float, timeout: float | None = None) -> Any:
    """Show a sweep's status live until every Job has finished; returns the last SweepStatus."""
    from rich.live import Live

    from viadk8s.k8s import jobs
    from viadk8s.k8s.view import status_view

    with Live(console=console, refresh_per_second=1) as live:
        return jobs.wait(cluster, sweep_id, on_update=lambda s: live.update(status_view(s)), interval=interval, timeout=timeout)


@app.command()
@friendly
def render(
    experiment: Experiment, out: Annotated[Path, typer.Option(help="folder for the manifests, one file per run")],
    models: Models = None, datasets: Datasets = None, categories: Categories = None, seeds: Seeds = None,
    image_size: ImageSize = None, weights: Weights = None, epochs: Epochs = None, batch_size: BatchSize = None,
    sweep: SweepId = None, config: ConfigPath = None, namespace: Namespace = None, image: Image = None,
) -> None:
    """Write the Kubernetes manifests of an experiment (a ConfigMap and one Job per run); nothing is contacted."""
    from viadk8s.k8s.client import resolve_namespace
    from viadk8s.k8s.jobs import SubmitReport
    from viadk8s.k8s.render import render_sweep
    from viadk8s.k8s.view import submit_lines

    cfg = _cluster_config(config, namespace=namespace, image=image)
    planned = _plan(experiment, cfg, models=models, datasets=datasets, categories=categories, seeds=seeds,
                    image_size=image_size, weights=weights, epochs=epochs, batch_size=batch_size, sweep=sweep)
    rendered = render_sweep(planned, cfg, resolve_namespace(cfg.cluster))
    written = rendered.write(out)
    console.print(f"wrote {len(written)} manifests ({len(rendered.jobs)} Jobs + ConfigMap) to {out}",
                  highlight=False, soft_wrap=True)
    report = SubmitReport(planned.sweep.sweep_id, rendered.namespace, "client", not_runnable=rendered.not_runnable)
    for line in submit_lines(report)[1:]:
        console.print(line, highlight=False, markup=False, soft_wrap=True)


@app.command()
@friendly
def submit(
    experiment: Experiment, models: Models = None, datasets: Datasets = None, categories: Categories = None,
    seeds: Seeds = None, image_size: ImageSize = None, weights: Weights = None, epochs: Epochs = None,
    batch_size: BatchSize = None, sweep: SweepId = None, store: Store = None, config: ConfigPath = None,
    namespace: Namespace = None, context: Context = None, image: Image = None,
    dry_run: DryRun = None,
    wait: Annotated[bool, typer.Option("--wait", help="wait until every Job has finished; exit 1 if one failed")] = False,
    timeout: Annotated[float | None, typer.Option(help="with --wait: give up after this many seconds")] = None,
    interval: Annotated[float, typer.Option(min=1, help="with --wait: seconds between status polls")] = 15,
) -> None:
    """Submit an experiment as Kubernetes Jobs; finished runs and existing Jobs are skipped (submit again to resume)."""
    from viadk8s.k8s import jobs
    from viadk8s.k8s.client import connect
    from viadk8s.k8s.view import submit_lines

    if dry_run not in (None, "client", "server"):
        raise one_of("--dry-run", dry_run, ["client", "server"])
    if wait and dry_run:
        raise SpecError("--wait needs a real submission: drop --dry-run")
    cfg = _cluster_config(config, store=store, namespace=namespace, context=context, image=image)
    planned = _plan(experiment, cfg, models=models, datasets=datasets, categories=categories, seeds=seeds,
                    image_size=image_size, weights=weights, epochs=epochs, batch_size=batch_size, sweep=sweep)
    if dry_run is None:
        jobs.refuse_unrunnable(experiment)
    for note in planned.notes:
        console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
    cluster = None if dry_run == "client" else connect(cfg.cluster)
    report = jobs.submit(planned, cfg, cluster, dry_run)  # type: ignore[arg-type]
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
    namespace: Namespace = None, context: Context = None, config: ConfigPath = None,
    watch: Annotated[bool, typer.Option("--watch", help="refresh until every Job has finished")] = False,
    interval: Annotated[float, typer.Option(min=1, help="with --watch: seconds between refreshes")] = 10,
) -> None:
    """Runs on the cluster: pending, running, succeeded, failed, each with its reason."""
    from viadk8s.k8s import jobs
    from viadk8s.k8s.client import connect
    from viadk8s.k8s.view import status_view

    cluster = connect(_cluster_config(config, namespace=namespace, context=context).cluster)
    if watch:
        _follow(cluster, sweep, interval)
    else:
        console.print(status_view(jobs.sweep_status(cluster, sweep)))


@app.command()
@friendly
def logs(
    run_key: Annotated[str, typer.Argument(help="the run key shown by `viadk8s plan` or `viadk8s status`")],
    sweep: Annotated[str | None, typer.Option("--sweep", help="the run's sweep, if the key is in several")] = None,
    namespace: Namespace = None, context: Context = None, config: ConfigPath = None,
    tail: Annotated[int | None, typer.Option(min=1, help="only the last N lines")] = None,
) -> None:
    """Print the worker log of a run's newest pod."""
    from viadk8s.k8s import jobs
    from viadk8s.k8s.client import connect

    cluster = connect(_cluster_config(config, namespace=namespace, context=context).cluster)
    pod, text = jobs.run_logs(cluster, run_key, sweep, tail)
    err_console.print(f"pod {pod}", highlight=False)
    sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")


@app.command()
@friendly
def cancel(
    sweep: Annotated[str, typer.Option("--sweep", help="the sweep whose Jobs are deleted")],
    namespace: Namespace = None, context: Context = None, config: ConfigPath = None,
) -> None:
    """Delete a sweep's Jobs and their pods (results already in the store stay)."""
    from viadk8s.k8s import jobs
    from viadk8s.k8s.client import connect

    cluster = connect(_cluster_config(config, namespace=namespace, context=context).cluster)
    deleted = jobs.cancel(cluster, sweep)
    console.print(f"sweep {sweep}: deleted {len(deleted)} Jobs in namespace {cluster.namespace}", highlight=False)

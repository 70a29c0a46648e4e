"""The ``viadk8s`` command: a thin Typer layer over the library (plan, backends, worker, aggregate)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from viadk8s import catalog
from viadk8s.errors import SpecError, Viadk8sError, one_of

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
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
Epochs = Annotated[int | None, typer.Option("--epochs", help="override every model's protocol epochs")]
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
    from viadk8s.results import load_results

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
    _print_summary(cfg.store_uri, planned.sweep.sweep_id, experiment)
    for failure in outcome.failed:
        console.print(f"[red]failed[/red] {failure.spec.run_name} [{failure.spec.run_key}] exit {failure.exit_code}: {failure.reason}", markup=True, highlight=False)
        console.print(f"       log: {failure.log}", highlight=False)
    if outcome.failed:
        raise typer.Exit(1)


def _print_summary(store_uri: str, sweep_id: str, experiment: str) -> None:
    from viadk8s.aggregate import tables
    from viadk8s.results import load_results
    from viadk8s.store import open_store

    results = load_results(open_store(store_uri), sweep_id=sweep_id)
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
    from viadk8s.store import open_store

    if (sweep is None) == (experiment is None):
        raise SpecError("give exactly one of --sweep ID or --experiment NAME")
    if format not in agg.FORMATS:
        raise one_of("format", format, list(agg.FORMATS))
    if experiment:
        catalog.experiment(experiment)
    results = load_results(open_store(load_config(config, store=store).store_uri), sweep_id=sweep, experiment=experiment)
    if not results:
        raise SpecError(f"no finished run in {'sweep ' + repr(sweep) if sweep else 'experiment ' + repr(experiment)}")
    chosen = _split(metrics) or catalog.experiment(experiment or results[0].spec.experiment).metrics
    named = agg.tables(results, chosen)
    for name, table in named.items():
        sys.stdout.write(f"\n{name} ({len(results)} runs)\n\n{agg.render(table, format)}\n")
    if out:
        for path in agg.write(out, results, named, format):
            err_console.print(f"wrote {path}", highlight=False)


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

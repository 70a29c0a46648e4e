"""Plan, run and aggregate experiments on this machine (the library's plan, backends.local, aggregate)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from viadk8s import catalog
from viadk8s.cli.common import (
    ConfigPath,
    Experiment,
    OperatingPoints,
    PackOption,
    Store,
    SweepId,
    app,
    console,
    err_console,
    friendly,
    selection_options,
    split_list,
)
from viadk8s.errors import SpecError, one_of
from viadk8s.plan import Selection, plan

if TYPE_CHECKING:
    from viadk8s.config import Config
    from viadk8s.plan import Plan

EstimateFlag = Annotated[bool, typer.Option("--estimate", help="print the sweep's GPU-hours, wall time and longest runs instead")]
Parallel = Annotated[int | None, typer.Option("--parallel", min=1, help="with --estimate: runs at a time (default 1)")]
Costs = Annotated[
    Path | None,
    typer.Option("--costs", help="with --estimate or --pack: a `viadk8s calibrate` file (default: the shipped table)"),
]


def show_estimate(planned: Plan, config: Config, costs: Path | None, parallel: int | None, gpus_per_run: int = 1) -> None:
    """Print what the sweep will cost (:mod:`viadk8s.cost`); nothing is run or contacted."""
    from viadk8s.cost import estimate, estimate_lines

    chosen = parallel or 1
    source = "--parallel" if parallel else "default: no parallelism setting is known, give --parallel N"
    for line in estimate_lines(estimate(planned.sweep.runs, config, costs), chosen, source, gpus_per_run):
        console.print(line, highlight=False, markup=False, soft_wrap=True)


@app.command("plan")
@friendly
@selection_options
def plan_command(
    experiment: Experiment,
    selection: Selection,
    config: ConfigPath = None,
    format: Annotated[str, typer.Option("--format", help="table or json")] = "table",
    estimate: EstimateFlag = False,
    parallel: Parallel = None,
    costs: Costs = None,
) -> None:
    """Expand an experiment into its runs (nothing is executed or written)."""
    from viadk8s.config import load_config

    cfg = load_config(config)
    result = plan(experiment, selection, cfg)
    if estimate:
        show_estimate(result, cfg, costs, parallel)
        return
    if format == "json":
        sys.stdout.write(result.sweep.model_dump_json(indent=2) + "\n")
        return
    if format != "table":
        raise one_of("format", format, ["table", "json"])
    table = Table(title=f"{experiment}: {len(result.sweep.runs)} runs, sweep {result.sweep.sweep_id}")
    for column in ("run_key", "model", "dataset", "category", "seed", "size", "variant"):
        table.add_column(column)
    for r in result.sweep.runs:
        table.add_row(r.run_key, r.model, r.dataset, r.category, str(r.seed), str(r.image_size), r.variant.label())
    console.print(table)
    for note in result.notes:
        console.print(f"note: {note}")


@app.command()
@friendly
@selection_options
def run(
    experiment: Experiment,
    selection: Selection,
    store: Store = None,
    config: ConfigPath = None,
    jobs: Annotated[int, typer.Option(min=1, help="runs (or packs) at a time")] = 1,
    pack: PackOption = "1",
    costs: Costs = None,
) -> None:
    """Run an experiment on this machine; finished runs are skipped (run again to resume)."""
    from viadk8s.backends import pack_size
    from viadk8s.backends.local import run_plan
    from viadk8s.config import load_config

    cfg = load_config(config, store=store)
    planned = plan(experiment, selection, cfg)
    for note in planned.notes:
        console.print(f"note: {note}")
    outcome = run_plan(planned, cfg, config, jobs, console, pack_size(pack), costs)
    console.print(f"{len(outcome.done)} done, {len(outcome.skipped)} skipped (already finished), {len(outcome.failed)} failed")
    _print_summary(cfg, planned.sweep.sweep_id, experiment)
    for failure in outcome.failed:
        what = f"{failure.spec.run_name} [{failure.spec.run_key}] exit {failure.exit_code}: {failure.reason}"
        console.print(f"[red]failed[/red] {escape(what)}", highlight=False)
        console.print(f"       log: {failure.log}", highlight=False)
    if outcome.failed:
        raise typer.Exit(1)


def _print_summary(config: Config, sweep_id: str, experiment: str) -> None:
    from viadk8s.aggregate import experiment_shape, render, tables
    from viadk8s.results import load_results

    results = load_results(config.open_store(), sweep_id=sweep_id)
    if results:
        named = tables(results, catalog.experiment(experiment).metrics, **experiment_shape(experiment))
        console.print(render(named["per_dataset"], "md"), highlight=False, markup=False)


@app.command()
@friendly
def worker(
    spec: Annotated[str, typer.Option("--spec", help="a run spec JSON file, or - for standard input")],
    store: Store = None,
    config: ConfigPath = None,
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
    store: Store = None,
    config: ConfigPath = None,
    format: Annotated[str, typer.Option("--format", help="md, csv or latex")] = "md",
    out: Annotated[Path | None, typer.Option(help="write the tables, plots and runs.csv into this folder")] = None,
    metrics: Annotated[str | None, typer.Option(help="comma-separated metrics (default: the experiment's)")] = None,
    compare: Annotated[
        str | None, typer.Option(help="a baseline runs.csv (path or s3://BUCKET/KEY): exit 1 on a regression")
    ] = None,
    tolerance: Annotated[float, typer.Option(help="with --compare: points (x100) a metric may drop")] = 1.0,
    ci: Annotated[bool, typer.Option("--ci", help="show bootstrap intervals: 91.4 [88.0, 94.3]")] = False,
    per_defect: Annotated[bool, typer.Option("--per-defect", help="add the per-defect-type table")] = False,
    operating_point: OperatingPoints = None,
    against: Annotated[
        str | None, typer.Option("--against", help="paper: the supplement's Tables 11-15 beside ours, with our intervals")
    ] = None,
) -> None:
    """The paper's tables of a sweep: per dataset (with the mean D), summary and per category."""
    from viadk8s import aggregate as agg
    from viadk8s import paper, stats
    from viadk8s.config import load_config
    from viadk8s.pixel_summary import load_summaries
    from viadk8s.regression import check
    from viadk8s.results import load_results, load_scores

    if (sweep is None) == (experiment is None):
        raise SpecError("give exactly one of --sweep ID or --experiment NAME")
    if format not in agg.FORMATS:
        raise one_of("format", format, list(agg.FORMATS))
    if against not in (None, "paper"):
        raise one_of("--against", against, ["paper"])
    if experiment:
        catalog.experiment(experiment)
    points = tuple(stats.OperatingPoint.parse(p) for p in operating_point or []) or stats.DEFAULT_POINTS
    cfg = load_config(config, store=store)
    opened = cfg.open_store()
    results = load_results(opened, sweep_id=sweep, experiment=experiment)
    if not results:
        raise SpecError(f"no finished run in {'sweep ' + repr(sweep) if sweep else 'experiment ' + repr(experiment)}")
    name = experiment or results[0].spec.experiment
    chosen = split_list(metrics) or catalog.experiment(name).metrics
    scores = load_scores(opened, results) if ci or per_defect or operating_point or against else {}
    pixel = load_summaries(opened, results) if ci or against else {}
    summary = agg.summarise(results, name, chosen, scores if ci or against else None, tables_with_intervals=ci, summaries=pixel)
    named = dict(summary.tables)
    if per_defect or operating_point:
        named["per_defect"] = agg.defect_table(summary.frame, scores, points)
    if against:
        comparison = paper.against_paper(results, summary)
        named.update(comparison.tables)
        for note in comparison.notes:
            err_console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
    for title, table in named.items():
        sys.stdout.write(f"\n{title} ({len(results)} runs)\n\n{agg.render(table, format)}\n")
    if out:
        written = agg.write(out, summary.frame, named, format, summary.plots)
        for path in written:
            err_console.print(f"wrote {path}", highlight=False)
    if compare:
        regressions = check(compare, results, chosen, tolerance, cfg.s3)
        for regression in regressions:
            err_console.print(f"regression: {regression}", highlight=False, markup=False)
        if regressions:
            raise typer.Exit(1)


@app.command()
@friendly
def calibrate(
    sweep: Annotated[str, typer.Option("--sweep", help="the sweep whose finished runs are fitted")],
    store: Store = None,
    config: ConfigPath = None,
    out: Annotated[Path | None, typer.Option(help="write the cost tables here (for --estimate --costs FILE)")] = None,
) -> None:
    """Fit the cost model to a sweep's timings, per device, model and size, and show how well it fits."""
    from viadk8s.config import load_config
    from viadk8s.cost import calibration_lines, dump_tables, fit, load_tables
    from viadk8s.results import load_results

    results = load_results(load_config(config, store=store).open_store(), sweep_id=sweep)
    if not results:
        raise SpecError(f"no finished run in sweep {sweep!r}")
    shipped = load_tables()[0][0]
    overhead = (
        f"overhead_s {shipped.overhead_s} s per run from the shipped table ({shipped.device}): result.json does not time it"
    )
    calibration = fit(results, shipped.overhead_s, f"viadk8s calibrate --sweep {sweep}: {len(results)} runs; {overhead}")
    for line in calibration_lines(calibration):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    if out:
        out.write_text(dump_tables(calibration.tables))
        err_console.print(f"wrote {out} ({', '.join(t.device for t in calibration.tables)})", highlight=False)
    else:
        sys.stdout.write(dump_tables(calibration.tables))


@app.command("catalog")
def catalog_command() -> None:
    """The models, datasets and experiments viadk8s knows, and which can run now."""
    table = Table(title="models")
    for column in ("key", "name", "group", "epochs", "class", "note"):
        table.add_column(column)
    for key, m in catalog.models().items():
        table.add_row(key, m.name, m.group, str(m.epochs), m.model_class, m.note)
    console.print(table)
    table = Table(title="datasets")
    for column in ("key", "name", "masks", "categories"):
        table.add_column(column)
    for key, d in catalog.datasets().items():
        table.add_row(key, d.name, d.masks, ", ".join(d.categories))
    console.print(table)
    table = Table(title="experiments")
    for column in ("key", "title", "axes", "datasets"):
        table.add_column(column)
    for key, e in catalog.experiments().items():
        table.add_row(key, e.title, json.dumps(e.axes), ", ".join(e.datasets))
    console.print(table)

"""How sure the numbers are: paired comparison of two models, and the sweep's HTML report."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from viadk8s.cli.common import ConfigPath, OperatingPoints, Store, app, console, err_console, friendly, split_list
from viadk8s.errors import SpecError


@app.command("compare")
@friendly
def compare_command(
    sweep: Annotated[str, typer.Option("--sweep", help="the sweep whose runs are compared")],
    models: Annotated[str, typer.Option("--models", help="two catalog keys: a,b (a minus b)")],
    metric: Annotated[str, typer.Option(help="an image or pixel metric")] = "image_AUROC",
    resamples: Annotated[int, typer.Option(min=100, help="bootstrap resamples")] = 1000,
    confidence: Annotated[float, typer.Option(min=0.5, max=0.999, help="interval level")] = 0.95,
    out: Annotated[Path | None, typer.Option(help="also write the tables and the critical difference diagram here")] = None,
    store: Store = None,
    config: ConfigPath = None,
) -> None:
    """Model a against model b per category (paired bootstrap on the same test images), then a rank
    test over every model of the sweep (Friedman, Nemenyi post-hoc, critical difference diagram)."""
    from viadk8s import compare, stats
    from viadk8s.aggregate import runs_frame
    from viadk8s.config import load_config
    from viadk8s.pixel_summary import PIXEL_METRICS, load_summaries
    from viadk8s.results import load_results, load_scores

    pair = split_list(models) or []
    if len(pair) != 2:
        raise SpecError(f"--models needs exactly two models as a,b; got {models!r}")
    opened = load_config(config, store=store).open_store()
    results = load_results(opened, sweep_id=sweep)
    if not results:
        raise SpecError(f"no finished run in sweep {sweep!r}")
    chosen = [r for r in results if r.spec.model in pair]
    pixel = load_summaries(opened, chosen) if metric in PIXEL_METRICS else {}
    found = compare.paired(chosen, load_scores(opened, chosen), *pair, metric, resamples, confidence, pixel)
    table = compare.paired_table(found, *pair)
    console.print(f"\n{pair[0]} - {pair[1]}, {metric} x100, {100 * confidence:g} % paired bootstrap intervals\n", highlight=False)
    sys.stdout.write(table.to_markdown(index=False) + "\n")
    verdicts = table["verdict"].value_counts()
    console.print("\n" + ", ".join(f"{n} × {v}" for v, n in verdicts.items()), highlight=False, markup=False)
    try:
        test = stats.rank_test(compare.category_table(runs_frame(results), metric))
    except SpecError as err:
        err_console.print(f"no rank test: {err}", highlight=False, markup=False)
        test = None
    if test is not None:
        console.print(
            f"\nFriedman over {test.n_blocks} categories: chi2={test.statistic:.3g}, p={test.p_value:.3g}; "
            f"mean ranks (1 = best; critical difference {test.critical_difference:.2f}):",
            highlight=False,
        )
        sys.stdout.write(test.mean_ranks.round(2).to_frame("mean rank").to_markdown() + "\n")
    if out:
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / ".paired.csv.tmp"
        table.to_csv(tmp, index=False)
        tmp.replace(out / "paired.csv")
        written = [out / "paired.csv"]
        if test is not None:
            written.append(compare.cd_diagram(test, metric, out / f"cd_{metric}.png"))
        for path in written:
            err_console.print(f"wrote {path}", highlight=False)


@app.command("report")
@friendly
def report_command(
    sweep: Annotated[str, typer.Option("--sweep", help="the sweep to report")],
    out: Annotated[Path, typer.Option(help="folder for report.html")] = Path("viadk8s-report"),
    operating_point: OperatingPoints = None,
    pictured: Annotated[int, typer.Option(min=0, help="runs whose histogram and overlays are embedded")] = 120,
    store: Store = None,
    config: ConfigPath = None,
) -> None:
    """A static HTML report of a sweep (one file, opens from disk), also stored beside the sweep
    and logged to the sweep's MLflow parent run."""
    from viadk8s import report, stats
    from viadk8s.config import load_config
    from viadk8s.results import load_results
    from viadk8s.tracking import log_report

    points = [stats.OperatingPoint.parse(p) for p in operating_point or []]
    settings = load_config(config, store=store)
    opened = settings.open_store()
    results = load_results(opened, sweep_id=sweep)
    path = report.write(opened, sweep, results, out, operating_points=points, pictured=pictured)
    log_report(path, settings.tracking_uri, settings.store_uri, results[0].spec.experiment, sweep)
    console.print(f"report: {path.resolve()}", highlight=False, soft_wrap=True)


@app.command("verify")
@friendly
def verify_command(
    sweep: Annotated[str, typer.Option("--sweep", help="the sweep whose stored results are re-checked")],
    store: Store = None,
    config: ConfigPath = None,
) -> None:
    """Re-check every stored result of a sweep: image metrics and intervals against a recomputation
    from its scores.csv, the scores' sha256, the dependency lock (a warning). Exit 1 on any disagreement."""
    from viadk8s.config import load_config
    from viadk8s.verify import verify_sweep

    found = verify_sweep(load_config(config, store=store).open_store(), sweep)
    for problem in found.problems:
        console.print(str(problem), highlight=False, markup=False, soft_wrap=True)
    for note in found.notes:
        console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
    warnings = len(found.problems) - found.errors
    console.print(
        f"verified {found.runs} runs of sweep {sweep}: {found.errors} disagreements, {warnings} warnings", highlight=False
    )
    if found.errors:
        raise typer.Exit(1)

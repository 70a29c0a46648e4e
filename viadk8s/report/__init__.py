"""``viadk8s report``: one static HTML file that shows a sweep the way a factory engineer needs it.

It answers first (:mod:`viadk8s.report.answer`): per headline metric a dot-and-whisker chart of
each method and one sentence naming the best and those that cannot be told apart from it; tables
with one metric per column; the paper's numbers beside ours. Then the paper-shaped tables, metric-vs-axis plots, score histograms,
the critical difference diagram, per-defect tables, overlays of each run's worst mistakes, time and
memory, and provenance. Every picture is embedded as a ``data:`` URI and the style sheet is inline,
so the one file opens from a disk, an object store or an MLflow artifact view, with no server and
no request leaving the machine. Everything in it is computed from what the store holds.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from viadk8s import aggregate as agg
from viadk8s import catalog, compare, paper, stats
from viadk8s.data.mirror import manifest_key
from viadk8s.errors import SpecError, Viadk8sError
from viadk8s.pixel_summary import load_summaries
from viadk8s.report import answer
from viadk8s.results import HISTOGRAM, RunResult, load_scores, run_prefix
from viadk8s.store import Store

REPORT = "report.html"
log = logging.getLogger(__name__)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _html(table: pd.DataFrame) -> str:
    return table.to_html(classes="table", border=0, escape=True, na_rep=agg.MISSING)


def _stored_png(store: Store, key: str) -> str | None:
    try:
        return _data_uri(store.read_bytes(key))
    except FileNotFoundError:
        return None


def _datasets(store: Store, results: Sequence[RunResult]) -> list[dict[str, str]]:
    """Each dataset and how to know it is the same one: its store manifest's sha256 when it was
    uploaded, else what it is (a synthetic recipe or a local folder, which carry no manifest)."""
    rows = []
    for name in sorted({r.spec.dataset for r in results}):
        try:
            digest = hashlib.sha256(store.read_bytes(manifest_key(name))).hexdigest()
            rows.append({"dataset": name, "manifest sha256": digest})
        except FileNotFoundError:
            entry = catalog.datasets().get(name)
            kind = (
                "generated (synthetic recipe)"
                if entry and entry.synthetic
                else "local folder or generated: no manifest in the store"
            )
            rows.append({"dataset": name, "manifest sha256": kind})
    return rows


def _rank_section(frame: pd.DataFrame, metric: str) -> dict[str, Any]:
    table = compare.category_table(frame, metric)
    try:
        test = stats.rank_test(table)
    except SpecError as err:
        return {"note": str(err)}
    with tempfile.TemporaryDirectory() as tmp:
        path = compare.cd_diagram(test, metric, Path(tmp) / "cd.png")
        image = _data_uri(path.read_bytes())
    ranks = test.mean_ranks.rename("mean rank").round(2).to_frame()
    return {
        "image": image,
        "ranks": _html(ranks),
        "statistic": test.statistic,
        "p_value": test.p_value,
        "cd": test.critical_difference,
    }


def _costs(frame: pd.DataFrame, results: Sequence[RunResult]) -> pd.DataFrame:
    names = {k: m.name for k, m in catalog.models().items()}
    table = frame.groupby("model", sort=False)[["fit_s", "test_s", "test_images_per_s", "peak_memory_mb"]].mean().round(1)
    table.index = table.index.map(names)
    devices = pd.Series({names[r.spec.model]: r.device for r in results}, name="device")
    return table.join(devices).rename_axis("model")


#: Runs whose histogram and overlays are embedded (~0.2 MB each): a paper-size sweep of 800 runs
#: would otherwise make a 160 MB page. Raise it with ``viadk8s report --pictured N``.
PICTURED = 120


def build(
    store: Store,
    sweep_id: str,
    results: Sequence[RunResult],
    operating_points: Sequence[stats.OperatingPoint] = (),
    pictured: int = PICTURED,
) -> str:
    """The report of a sweep's results, as one HTML document."""
    if not results:
        raise SpecError(f"no finished run in sweep {sweep_id!r}")
    experiment = results[0].spec.experiment
    metrics = catalog.experiment(experiment).metrics
    scores = load_scores(store, results)
    summary = agg.summarise(results, experiment, scores=scores, summaries=load_summaries(store, results))  # the runs frame, once
    points = tuple(operating_points) or stats.DEFAULT_POINTS
    try:
        defects = _html(agg.defect_table(summary.frame, scores, points))
    except SpecError as err:
        defects = None
        log.warning("warning: no per-defect table: %s", err)
    confidence = summary.confidence or 0.95
    separate = catalog.experiment(experiment).separate
    ran = list(dict.fromkeys(summary.frame["dataset"]))
    averaged = [d for d in ran if d.split("+")[0] not in separate] or ran  # the datasets of the mean, as aggregate's
    kept: dict[tuple[str, str], stats.PairedBootstrap] = {}  # one paired bootstrap per pair of runs serves every metric
    headlines = [
        answer.headline(summary.estimates, summary.frame, scores, m, summary.axis, averaged, confidence, kept) for m in metrics
    ]
    compared = paper.against_paper(results, summary)
    costs, cost_source = answer.cost_check(results)
    frame = summary.frame.set_index("run_key")
    runs = []
    ordered = sorted(results, key=lambda r: (frame.loc[r.run_key, "method"], r.spec.dataset, r.spec.category, r.spec.seed))
    for i, result in enumerate(ordered):
        prefix = run_prefix(result.spec)
        shown = i < pictured
        runs.append(
            {
                "result": result,
                "method": frame.loc[result.run_key, "method"],
                "pictured": shown,
                "histogram": _stored_png(store, f"{prefix}/{HISTOGRAM}") if shown else None,
                "overlays": [(o, _stored_png(store, f"{prefix}/{o.file}")) for o in result.overlays] if shown else [],
                "spec": result.spec.model_dump_json(indent=1),
            }
        )
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("viadk8s", "report"), autoescape=True, undefined=jinja2.StrictUndefined
    )
    return environment.get_template("report.html.j2").render(
        sweep=sweep_id,
        experiment=catalog.experiment(experiment),
        generated=datetime.now(UTC).isoformat(timespec="seconds"),
        viadk8s_version=metadata.version("viadk8s"),
        confidence=confidence,
        n_runs=len(results),
        headlines=headlines,
        intervals=summary.confidence is not None,
        metric_tables={
            "per dataset": answer.metric_table(summary.estimates, "dataset", metrics, summary.axis),
            "per category": answer.metric_table(summary.estimates, "category", metrics, summary.axis),
        },
        paper_tables={k: _html(v) for k, v in compared.tables.items()},
        paper_notes=compared.notes,
        shaped={k: _html(v) for k, v in summary.tables.items()},
        plots=[_data_uri(png) for png in summary.plots.values()],
        ranks={m: _rank_section(summary.frame, m) for m in metrics if m.startswith("image_")},
        points=[str(p) for p in points],
        defects=defects,
        runs=runs,
        not_pictured=max(0, len(runs) - pictured),
        costs=_html(_costs(summary.frame, results)),
        estimate_check=_html(costs),
        estimate_source=cost_source,
        versions=sorted({tuple(sorted(r.versions.items())) for r in results}),
        datasets=_datasets(store, results),
        css=(Path(__file__).parent / "report.css").read_text(),
    )


def write(store: Store, sweep_id: str, results: Sequence[RunResult], out: Path, **options: Any) -> Path:
    """Write ``out/report.html`` (temporary name, then rename) and a copy beside the sweep in the store."""
    html = build(store, sweep_id, results, **options)
    out.mkdir(parents=True, exist_ok=True)
    path = out / REPORT
    tmp = out / f".{REPORT}.tmp"
    tmp.write_text(html)
    tmp.replace(path)
    try:
        store.write_bytes(f"sweeps/{sweep_id}/{REPORT}", html.encode())
    except Viadk8sError as err:  # read-only credentials: the local copy is still the report
        log.warning("warning: could not store the report beside the sweep: %s", err)
    return path

"""A real three-model sweep, then what a factory engineer reads from it: intervals in the tables,
the per-defect table (against a hand count), ``viadk8s compare``, and the HTML report opened in a
real headless browser (Debian's chromium) from the file system."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import TINY

MODELS = "patchcore,padim,fastflow"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"  # kept after the run: look at them


@contextmanager
def browser_page() -> Iterator[tuple[Any, list[str], list[str]]]:
    """A page of Debian's headless chromium, with the console's errors and warnings and every URL it
    requested (a report must fetch nothing); skipped without chromium, failed in CI."""
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("CI must open the report in chromium: .ci/run installs Debian's chromium")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        problems: list[str] = []
        requests: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        try:
            yield page, problems, requests
        finally:
            browser.close()


def viadk8s(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "viadk8s", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},
        timeout=900,
        check=False,
    )


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished sweep: three models on two tiny categories (six runs); the folder holds viadk8s.yaml."""
    root = tmp_path_factory.mktemp("sweep")
    config = {"store": str(root / "store"), "datasets": {"tiny": {"synthetic": TINY}}, "report": {"resamples": 500}}
    (root / "viadk8s.yaml").write_text(yaml.safe_dump(config))
    done = viadk8s(
        root, "run", "--experiment", "evaluation", "--models", MODELS, "--datasets", "tiny", "--image-size", "64",
        "--weights", "random", "--max-epochs", "1", "--jobs", "2",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root


def results(root: Path) -> list[tuple[dict, pd.DataFrame]]:
    found = []
    for path in sorted((root / "store" / "runs" / "evaluation").glob("*/result.json")):
        found.append((json.loads(path.read_text()), pd.read_csv(path.parent / "scores.csv")))
    return found


def test_ci_tables_show_each_runs_stored_interval(sweep: Path) -> None:
    out = viadk8s(sweep, "aggregate", "--sweep", "evaluation", "--ci", "--format", "csv", "--out", str(sweep / "ci"))
    assert out.returncode == 0, out.stderr
    per_category = pd.read_csv(sweep / "ci" / "per_category.csv", index_col=0)
    names = {"patchcore": "PatchCore", "padim": "PaDiM", "fastflow": "FastFlow"}
    for result, _ in results(sweep):
        spec, kept = result["spec"], result["uncertainty"]
        assert kept["resamples"] == 500 and kept["seed"] == spec["seed"]
        low, high = kept["intervals"]["image_AUROC"]
        cell = per_category.loc[names[spec["model"]], f"tiny/{spec['category']}"]
        assert cell.startswith(f"{100 * result['metrics']['image_AUROC']:.1f} [{100 * low:.1f}, {100 * high:.1f}]/"), cell


def test_per_defect_table_matches_a_hand_count(sweep: Path) -> None:
    out = viadk8s(
        sweep,
        "aggregate",
        "--sweep",
        "evaluation",
        "--format",
        "csv",
        "--out",
        str(sweep / "defects"),
        "--operating-point",
        "fpr=0.1",
    )
    assert out.returncode == 0, out.stderr
    table = pd.read_csv(sweep / "defects" / "per_defect.csv").set_index(["method", "category", "defect"])
    names = {"patchcore": "PatchCore", "padim": "PaDiM", "fastflow": "FastFlow"}
    checked = 0
    for result, scores in results(sweep):
        good = np.sort(scores.loc[scores.label == 0, "score"].to_numpy())
        threshold = np.quantile(good, 0.9)  # rejects 10 % of the good images
        for defect, part in scores.groupby("defect"):
            row = table.loc[(names[result["spec"]["model"]], result["spec"]["category"], defect)]
            values = part["score"].to_numpy()
            assert row["images"] == len(values)
            assert row["rejected@fpr=0.1"] == pytest.approx(round(100 * np.mean(values > threshold), 1))
            if defect != "good":
                wins = sum((v > good).sum() + 0.5 * (v == good).sum() for v in values)
                assert float(row["AUROC"]) == pytest.approx(round(100 * wins / (len(values) * len(good)), 1))
            checked += 1
    assert checked == 6 * 4  # six runs x (good + three defect types)


def test_compare_answers_and_refuses_different_test_sets(sweep: Path, tmp_path: Path) -> None:
    out = viadk8s(sweep, "compare", "--sweep", "evaluation", "--models", "patchcore,padim", "--out", str(sweep / "compare"))
    assert out.returncode == 0, out.stderr
    paired = pd.read_csv(sweep / "compare" / "paired.csv")
    assert sorted(paired["category"]) == ["fabric", "tiles"]
    assert set(paired["verdict"]) <= {"patchcore better", "patchcore worse", "no detectable difference"}
    assert "Friedman over 2 categories" in out.stdout and (sweep / "compare" / "cd_image_AUROC.png").stat().st_size > 0

    changed = tmp_path / "changed"
    shutil.copytree(sweep, changed)
    config = yaml.safe_load((changed / "viadk8s.yaml").read_text()) | {"store": str(changed / "store")}
    (changed / "viadk8s.yaml").write_text(yaml.safe_dump(config))
    result = next(r for r, _ in results(changed) if r["spec"]["model"] == "padim")
    path = changed / "store" / "runs" / "evaluation" / result["run_key"] / "scores.csv"
    scores = pd.read_csv(path)
    scores.loc[0, "image_path"] = "test/good/another.png"
    scores.to_csv(path, index=False)
    refused = viadk8s(changed, "compare", "--sweep", "evaluation", "--models", "patchcore,padim")
    assert refused.returncode == 2 and "different images" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_report_opens_in_a_real_browser_with_nothing_missing(sweep: Path) -> None:
    out = viadk8s(sweep, "report", "--sweep", "evaluation", "--out", str(sweep / "report"))
    assert out.returncode == 0, out.stderr
    path = sweep / "report" / "report.html"
    assert str(path) in out.stdout.replace("\n", "")
    assert (sweep / "store" / "sweeps" / "evaluation" / "report.html").read_text() == path.read_text()
    with browser_page() as (page, problems, requests):
        page.goto(path.as_uri(), wait_until="load")
        images = page.eval_on_selector_all("img", "all => all.map(i => [i.alt, i.complete && i.naturalWidth > 0])")
        headings = page.eval_on_selector_all("h2", "all => all.map(h => h.textContent)")
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    assert problems == []
    assert all(url.startswith(("file://", "data:")) for url in requests), requests  # nothing leaves the machine
    assert [url for url in requests if url.startswith("file://")] == [path.as_uri()]
    assert images and all(loaded for _, loaded in images), [alt for alt, loaded in images if not loaded]
    alts = [alt for alt, _ in images]
    assert (
        sum(a == "score histogram" for a in alts) == 6 and sum(a.startswith("critical difference") for a in alts) == 3
    )  # AUROC, PG2, PB2
    assert sum(a.startswith("test/") for a in alts) == 6 * 8  # four good and four bad overlays per run
    assert headings[:2] == ["Which model, and how sure", "Tables"] and "Provenance" in headings


def test_a_report_builds_the_runs_frame_once_and_enters_aggregate_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Following the calls from ``report.build``: one runs frame, and control enters aggregate.py
    (a call into it from another viadk8s module) at most twice."""
    from tests.fake_sweep import fake_sweep
    from viadk8s import aggregate, report
    from viadk8s.store import FileStore

    store = FileStore(tmp_path / "store")
    results = fake_sweep(store, {"patchcore": 2.0, "padim": 1.5, "fastflow": 1.0}, ["tiles", "fabric"])
    built, entries = [], []
    original = aggregate.runs_frame
    monkeypatch.setattr(aggregate, "runs_frame", lambda found: built.append(len(found)) or original(found))
    here = aggregate.__file__

    def profile(frame, event, arg) -> None:  # noqa: ANN001
        caller = frame.f_back
        if event == "call" and frame.f_code.co_filename == here and caller is not None:
            source = caller.f_code.co_filename
            if f"{os.sep}viadk8s{os.sep}" in source and source != here:
                entries.append(f"{frame.f_code.co_name} from {Path(source).name}")

    sys.setprofile(profile)
    try:
        html = report.build(store, "fake", results)
    finally:
        sys.setprofile(None)
    assert built == [6] and len(entries) <= 2, entries
    assert "PatchCore" in html


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A made-up sweep of the demo's shape: three models on two categories, 60 good and 60 bad test
    images each; PaDiM's scores lie nearly as far from the good ones as PatchCore's, FastFlow's not at all."""
    from tests.fake_sweep import fake_sweep
    from viadk8s.store import FileStore

    store = FileStore(tmp_path_factory.mktemp("fake") / "store")
    models = {"patchcore": 2.5, "padim": 2.4, "fastflow": 0.0}
    return store, fake_sweep(store, models, ["tiles", "fabric"], images=(60, 60))


def test_the_answer_names_the_best_and_those_it_cannot_be_told_from(fake: tuple) -> None:
    from viadk8s import aggregate, compare, stats
    from viadk8s.report import answer
    from viadk8s.results import load_scores

    store, results = fake
    scores = load_scores(store, results)
    summary = aggregate.summarise(results, "evaluation", scores=scores)
    found = answer.headline(summary.estimates, summary.frame, scores, "image_AUROC", None, ["synthetic"], 0.95, {})
    (line,) = found["sentences"]
    means = {r.spec.model: [] for r in results}
    for r in results:
        means[r.spec.model].append(r.metrics["image_AUROC"])
    best = max(means, key=lambda m: sum(means[m]))
    assert best in ("patchcore", "padim") and line.startswith(
        f"Best on im.AUROC: {'PatchCore' if best == 'patchcore' else 'PaDiM'} ("
    )
    assert "Cannot be told apart from it" in line and "Below it: FastFlow (−" in line
    # the tie's interval is the paired bootstrap of the mean over the two categories, recomputed here
    other = "padim" if best == "patchcore" else "patchcore"
    pairs = []
    for category in ("tiles", "fabric"):
        a, b = (next(r for r in results if r.spec.model == m and r.spec.category == category) for m in (other, best))
        pairs.append(stats.paired_bootstrap(scores[a.run_key], scores[b.run_key], seed=a.spec.seed))
    tie = stats.mean_difference(pairs, [0.5, 0.5], "image_AUROC")
    alone = stats.paired_difference(scores[a.run_key], scores[b.run_key], "image_AUROC", seed=a.spec.seed)
    assert (alone.low, alone.high) == tuple(pairs[-1].intervals[0])  # one bootstrap for all metrics: the same interval
    assert tie.low <= 0 <= tie.high and f"[{100 * tie.low:+.1f}, {100 * tie.high:+.1f}]".replace("-", "−") in line
    assert tie.estimate == pytest.approx((sum(means[other]) - sum(means[best])) / 2)
    versus = compare.against_best(summary.frame, scores, "image_AUROC", "PatchCore")
    assert [v.method for v in versus] == ["FastFlow", "PaDiM"] and versus[0].difference.high < 0
    svg = str(found["chart"])
    assert svg.count("<circle") == 3 and svg.count('class="whisker"') == 3 * 3  # a line and two end ticks each
    table = answer.metric_table(summary.estimates, "category", ["image_AUROC", "pixel_AUPRO"], None)
    assert table.header == ["method", "dataset", "category", "im.AUROC", "pix.AUPRO"] and len(table.rows) == 6
    keys, cells = table.rows[0]
    run = next(r for r in results if r.spec.model == "patchcore" and r.spec.category == keys[2])
    low, high = run.uncertainty.intervals["image_AUROC"]
    assert cells[0] == (f"{100 * run.metrics['image_AUROC']:.1f}", f"[{100 * low:.1f}, {100 * high:.1f}]")
    assert cells[1] == (f"{100 * run.metrics['pixel_AUPRO']:.1f}", "")  # no pixel summary: no interval


def test_estimate_against_actual_per_model_hand_computed(fake: tuple, tmp_path: Path) -> None:
    from viadk8s.report import answer

    _, results = fake
    table = [{"device": "test", "source": "hand", "overhead_s": 9.0, "coefficients": [
        {"model": "patchcore", "image_size": 256, "start_s": 2.0, "train_s": 0.5, "test_s": 0.1, "runs": 1},
    ]}]  # fmt: skip
    path = tmp_path / "costs.yaml"
    path.write_text(yaml.safe_dump(table))
    frame, source = answer.cost_check(results, str(path))
    patchcore = [r for r in results if r.spec.model == "patchcore"]
    # per run: start 2 + 1 epoch x 40 train images x 0.5 + 120 test images x 0.1 = 34 s (overhead left out)
    assert frame.loc["patchcore", "estimated s"] == pytest.approx(2 * 34.0)
    assert frame.loc["patchcore", "actual s"] == pytest.approx(
        round(sum(r.timings.fit_s + r.timings.test_s for r in patchcore), 1)
    )
    assert frame.loc["padim", "not in the table"] == 2 and frame.loc["padim", ["estimated s", "actual / estimated"]].isna().all()
    assert "measured on test" in source and "runs on cpu" in source


def test_the_report_of_a_made_up_sweep_answers_first_in_a_real_browser(fake: tuple, tmp_path: Path) -> None:
    from viadk8s import report

    store, results = fake
    path = report.write(store, "fake", results, tmp_path)
    with browser_page() as (page, problems, requests):
        page.goto(path.as_uri(), wait_until="load")
        headings = page.eval_on_selector_all("h2", "all => all.map(h => h.textContent)")
        charts = page.eval_on_selector_all("svg.chart", "all => all.map(s => s.getBoundingClientRect().width)")
        first = page.eval_on_selector("p.answer", "p => p.textContent")
        grey = page.eval_on_selector("table.metrics td small", "s => getComputedStyle(s).color")
        page.screenshot(path=str(ARTIFACTS / "report-fake.png"), full_page=True)
    assert problems == [] and requests == [path.as_uri()]  # nothing fetched
    assert headings[:4] == ["Which model, and how sure", "Tables", "Beside the paper", "Paper-shaped tables"]
    assert len(charts) == 5 and all(w > 300 for w in charts)  # one per headline metric of the evaluation
    assert first.startswith("Best on im.AUROC:") and grey == "rgb(122, 132, 148)"
    assert "do not report the evaluation experiment: nothing to compare" in path.read_text()

"""A real three-model sweep, then what a factory engineer reads from it: intervals in the tables,
the per-defect table (against a hand count), ``viadk8s compare``, and the HTML report opened in a
real headless browser (Debian's chromium) from the file system."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import TINY

MODELS = "patchcore,padim,fastflow"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"  # kept after the run: look at them


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
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("CI must open the report in chromium: .ci/run installs Debian's chromium")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    out = viadk8s(sweep, "report", "--sweep", "evaluation", "--out", str(sweep / "report"))
    assert out.returncode == 0, out.stderr
    path = sweep / "report" / "report.html"
    assert str(path) in out.stdout.replace("\n", "")
    assert (sweep / "store" / "sweeps" / "evaluation" / "report.html").read_text() == path.read_text()
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        problems, requests = [], []
        page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(path.as_uri(), wait_until="load")
        images = page.eval_on_selector_all("img", "all => all.map(i => [i.alt, i.complete && i.naturalWidth > 0])")
        headings = page.eval_on_selector_all("h2", "all => all.map(h => h.textContent)")
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        browser.close()
    assert problems == []
    assert all(url.startswith(("file://", "data:")) for url in requests), requests  # nothing leaves the machine
    assert [url for url in requests if url.startswith("file://")] == [path.as_uri()]
    assert images and all(loaded for _, loaded in images), [alt for alt, loaded in images if not loaded]
    alts = [alt for alt, _ in images]
    assert (
        sum(a == "score histogram" for a in alts) == 6 and sum(a.startswith("critical difference") for a in alts) == 3
    )  # AUROC, PG2, PB2
    assert sum(a.startswith("test/") for a in alts) == 6 * 8  # four good and four bad overlays per run
    assert headings[:2] == ["Tables with 95 % intervals", "Paper-shaped tables"] and "Provenance" in headings


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

"""The paper's Tables 11-15 in the catalog, and `aggregate --against paper` beside a sweep."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from viadk8s import aggregate as agg
from viadk8s import catalog
from viadk8s.paper import against_paper
from viadk8s.results import DataSummary, RunResult, Timings
from viadk8s.spec import RunSpec, Variant
from viadk8s.spec import column as axis_column

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "paper-tables.md"


def _printed() -> dict[str, tuple[list[str], list[str], dict[tuple[str, str], list[str]]]]:
    """Per table as the reference prints it: metric names from the heading, column headers, and
    the cells of each (model abbreviation, dataset as printed or "") row."""
    tables = {}
    for number, heading, body in re.findall(r"## Table (\d+)\.([^\n]*)\n+```\n(.*?)```", REFERENCE.read_text(), re.S):
        metrics = re.search(r"(\w+\.\w+(?:/\w+\.\w+)+)", heading).group(1).split("/")
        header, *lines = [line.split("\t") for line in body.splitlines() if "\t" in line]
        per_dataset = header[1] == "Dataset"
        rows, model = {}, ""
        for cells in lines:
            model = cells[0] or model
            rows[(model, cells[1] if per_dataset else "")] = cells[2:] if per_dataset else cells[1:]
        tables[number] = (metrics, header[2:] if per_dataset else header[1:], rows)
    return tables


def _key(printed: str, entries: dict) -> str:
    """A printed abbreviation or name (any case) as its catalog key."""
    (key,) = [k for k, e in entries.items() if printed.lower() in (e.abbrev.lower(), e.name.lower())]
    return key


@pytest.mark.skipif(not REFERENCE.exists(), reason="the reference tables are not checked out beside the repo")
def test_every_printed_value_is_transcribed() -> None:
    printed = _printed()
    assert sorted(printed) == sorted(catalog.paper()) == ["11", "12", "13", "14", "15"]
    expected: dict[tuple[str, str, str, str, str, str], float] = {}
    for number, (metrics, headers, rows) in printed.items():
        table = catalog.paper()[number]
        assert [catalog.abbrev(m) for m in table.metrics] == metrics
        assert [c.header for c in table.columns] == headers
        label = axis_column(next(iter(catalog.experiment(table.experiment).axes))).label
        for (model, dataset), cells in rows.items():
            assert len(cells) == len(headers), (number, model, dataset)
            for column, cell in zip(table.columns, cells, strict=True):
                where = column.dataset or _key(dataset, catalog.datasets())
                for metric, value in zip(table.metrics, cell.split("/"), strict=True):
                    key = (number, _key(model, catalog.models()), where, label(column.value), metric)
                    expected[key] = float(value)
    transcribed = {
        (c.table, c.model, c.dataset, axis_column(c.axis).label(c.value), c.metric): round(100 * c.paper, 1)
        for c in catalog.paper_cells()
    }
    assert len(catalog.paper_cells()) == len(transcribed) == 554  # no cell twice
    assert transcribed == expected


TIMINGS = Timings(fit_s=1, test_s=1, test_images_per_s=10, peak_memory_mb=100, memory_kind="cpu_rss")


def _result(model: str, dataset: str, category: str, contamination: float, seed: int, **metrics: float) -> RunResult:
    spec = RunSpec(
        sweep="nl",
        experiment="noisy_labels",
        model=model,
        dataset=dataset,
        category=category,
        seed=seed,
        variant=Variant(contamination=contamination),
    )
    data = DataSummary(n_train=10, n_test_good=4, n_test_bad=4, pixel_masks=dataset != "vad")
    return RunResult(
        run_key=spec.run_key, spec=spec, metrics=metrics, timings=TIMINGS, data=data, epochs=1, device="cpu", versions={},
        finished_at="2026-01-01T00:00:00+00:00",
    )  # fmt: skip


def test_our_cells_beside_the_papers_hand_computed() -> None:
    """PatchCore at 4 % contamination on Table 13's three datasets (two SensumSODF categories, two
    seeds on VAD), and Table 11's D: the mean of the three dataset means."""
    results = [
        _result("patchcore", "sensum_sodf", "capsule", 0.04, 1, image_AUROC=0.90, pixel_AUPRO=0.90, image_PG2=0.2, image_PB2=0.8),
        _result("patchcore", "sensum_sodf", "softgel", 0.04, 1, image_AUROC=0.96, pixel_AUPRO=0.92, image_PG2=0.4, image_PB2=0.6),
        _result("patchcore", "viaduct", "pcb", 0.04, 1, image_AUROC=0.818, pixel_AUPRO=0.70, image_PG2=0.3, image_PB2=0.9),
        _result("patchcore", "vad", "vad", 0.04, 1, image_AUROC=0.80, image_PG2=0.1, image_PB2=0.5),
        _result("patchcore", "vad", "vad", 0.04, 2, image_AUROC=0.90, image_PG2=0.3, image_PB2=0.7),
    ]
    found = against_paper(results, agg.summarise(results, "noisy_labels"))
    t13 = found.tables["paper_table_13"].reset_index()
    mine = {(r["dataset"], r["setting"], r["metric"]): r for r in t13[t13["method"] == "PatchCore"].to_dict("records")}
    sodf = mine[("sensum_sodf", "4%", "im.AUROC")]
    assert [sodf[c] for c in ("paper", "ours", "difference", "interval", "paper inside")] == ["92.6", "93.0", "+0.4", "", ""]
    assert mine[("sensum_sodf", "4%", "pix.AUPRO")]["difference"] == "+0.0"  # 91.0 vs 91.0
    assert mine[("viaduct", "4%", "im.AUROC")]["difference"] == "+0.0"
    vad = mine[("vad", "4%", "im.AUROC")]
    assert [vad[c] for c in ("paper", "ours", "difference")] == ["87.4", "85.0±5.0", "-2.4"]
    assert ("vad", "4%", "pix.AUPRO") not in mine  # the paper's 0.0 on a dataset without masks is no value
    assert mine[("sensum_sodf", "8%", "im.AUROC")]["ours"] == ""  # the paper's, not run here: ours empty
    others = t13[t13["method"] != "PatchCore"]  # the paper's other models: their cells, ours empty
    assert len(others) == 7 * 3 * 3 * 2 - 7 * 3 and set(others["ours"]) == {""}
    t11 = found.tables["paper_table_11"].reset_index()
    d4 = t11[(t11["method"] == "PatchCore") & (t11["dataset"] == "D") & (t11["setting"] == "4%")].set_index("metric")
    # D (seed 1) = mean(0.3, 0.3, 0.1) = 0.2333 for PG2; seed 2 has VAD only: no D, so seed 1's alone
    assert d4.loc["im.PG2", "ours"] == "23.3" and d4.loc["im.PG2", "paper"] == "30.0" and d4.loc["im.PG2", "difference"] == "-6.7"
    assert d4.loc["im.PB2", "ours"] == "70.0"
    assert any("Table 13" in note and "cells compared" in note for note in found.notes)
    assert any("vad" in note and "no masks" in note for note in found.notes)


def _scores(good: list[float], bad: list[float]) -> pd.DataFrame:
    labels = [0] * len(good) + [1] * len(bad)
    return pd.DataFrame({"image_path": [f"{i}.png" for i in range(len(labels))], "label": labels, "score": good + bad})


def test_the_papers_value_inside_or_outside_our_interval() -> None:
    """Perfect separation: every replicate gives AUROC 1.0, an interval [100.0, 100.0] that the
    paper's 92.6 is outside of; ties everywhere: 50.0 for every replicate."""
    results = [
        _result("patchcore", "sensum_sodf", "capsule", 0.04, 1, image_AUROC=1.0),
        _result("patchcore", "viaduct", "pcb", 0.04, 1, image_AUROC=0.5),
    ]
    scores = {
        results[0].run_key: _scores([0.1, 0.2, 0.3], [0.7, 0.8, 0.9]),
        results[1].run_key: _scores([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
    }
    table = (
        against_paper(results, agg.summarise(results, "noisy_labels", scores=scores)).tables["paper_table_13"].loc["PatchCore"]
    )
    rows = table.reset_index().set_index(["dataset", "setting", "metric"])
    assert rows.loc[("sensum_sodf", "4%", "im.AUROC"), ["interval", "paper inside"]].tolist() == ["[100.0, 100.0]", "no"]
    assert rows.loc[("viaduct", "4%", "im.AUROC"), ["ours", "interval", "difference"]].tolist() == [
        "50.0",
        "[50.0, 50.0]",
        "-31.8",
    ]
    assert rows.loc[("sensum_sodf", "4%", "pix.AUPRO"), "ours"] == ""


def test_a_sweep_on_other_data_or_experiments_is_one_note() -> None:
    other = _result("patchcore", "mpdd", "tubes", 0.04, 1, image_AUROC=0.9)
    found = against_paper([other], agg.summarise([other], "noisy_labels"))
    assert found.tables == {} and len(found.notes) == 1 and "nothing to compare" in found.notes[0]
    spec = RunSpec(sweep="e", experiment="evaluation", model="padim", dataset="visa", category="pcb1", seed=1)
    evaluation = other.model_copy(update={"spec": spec, "run_key": spec.run_key})
    assert (
        "do not report the evaluation experiment"
        in against_paper([evaluation], agg.summarise([evaluation], "evaluation")).notes[0]
    )

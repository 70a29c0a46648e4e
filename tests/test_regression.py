"""The nightly regression gate: results against a baseline runs.csv written by `aggregate --out`."""

from __future__ import annotations

from pathlib import Path

import pytest

from viadk8s.aggregate import tables, write
from viadk8s.errors import SpecError
from viadk8s.regression import check
from viadk8s.results import DataSummary, RunResult, Timings
from viadk8s.spec import RunSpec

METRICS = ["image_AUROC", "pixel_AUPRO"]


def _result(model: str, category: str, seed: int, auroc: float, aupro: float | None = 0.8) -> RunResult:
    spec = RunSpec(sweep="nightly-1", experiment="evaluation", model=model, dataset="synthetic", category=category, seed=seed)
    return RunResult(
        run_key=spec.run_key,
        spec=spec,
        metrics={"image_AUROC": auroc, "pixel_AUPRO": aupro},
        timings=Timings(fit_s=1, test_s=1, test_images_per_s=10, peak_memory_mb=100, memory_kind="cpu_rss"),
        data=DataSummary(n_train=10, n_test_good=5, n_test_bad=5, pixel_masks=True),
        epochs=1,
        device="cpu",
        versions={},
        finished_at="2026-01-01T00:00:00+00:00",
    )


def _baseline(tmp_path: Path, results: list[RunResult]) -> Path:
    """The runs.csv exactly as `viadk8s aggregate --out` writes it."""
    write(tmp_path / "tables", results, tables(results, METRICS), "csv")
    return tmp_path / "tables" / "runs.csv"


BASE = [
    _result("patchcore", "tiles", 1, 0.90),
    _result("patchcore", "fabric", 1, 0.80),
    _result("padim", "tiles", 1, 0.70, None),
    _result("padim", "fabric", 1, 0.70, None),
]


def test_identical_results_pass(tmp_path: Path) -> None:
    assert check(_baseline(tmp_path, BASE), BASE, METRICS, tolerance=0.0) == []


def test_a_drop_beyond_the_tolerance_is_named(tmp_path: Path) -> None:
    # patchcore: (0.90 + 0.80) / 2 = 85.0 points before; (0.90 + 0.76) / 2 = 83.0 now
    now = [BASE[0], _result("patchcore", "fabric", 1, 0.76), *BASE[2:]]
    (regression,) = check(_baseline(tmp_path, BASE), now, METRICS, tolerance=1.5)
    assert str(regression) == "patchcore on synthetic (256px, imagenet, epochs=1) image_AUROC: 85.0 -> 83.0 (-2.0 points)"
    assert check(_baseline(tmp_path, BASE), now, METRICS, tolerance=2.5) == []


def test_missing_results_are_regressions_and_absent_metrics_are_not(tmp_path: Path) -> None:
    regressions = check(_baseline(tmp_path, BASE), BASE[:2], METRICS, tolerance=1.0)
    padim = "padim on synthetic (256px, imagenet, epochs=1) image_AUROC: baseline 70.0, no result now"
    assert [str(r) for r in regressions] == [padim]


def test_several_seeds_average_per_category_first(tmp_path: Path) -> None:
    now = [*BASE, _result("patchcore", "tiles", 2, 0.80), _result("patchcore", "fabric", 2, 0.90)]
    assert check(_baseline(tmp_path, BASE), now, METRICS, tolerance=0.1) == []


@pytest.mark.parametrize(
    ("baseline", "tolerance", "message"),
    [
        ("missing.csv", 1.0, "cannot read baseline"),
        ("bad.csv", 1.0, "lacks columns model, dataset, image_size"),
        ("ok", -1.0, "tolerance -1.0 is not allowed"),
    ],
)
def test_bad_baseline_or_tolerance_is_one_line(tmp_path: Path, baseline: str, tolerance: float, message: str) -> None:
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    path = _baseline(tmp_path, BASE) if baseline == "ok" else tmp_path / baseline
    with pytest.raises(SpecError, match=message):
        check(path, BASE, METRICS, tolerance)

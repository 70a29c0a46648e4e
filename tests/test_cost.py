"""The cost model: a fit that recovers known coefficients, calibration from a real run, and
``--estimate`` totals computed by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from viadk8s import catalog
from viadk8s.config import Config
from viadk8s.cost import CostTable, estimate, fit, load_tables, planned_work
from viadk8s.plan import Selection, plan
from viadk8s.results import DataSummary, RunResult, Timings
from viadk8s.spec import RunSpec, Variant


def result(model: str, device: str, n_train: int, n_test: int, epochs: int, fit_s: float, test_s: float) -> RunResult:
    """A finished run's result with the given sizes and timings (supervised models: k = 10)."""
    variant = Variant(supervised_k=10 if catalog.model(model).group == "supervised" else 0)
    spec = RunSpec(
        sweep="s", experiment="evaluation", model=model, dataset="synthetic", category="tiles", seed=n_train, image_size=128,
        variant=variant,
    )  # fmt: skip
    return RunResult(
        run_key=spec.run_key,
        spec=spec,
        metrics={},
        timings=Timings(fit_s=fit_s, test_s=test_s, test_images_per_s=n_test / test_s, peak_memory_mb=1.0, memory_kind="cpu_rss"),
        data=DataSummary(n_train=n_train, n_test_good=n_test // 2, n_test_bad=n_test - n_test // 2, pixel_masks=True),
        epochs=epochs,
        epochs_run=epochs,
        device=device,
        versions={},
        finished_at="2026-01-01T00:00:00+00:00",
    )


def test_fit_recovers_known_coefficients() -> None:
    """fit = 3 + 0.02·epochs·train, test = 1 + 0.05·test on one device; 10× on the other: recovered
    exactly per device, every run's relative error ~0, the device with more runs first."""
    shapes = [(10, 12, 5), (40, 20, 5), (25, 60, 8), (80, 30, 3)]
    results = [result("reverse_distillation", "cpu (2 cores)", n, t, e, 3 + 0.02 * e * n, 1 + 0.05 * t) for n, t, e in shapes]
    results += [
        result("reverse_distillation", "NVIDIA H100", n, t, e, 0.3 + 0.002 * e * n, 0.1 + 0.005 * t) for n, t, e in shapes[:3]
    ]
    calibration = fit(results, overhead_s=8.0, source="hand-made")
    assert [t.device for t in calibration.tables] == ["cpu (2 cores)", "NVIDIA H100"]
    for table, scale in zip(calibration.tables, (1.0, 0.1), strict=True):
        (c,) = table.coefficients
        assert (c.model, c.image_size, table.overhead_s) == ("reverse_distillation", 128, 8.0)
        assert c.start_s == pytest.approx(4 * scale)  # 3 of fit + 1 of test set-up
        assert c.train_s == pytest.approx(0.02 * scale)
        assert c.test_s == pytest.approx(0.05 * scale)
    assert max(abs(f.error) for f in calibration.fitted) < 1e-9


def test_fixed_step_epochs_do_not_grow_with_the_dataset() -> None:
    """DRA draws 20 batches an epoch: its train unit is the epoch, so two categories of different
    size cost the same to train (its fit has one amount of training: the epoch times give the slope)."""
    runs = [result("dra", "cpu", n, 20, 2, 5 + 2 * 30.0, 0.1 * 20) for n in (50, 400)]
    for r in runs:
        r.timings.epoch_s = [31.0, 30.0]
    (c,) = fit(runs, 0.0, "hand-made").tables[0].coefficients
    assert (c.train_s, c.start_s, c.test_s) == pytest.approx((30.0, 5.0, 0.1))


def test_planned_work_follows_the_variant() -> None:
    """(train, good, bad) = (100, 30, 50): contamination 0.2 moves round(0.2·100/0.8) = 25 bad images
    into train; val_early_stop validates on 20 % of the test set every epoch; 25 % subsets."""
    spec = RunSpec(sweep="s", experiment="noisy_labels", model="reverse_distillation", dataset="vad", category="vad", seed=1)
    noisy = planned_work(spec.model_copy(update={"variant": Variant(contamination=0.2)}), (100, 30, 50))
    assert (noisy.epochs, noisy.units, noisy.test_images) == (200, 125, 55)
    early = planned_work(spec.model_copy(update={"variant": Variant(validation="val_early_stop", check_every=4)}), (100, 30, 50))
    assert (early.units, early.test_images) == (100, 24 + 40 + (6 + 10) * 50)
    subset = planned_work(spec.model_copy(update={"variant": Variant(train_fraction=0.25)}), (100, 30, 50))
    assert subset.units == 25


TABLE = {
    "device": "hand-made",
    "source": "test",
    "overhead_s": 2.0,
    "coefficients": [
        {"model": "padim", "image_size": 64, "start_s": 3.0, "train_s": 0.5, "test_s": 0.25, "runs": 1},
        {"model": "patchcore", "image_size": 128, "start_s": 4.0, "train_s": 1.0, "test_s": 2.0, "runs": 1},
    ],
}


def test_estimate_by_hand(cli, tiny_config: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """'tiny': 10 train, 6 + 6 test images per category, two categories, one epoch.
    PaDiM at 64 px: 2 + 3 + 10·0.5 + 12·0.25 = 13 s a run. PatchCore, measured at 128 px only: its
    per-image costs scale by (64/128)², 2 + 4 + 10·0.25 + 12·0.5 = 14.5 s. Total 55 s (0.02 h);
    at 2 in parallel the two PatchCore runs go first, then the PaDiM ones: 27.5 s. InReaCh has no
    coefficients: listed, not counted."""
    costs = tmp_path / "costs.yaml"
    costs.write_text(yaml.safe_dump([TABLE]))
    args = (
        "-e",
        "evaluation",
        "--datasets",
        "tiny",
        "--models",
        "padim,patchcore,inreach",
        "--image-size",
        "64",
        "--config",
        str(tiny_config),
    )
    done = cli("plan", *args, "--estimate", "--costs", str(costs), "--parallel", "2")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"cost table: calibration {costs}, measured on hand-made" in out
    assert "4 runs: 0.02 GPU-hours (1 per run), wall 0m28s at 2 in parallel (--parallel)" in out
    longest = [line.split()[0] for line in out.splitlines() if line.startswith("  ") and "tiny/" in line]
    assert longest == ["0m14s", "0m14s", "0m13s", "0m13s"]
    assert "patchcore               52.7%" in out and "padim                   47.3%" in out
    assert "not estimated: 2 runs of inreach (no coefficients on hand-made)" in out
    assert "patchcore at 64 px: scaled by pixel area from 128 px" in out
    assert "image counts of tiny: synthetic options" in out
    assert not (tmp_path / "store").exists()  # nothing written


def test_every_experiment_of_the_paper_is_estimated() -> None:
    """The shipped table covers every model of the paper's six experiments on their own datasets;
    datasets without published counts are named in a note."""
    tables, where = load_tables()
    assert "shipped default" in where and tables[0].device.startswith("cpu")
    for key in catalog.experiments():
        planned = plan(key, Selection(datasets=["paper"]), Config())
        found = estimate(planned.sweep.runs, Config())
        assert not found.missing, key
        assert len(found.runs) == len(planned.sweep.runs) and found.total_s > 0
        assert found.wall_s(len(found.runs)) == max(r.seconds for r in found.runs)
        assert any("MVTec AD's mean" in note for note in found.notes)


def test_calibrate_a_real_run(cli, tiny_config: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """Two real PaDiM runs (the tiny categories), calibrated into a file that --estimate reads back."""
    run = cli("run", "--experiment", "evaluation", "--models", "padim", "--datasets", "tiny", "--image-size", "64",
              "--weights", "random", "--config", str(tiny_config))  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    out = tmp_path / "costs.yaml"
    done = cli("calibrate", "--sweep", "evaluation", "--config", str(tiny_config), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "relative error over 2 runs: median" in done.stdout
    (table,) = load_tables(out)[0]
    assert isinstance(table, CostTable) and table.device.startswith("cpu (")
    (c,) = table.coefficients
    assert (c.model, c.image_size, c.runs) == ("padim", 64, 2) and c.train_s + c.test_s > 0
    again = cli("plan", "--experiment", "evaluation", "--datasets", "tiny", "--models", "padim", "--image-size", "64",
                "--config", str(tiny_config), "--estimate", "--costs", str(out))  # fmt: skip
    assert again.returncode == 0 and f"measured on {table.device}" in again.stdout, again.stderr


def test_submit_estimate_contacts_no_cluster(cli, tiny_config: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """With no kubeconfig at all, ``submit --estimate`` still answers; GPU-hours count the
    configured GPUs per run: 55 s × 2 GPUs = 0.03 h."""
    costs = tmp_path / "costs.yaml"
    costs.write_text(yaml.safe_dump([TABLE]))
    config = yaml.safe_load(tiny_config.read_text())
    tiny_config.write_text(yaml.safe_dump({**config, "cluster": {"gpu": {"count": 2}}}))
    args = (
        "-e",
        "evaluation",
        "--datasets",
        "tiny",
        "--models",
        "padim,patchcore",
        "--image-size",
        "64",
        "--config",
        str(tiny_config),
    )
    done = cli("submit", *args, "--estimate", "--costs", str(costs), env={"KUBECONFIG": str(tmp_path / "none")})
    assert done.returncode == 0, done.stderr
    assert "4 runs: 0.03 GPU-hours (2 per run), wall 0m55s at 1 in parallel (default: no parallelism setting" in done.stdout

"""A finished sweep of made-up results with real ``scores.csv`` files in a store: the shape of a real
sweep (models x categories x seeds, good and bad test images, defect types) without training."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from viadk8s import metrics, stats
from viadk8s.catalog import METRICS
from viadk8s.results import SCORES, DataSummary, RunResult, Timings, Uncertainty, run_prefix
from viadk8s.spec import RunSpec, Variant
from viadk8s.store import Store


def fake_scores(rng: np.random.Generator, shift: float, n_good: int, n_bad: int) -> pd.DataFrame:
    """Good ~ N(0, 1), bad ~ N(shift, 1), rounded to make ties; three defect types."""
    good, bad = rng.normal(0, 1, n_good).round(2), rng.normal(shift, 1, n_bad).round(2)
    defects = [f"defect{i % 3}" for i in range(n_bad)]
    return pd.DataFrame(
        {
            "image_path": [f"test/good/{i:03d}.png" for i in range(n_good)]
            + [f"test/{d}/{i:03d}.png" for i, d in enumerate(defects)],
            "defect": ["good"] * n_good + defects,
            "label": [0] * n_good + [1] * n_bad,
            "score": np.r_[good, bad],
        }
    )


def fake_sweep(
    store: Store,
    models: dict[str, float],
    categories: list[str],
    dataset: str = "synthetic",
    seeds: tuple[int, ...] = (1,),
    experiment: str = "evaluation",
    variants: tuple[Variant, ...] = (Variant(),),
    images: tuple[int, int] = (16, 16),
    resamples: int = 200,
) -> list[RunResult]:
    """One result per model x category x seed x variant; ``models`` maps a model to how far its
    bad scores lie from the good ones (larger: better). Scores go to the store, results are returned."""
    rng = np.random.default_rng(0)
    results = []
    for model, shift in models.items():
        for category in categories:
            for seed in seeds:
                for variant in variants:
                    spec = RunSpec(
                        sweep="fake",
                        experiment=experiment,
                        model=model,
                        dataset=dataset,
                        category=category,
                        seed=seed,
                        variant=variant,
                    )
                    scores = fake_scores(rng, shift, *images)
                    buffer = io.StringIO()
                    scores.to_csv(buffer, index=False)
                    store.write_bytes(f"{run_prefix(spec)}/{SCORES}", buffer.getvalue().encode())
                    found = metrics.recompute_image_metrics(scores)
                    pixel = {m: float(rng.uniform(0.5, 1.0)) for m in METRICS if m.startswith("pixel_")}
                    kept = Uncertainty(
                        method=stats.METHOD, confidence=0.95, resamples=resamples, seed=seed,
                        intervals=stats.intervals(scores, resamples, 0.95, seed),
                    )  # fmt: skip
                    results.append(
                        RunResult(
                            run_key=spec.run_key,
                            spec=spec,
                            metrics={**found, **pixel},
                            timings=Timings(
                                fit_s=float(rng.uniform(5, 50)),
                                test_s=float(rng.uniform(1, 5)),
                                test_images_per_s=10.0,
                                peak_memory_mb=500.0,
                                memory_kind="cpu_rss",
                            ),  # fmt: skip
                            data=DataSummary(n_train=40, n_test_good=images[0], n_test_bad=images[1], pixel_masks=True),
                            epochs=1,
                            epochs_run=1,
                            device="cpu",
                            versions={"viadk8s": "test"},
                            uncertainty=kept,
                            finished_at="2026-12-06T00:00:00+00:00",
                        )
                    )
    return results

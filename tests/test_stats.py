"""The statistics behind intervals, paired comparisons, rank tests and per-defect tables, checked
against known answers: simulated scores with a true AUROC, planted differences, hand counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import norm

from viadk8s import catalog, metrics, stats
from viadk8s.errors import SpecError


def frame(good: np.ndarray, bad: np.ndarray, defects: list[str] | None = None) -> pd.DataFrame:
    n = len(good) + len(bad)
    return pd.DataFrame(
        {
            "image_path": [f"test/x/{i:03d}.png" for i in range(n)],
            "defect": ["good"] * len(good) + (defects or ["crack"] * len(bad)),
            "label": [0] * len(good) + [1] * len(bad),
            "score": np.r_[good, bad],
        }
    )


def test_batched_metrics_equal_the_reported_ones_with_ties() -> None:
    """Every image metric of the one list (catalog.IMAGE_METRICS), three ways: the worker's
    (torch), the bootstrap's (vectorised numpy) and the pre-commit check's (scikit-learn)."""
    rng = np.random.default_rng(7)
    for _ in range(40):
        good = np.round(rng.normal(0, 1, rng.integers(3, 40)), 1)  # rounding makes ties
        bad = np.round(rng.normal(1, 1, rng.integers(2, 20)), 1)
        batched = dict(zip(catalog.IMAGE_METRICS, stats.image_metrics_batch(good, bad), strict=True))
        labels = [0] * len(good) + [1] * len(bad)
        reported = metrics.image_metrics(torch.tensor(np.r_[good, bad]), torch.tensor(labels))
        again = metrics.recompute_image_metrics(pd.DataFrame({"label": labels, "score": np.r_[good, bad]}))
        assert list(reported) == list(again) == list(catalog.IMAGE_METRICS)
        for name in catalog.IMAGE_METRICS:
            assert batched[name] == pytest.approx(reported[name], abs=1e-12) == again[name], name


def test_estimates_of_groups_equal_a_hand_computation() -> None:
    """Two seeds' point values and 4 replicates each: the mean, its spread, and the percentile
    interval of the replicates' mean over seeds; a metric no run has drops out."""
    rows = [
        {"g": "a", "seed": 1, "resample": -1, "m": 0.8, "p": None},
        {"g": "a", "seed": 2, "resample": -1, "m": 0.6, "p": None},
    ]
    for seed, replicates in ((1, [0.7, 0.8, 0.9, 1.0]), (2, [0.5, 0.6, 0.6, 0.7])):
        rows += [{"g": "a", "seed": seed, "resample": r, "m": v, "p": None} for r, v in enumerate(replicates)]
    (row,) = stats.estimates(pd.DataFrame(rows), ["g"], ["m", "p"], 0.5).to_dict("records")
    means = np.array([0.6, 0.7, 0.75, 0.85])  # per replicate, over the two seeds
    assert (row["metric"], row["seeds"]) == ("m", 2)
    assert (row["mean"], row["std"]) == (pytest.approx(0.7), pytest.approx(0.1))
    assert (row["low"], row["high"]) == pytest.approx(np.percentile(means, [25, 75]))
    assert stats.estimate(pd.DataFrame(rows), "m", 0.5) == stats.Estimate(
        pytest.approx(0.7), pytest.approx(0.1), 2, pytest.approx(tuple(np.percentile(means, [25, 75])))
    )


def test_interval_covers_the_true_auroc_at_about_its_nominal_rate() -> None:
    """Good ~ N(0, 1), bad ~ N(d, 1): the true AUROC is Phi(d / sqrt 2). A test set of 40 good and
    16 bad images (a small category), 200 draws: a 90 % interval must cover it about 90 % of the time."""
    rng = np.random.default_rng(2025)
    shift = 1.5
    truth = norm.cdf(shift / np.sqrt(2))
    covered = 0
    draws = 200
    for i in range(draws):
        found = stats.intervals(frame(rng.normal(0, 1, 40), rng.normal(shift, 1, 16)), resamples=500, confidence=0.9, seed=i)
        low, high = found["image_AUROC"]
        covered += low <= truth <= high
    assert 0.83 <= covered / draws <= 0.96, covered / draws  # 0.90 nominal; binomial sd at 200 draws is 0.02


def test_intervals_are_seeded_and_hold_the_point_estimate() -> None:
    rng = np.random.default_rng(1)
    scores = frame(rng.normal(0, 1, 30), rng.normal(1, 1, 12))
    first, again = stats.intervals(scores, 300, 0.95, seed=4), stats.intervals(scores, 300, 0.95, seed=4)
    assert first == again and stats.intervals(scores, 300, 0.95, seed=5) != first
    point = metrics.recompute_image_metrics(scores)
    for name, (low, high) in first.items():
        assert low <= point[name] <= high
    assert stats.percentile_interval(stats.distribution(scores, 300, 4)[0], 0.95) == pytest.approx(first["image_AUROC"])


def test_one_class_scores_have_no_interval() -> None:
    with pytest.raises(SpecError, match="good and bad"):
        stats.intervals(frame(np.zeros(5), np.array([])))


def test_paired_bootstrap_finds_a_planted_difference_and_none_between_equals() -> None:
    rng = np.random.default_rng(3)
    good, bad = rng.normal(0, 1, 60), rng.normal(1.5, 1, 30)
    strong = frame(good, bad)
    weak = frame(good + rng.normal(0, 1.5, 60), bad + rng.normal(0, 1.5, 30))  # the same images, noisier scores
    found = stats.paired_difference(strong, weak, "image_AUROC", 1000, 0.95, seed=0)
    assert found.verdict == "better" and 0 < found.low <= found.estimate <= found.high
    assert stats.paired_difference(weak, strong, "image_AUROC", 1000, 0.95, seed=0).verdict == "worse"
    same = stats.paired_difference(strong, strong.sample(frac=1, random_state=1), "image_AUROC", 1000, 0.95, seed=0)
    assert same.verdict == "no detectable difference" and same.low == same.high == 0  # rows matched by image, not order


def test_paired_bootstrap_refuses_different_test_sets() -> None:
    rng = np.random.default_rng(0)
    a = frame(rng.normal(0, 1, 10), rng.normal(1, 1, 5))
    b = a.assign(image_path=a["image_path"].str.replace("000", "999"))
    with pytest.raises(SpecError, match="different images"):
        stats.paired_difference(a, b)
    with pytest.raises(SpecError, match="differently"):
        stats.paired_difference(a, a.assign(label=a["label"][::-1].to_numpy()))
    with pytest.raises(SpecError, match="pixel_AUROC"):
        stats.paired_difference(a, a, "pixel_AUROC")


def test_rank_test_orders_a_planted_ranking() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.6, 0.8, 12)
    table = pd.DataFrame({"best": base + 0.15, "middle": base + 0.05, "worst": base})  # 12 categories
    test = stats.rank_test(table)
    assert list(test.mean_ranks.index) == ["best", "middle", "worst"] and test.mean_ranks.tolist() == [1, 2, 3]
    assert test.p_value < 0.001 and test.pairwise_p.loc["best", "worst"] < 0.05
    assert test.critical_difference == pytest.approx(2.343 * np.sqrt(3 * 4 / (6 * 12)), abs=1e-3)  # Demsar's q_0.05, k = 3
    with pytest.raises(SpecError, match="at least 3 models"):
        stats.rank_test(table[["best", "worst"]])


def test_defect_breakdown_matches_a_hand_count() -> None:
    good = np.array([0.1, 0.2, 0.3, 0.4, 0.9])  # one good image scores high
    bad = np.array([0.95, 0.8, 0.35, 0.5, 0.6, 0.7])
    scores = frame(good, bad, ["crack"] * 3 + ["dent"] * 3)
    fpr = stats.OperatingPoint.parse("fpr=0.2")  # threshold: the 0.8 quantile of good = 0.5
    fnr = stats.OperatingPoint.parse("fnr = 0.0")  # threshold: the lowest bad score = 0.35
    table = stats.defect_breakdown(scores, (fnr, fpr)).set_index("defect")
    assert list(table.index) == ["good", "crack", "dent"]
    assert table.loc["crack", "images"] == 3 and table.loc["good", "images"] == 5
    # crack: 0.95, 0.8 above 0.5, 0.35 not; all three >= 0.35
    assert table.loc["crack", "rejected@fpr=0.2"] == pytest.approx(2 / 3) and table.loc["crack", "rejected@fnr=0"] == 1
    # dent: 0.5 is not above 0.5; 0.6, 0.7 are
    assert table.loc["dent", "rejected@fpr=0.2"] == pytest.approx(2 / 3)
    # good: only 0.9 is above 0.5; 0.4 and 0.9 are >= 0.35
    assert table.loc["good", "rejected@fpr=0.2"] == pytest.approx(1 / 5) and table.loc["good", "rejected@fnr=0"] == pytest.approx(
        2 / 5
    )
    # crack AUROC against the good images: pairs (bad > good) of 3 x 5, ties count half
    assert table.loc["crack", "AUROC"] == pytest.approx((5 + 4 + 3) / 15)
    assert np.isnan(table.loc["good", "AUROC"])


@pytest.mark.parametrize("text", ["fnr", "fpr=1.5", "tpr=0.1", "fnr=-0.1", "fnr=abc"])
def test_bad_operating_point_is_one_clear_line(text: str) -> None:
    with pytest.raises(SpecError, match=r"operating point .* use fnr=R or fpr=R"):
        stats.OperatingPoint.parse(text)


def test_interval_of_a_dataset_mean_is_taken_resample_by_resample() -> None:
    """Two categories: the per-dataset cell's interval is the percentile interval of the mean of
    the two runs' bootstrap distributions, and each per-category cell is its run's own interval."""
    from tests.checks import made_up_result
    from viadk8s import aggregate
    from viadk8s.spec import RunSpec

    rng = np.random.default_rng(11)
    results, scores = [], {}
    for category, shift in (("fabric", 2.0), ("tiles", 0.8)):
        spec = RunSpec(sweep="s", experiment="evaluation", model="padim", dataset="synthetic", category=category, seed=3)
        table = frame(rng.normal(0, 1, 20), rng.normal(shift, 1, 10))
        result = made_up_result(spec, auroc=metrics.recompute_image_metrics(table)["image_AUROC"])
        results.append(result)
        scores[result.run_key] = table
    resampled = aggregate.resampled_frame(results, scores, default_resamples=400)
    named = aggregate.tables(results, ["image_AUROC"], resampled=resampled, confidence=0.9)
    again = aggregate.tables(aggregate.runs_frame(results), ["image_AUROC"], resampled=resampled, confidence=0.9)
    assert all(again[name].equals(table) for name, table in named.items())  # from results or their frame: the same
    mean = np.mean([stats.distribution(scores[r.run_key], 400, 3)[0] for r in results], axis=0)
    low, high = stats.percentile_interval(mean, 0.9)
    point = np.mean([r.metrics["image_AUROC"] for r in results])
    assert named["per_dataset"].iloc[0, 0] == f"{100 * point:.1f} [{100 * low:.1f}, {100 * high:.1f}]"
    for result in results:
        own = stats.intervals(scores[result.run_key], 400, 0.9, 3)["image_AUROC"]
        cell = named["per_category"].loc["PaDiM", f"synthetic/{result.spec.category}"]
        assert cell == f"{100 * result.metrics['image_AUROC']:.1f} [{100 * own[0]:.1f}, {100 * own[1]:.1f}]"


def test_pixel_metrics_get_intervals_and_pair_from_the_runs_pixel_summaries() -> None:
    """A run's pixel summary gives its pixel metrics bootstrap replicates (the run's settings, as
    its image metrics) and per-image paired compares; a pixel metric without summaries cannot pair."""
    from tests.checks import made_up_result
    from viadk8s import aggregate, compare, pixel_summary
    from viadk8s.spec import RunSpec

    rng = np.random.default_rng(5)
    masks = np.zeros((12, 32, 32), bool)
    masks[6:, 8:20, 8:20] = True
    maps = rng.normal(size=masks.shape).astype(np.float32)
    names = [f"test/x/{i:03d}.png" for i in range(12)]
    results, scores, summaries = [], {}, {}
    for model, gain in (("padim", 1.5), ("patchcore", 0.3)):
        spec = RunSpec(sweep="s", experiment="evaluation", model=model, dataset="synthetic", category="fabric", seed=3)
        summary = pixel_summary.summarise(maps + gain * masks, masks, names)
        result = made_up_result(spec)
        result.metrics |= summary.metrics()
        result.data.pixel_masks = True
        results.append(result)
        scores[result.run_key] = frame(rng.normal(0, 1, 6), rng.normal(1, 1, 6))
        summaries[result.run_key] = summary
    resampled = aggregate.resampled_frame(results, scores, default_resamples=300, summaries=summaries)
    named = aggregate.tables(results, ["pixel_AUPRO"], resampled=resampled, confidence=0.9)
    padim = results[0]
    low, high = pixel_summary.intervals(summaries[padim.run_key], 300, 0.9, 3)["pixel_AUPRO"]
    point = padim.metrics["pixel_AUPRO"]
    assert named["per_category"].loc["PaDiM", "synthetic/fabric"] == f"{100 * point:.1f} [{100 * low:.1f}, {100 * high:.1f}]"
    (found,) = compare.paired(results, scores, "padim", "patchcore", "pixel_AUPRO", 300, 0.95, summaries)
    assert found.difference.verdict == "better" and found.difference.a == pytest.approx(point)
    with pytest.raises(SpecError, match="has no pixel_summary.npz"):
        compare.paired(results, scores, "padim", "patchcore", "pixel_AUROC", 300)

"""Is one model really better than another on this data? ``viadk8s compare`` answers per category
with a paired bootstrap of the difference (both models scored on the same test images), and across
categories with Friedman's rank test over every model of the sweep, Nemenyi's post-hoc and a
critical difference diagram (Demšar 2006), the usual way to compare many methods on many data sets.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from viadk8s import catalog, pixel_summary, stats  # noqa: E402
from viadk8s.aggregate import runs_frame  # noqa: E402
from viadk8s.errors import SpecError, one_of  # noqa: E402
from viadk8s.results import RunResult  # noqa: E402

#: What two runs must share to be scored on the same test images.
PAIRED_BY = ("dataset", "category", "seed", "image_size", "weights", "variant")


@dataclass(frozen=True)
class Paired:
    """One category (one seed, one setting): model A against model B."""

    setting: dict[str, object]
    difference: stats.Difference


def paired(
    results: Sequence[RunResult],
    scores: dict[str, pd.DataFrame],
    a: str,
    b: str,
    metric: str = "image_AUROC",
    resamples: int = 1000,
    confidence: float = 0.95,
    summaries: dict[str, pixel_summary.PixelSummary] | None = None,
) -> list[Paired]:
    """Model ``a`` minus model ``b``, for every setting both ran. Each bootstrap is seeded by the
    runs' seed, so the answer is the same every time it is asked. A pixel metric pairs the runs'
    pixel summaries (``summaries``, :func:`viadk8s.pixel_summary.load_summaries`), not their scores."""
    frame = runs_frame(results)
    for model in (a, b):
        if model not in set(frame["model"]):
            raise one_of("model", model, sorted(set(frame["model"])))
    if a == b:
        raise SpecError(f"compare two different models; got {a!r} twice")
    sides = {m: frame[frame["model"] == m].set_index(list(PAIRED_BY))["run_key"] for m in (a, b)}
    shared = [k for k in sides[a].index if k in sides[b].index]
    if not shared:
        raise SpecError(f"{a} and {b} have no run on the same dataset, category, seed and setting in this sweep")
    found = []
    for key in shared:
        runs = [sides[m].loc[[key]].iloc[0] for m in (a, b)]
        pixel = metric in pixel_summary.PIXEL_METRICS
        kept = (summaries or {}) if pixel else scores
        missing = [r for r in runs if r not in kept]
        if missing:
            what = pixel_summary.PIXEL_SUMMARY if pixel else "scores.csv"
            raise SpecError(f"run {missing[0]} has no {what}; the pair cannot be compared per image")
        setting = dict(zip(PAIRED_BY, key, strict=True))
        compared = pixel_summary.paired_difference if pixel else stats.paired_difference
        difference = compared(kept[runs[0]], kept[runs[1]], metric, resamples, confidence, int(setting["seed"]))
        found.append(Paired(setting, difference))
    return found


def paired_table(found: Sequence[Paired], a: str, b: str) -> pd.DataFrame:
    """One row per compared category: both values, the difference and its interval (x100), the verdict."""
    rows = []
    for p in found:
        d = p.difference
        rows.append(
            {
                **{k: p.setting[k] for k in ("dataset", "category", "seed")},
                "good/bad images": f"{d.n_good}/{d.n_bad}",
                a: round(100 * d.a, 1),
                b: round(100 * d.b, 1),
                f"{a} - {b}": f"{100 * d.estimate:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]",
                "verdict": f"{a} {d.verdict}" if d.verdict != "no detectable difference" else d.verdict,
            }
        )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Versus:
    """One method against the best one: the mean difference over their shared test sets, with its
    interval (:func:`viadk8s.stats.mean_difference`); ``None`` where they share no test set."""

    method: str
    difference: stats.Difference | None


def against_best(
    runs: pd.DataFrame,
    scores: dict[str, pd.DataFrame],
    metric: str,
    best: str,
    resamples: int = 1000,
    confidence: float = 0.95,
    kept: dict[tuple[str, str], stats.PairedBootstrap] | None = None,
) -> list[Versus]:
    """Every other method of ``runs`` (a runs frame with a ``method`` column) minus ``best``, on
    the test sets both ran (:data:`PAIRED_BY`, with scores), weighted as the protocol's mean:
    datasets alike, and within one its categories and seeds alike. ``kept`` holds each pair's
    bootstrap (all image metrics) across calls, so asking for another metric costs no resampling."""
    if metric not in stats.IMAGE_METRICS:
        raise one_of("metric paired per image", metric, stats.IMAGE_METRICS)
    kept = {} if kept is None else kept
    sides = {
        method: dict(zip(group[list(PAIRED_BY)].itertuples(index=False, name=None), group["run_key"], strict=True))
        for method, group in runs[runs["run_key"].isin(scores)].groupby("method", sort=False)
    }
    seed = PAIRED_BY.index("seed")
    found = []
    for method, own in sides.items():
        if method == best:
            continue
        shared = [k for k in own if k in sides.get(best, {})]
        if not shared:
            found.append(Versus(method, None))
            continue
        for k in shared:
            pair = (own[k], sides[best][k])
            if pair not in kept:
                kept[pair] = stats.paired_bootstrap(scores[pair[0]], scores[pair[1]], resamples, confidence, int(k[seed]))
        per_dataset = Counter(k[0] for k in shared)  # PAIRED_BY starts with the dataset
        weights = [1 / (len(per_dataset) * per_dataset[k[0]]) for k in shared]
        boots = [kept[(own[k], sides[best][k])] for k in shared]
        found.append(Versus(method, stats.mean_difference(boots, weights, metric, confidence)))
    return found


def category_table(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows: dataset/category (one setting); columns: model; values: the metric, mean over seeds.
    ``runs``: :func:`~viadk8s.aggregate.runs_frame`, built once by the caller."""
    if metric not in catalog.METRICS:
        raise one_of("metric", metric, catalog.METRICS)
    frame = runs.copy()
    frame["block"] = frame["dataset"] + "/" + frame["category"]
    settings = frame[["image_size", "weights", "variant"]].drop_duplicates()
    if len(settings) > 1:
        frame["block"] += " (" + frame["image_size"].astype(str) + " px, " + frame["variant"] + ")"
    names = {k: m.name for k, m in catalog.models().items()}
    table = frame.pivot_table(index="block", columns="model", values=metric, aggfunc="mean")
    return table.rename(columns=names)


def cd_diagram(test: stats.RankTest, metric: str, path: Path) -> Path:
    """The critical difference diagram: models on their mean rank, bars join those Nemenyi's test
    cannot tell apart at 5 %."""
    import scikit_posthocs as sp

    fig, ax = plt.subplots(figsize=(6, 0.6 + 0.35 * len(test.mean_ranks)), dpi=100)
    sp.critical_difference_diagram(test.mean_ranks, test.pairwise_p, ax=ax, cd=test.critical_difference)
    ax.set_title(f"{metric}: mean rank over {test.n_blocks} categories (Friedman p={test.p_value:.3g})", fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path

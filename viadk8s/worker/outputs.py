"""The files a run leaves beside its result: image scores and their good-vs-bad histogram."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from viadk8s.spec import RunSpec  # noqa: E402

SCORE_COLUMNS = ["image_path", "label", "score"]


def write_scores(scores: pd.DataFrame, path: Path) -> None:
    scores[SCORE_COLUMNS].to_csv(path, index=False)


def write_histogram(scores: pd.DataFrame, spec: RunSpec, path: Path) -> None:
    """The paper's Fig. 6: image-level score distributions, good in blue, bad in red."""
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    bins = 30
    low, high = scores["score"].min(), scores["score"].max()
    for label, colour, name in ((0, "tab:blue", "good"), (1, "tab:red", "bad")):
        values = scores.loc[scores["label"] == label, "score"]
        ax.hist(values, bins=bins, range=(low, high), color=colour, alpha=0.6, label=f"{name} ({len(values)})")
    ax.set_xlabel("anomaly score")
    ax.set_ylabel("images")
    ax.set_title(f"{spec.model} · {spec.dataset}/{spec.category} · seed {spec.seed}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

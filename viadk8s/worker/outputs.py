"""The files a run leaves beside its result: image scores, their good-vs-bad histogram, and
overlays of the images the model got most wrong."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from viadk8s.data.images import read_image, read_mask  # noqa: E402
from viadk8s.data.layout import Sample  # noqa: E402
from viadk8s.results import OVERLAY, Overlay  # noqa: E402
from viadk8s.spec import RunSpec  # noqa: E402
from viadk8s.worker.training import Mistake  # noqa: E402

#: image_path is relative to the category folder (the original's under drift), defect its test folder
SCORE_COLUMNS = ["image_path", "defect", "label", "score"]


def scores_frame(collected: pd.DataFrame, tested: Sequence[Sample]) -> pd.DataFrame:
    """The collected scores, each image named as in its dataset rather than where it was read."""
    by_path = {s.image_path: s for s in tested}
    samples = [by_path[p] for p in collected["image_path"]]
    names = [s.name or Path(s.image_path).name for s in samples]
    return collected.assign(image_path=names, defect=[s.defect for s in samples])[SCORE_COLUMNS]


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


def write_overlays(
    mistakes: Sequence[Mistake], tested: Sequence[Sample], bit_depth: int, out: Path
) -> list[tuple[Path, Overlay]]:
    """One small PNG per kept mistake: the image with its ground-truth outline, and beside it the
    anomaly map over the image. Maps share one colour scale per run, so a brighter map is a
    higher one in every picture of the run."""
    out.mkdir(parents=True, exist_ok=True)
    by_path = {s.image_path: s for s in tested}
    maps = [m.anomaly_map for m in mistakes if m.anomaly_map is not None]
    low, high = (min(float(m.min()) for m in maps), max(float(m.max()) for m in maps)) if maps else (0.0, 1.0)
    written, ranks = [], {0: 0, 1: 0}
    for mistake in mistakes:
        sample = by_path[mistake.image_path]
        ranks[mistake.label] += 1
        kind = "good" if mistake.label == 0 else "bad"
        path = out / OVERLAY.format(kind=kind, rank=ranks[mistake.label])
        size = tuple(mistake.anomaly_map.shape) if mistake.anomaly_map is not None else (224, 224)
        image = F.interpolate(read_image(mistake.image_path, bit_depth)[None], size=size, mode="bilinear", antialias=True)[0]
        pixels = image.clamp(0, 1).permute(1, 2, 0).numpy()
        pixels = pixels[..., 0] if pixels.shape[-1] == 1 else pixels
        mask = read_mask(sample.mask_path, size).numpy() if sample.mask_path else None
        _draw(pixels, mistake.anomaly_map, mask, (low, high), f"{kind} · {sample.defect} · score {mistake.score:.4g}", path)
        name = sample.name or Path(sample.image_path).name
        written.append(
            (path, Overlay(file=path.name, image=name, defect=sample.defect, label=mistake.label, score=mistake.score))
        )
    return written


def _draw(
    pixels: np.ndarray,
    anomaly_map: torch.Tensor | None,
    mask: np.ndarray | None,
    scale: tuple[float, float],
    title: str,
    path: Path,
) -> None:
    panels = 2 if anomaly_map is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(2.2 * panels, 2.5), dpi=80, squeeze=False)
    for ax in axes[0]:
        ax.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None, vmin=0, vmax=1)
        if mask is not None and mask.any():
            ax.contour(mask > 0, levels=[0.5], colors="lime", linewidths=0.8)
        ax.set_axis_off()
    if anomaly_map is not None:
        axes[0][1].imshow(anomaly_map.numpy(), cmap="jet", alpha=0.5, vmin=scale[0], vmax=scale[1])
    fig.suptitle(title, fontsize=7)
    fig.tight_layout()
    fig.canvas.draw()
    rendered = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])
    plt.close(fig)
    tmp = path.with_name(f".{path.name}.tmp.png")
    rendered.quantize(colors=128).save(tmp, format="PNG", optimize=True)  # a palette: ~4x smaller, same look
    tmp.replace(path)

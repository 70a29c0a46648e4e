"""Train/test manipulations of the paper's experiments, as pure functions over samples.

Every draw is deterministic per seed: the candidates are sorted by image path and drawn with
``numpy.random.default_rng(seed)``; no global random state is read. An image is never in two
splits: a moved sample changes its ``split``, a dropped one leaves the list. Samples carved out for
validation get ``split="val"``. Labels never change: a bad image moved to train keeps ``label=1``
(the worker decides whether train images are fed as unlabelled, i.e. noisy, or as labelled).

Only ``make_synthetic_anomalies`` does I/O: it writes its images and masks (atomically).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from viadk8s.data.convert import atomic_folder
from viadk8s.data.images import inspect
from viadk8s.data.layout import Sample
from viadk8s.errors import SpecError

VAL_FRACTION = 0.2
SYNTHETIC_DEFECT = "synthetic"


def _pool(samples: list[Sample], split: str, label: int) -> list[Sample]:
    return sorted((s for s in samples if s.split == split and s.label == label), key=lambda s: s.image_path)


def _draw(pool: list[Sample], n: int, seed: int) -> set[str]:
    """The image paths of ``n`` samples drawn without replacement from a sorted pool."""
    picked = np.random.default_rng(seed).choice(len(pool), size=n, replace=False)
    return {pool[int(i)].image_path for i in picked}


def _move(samples: list[Sample], paths: set[str], split: str) -> list[Sample]:
    return [replace(s, split=split) if s.image_path in paths else s for s in samples]


def _require(what: str, value: float, ok: bool, allowed: str) -> None:
    """Refuse a value outside its range with one line naming it and what is allowed."""
    if not ok:
        raise SpecError(f"{what} {value!r} is not allowed; allowed: {allowed}")


def _count(fraction: float, available: int) -> int:
    """A share of ``available``, at least one."""
    return max(1, round(fraction * available))


def contaminate(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[str]]:
    """Move bad test images into train so that ``fraction`` of the resulting train set is bad.

    The train set counted here is the good train images (labelled bad train images, as VAD ships,
    are not fed to one-class models): ``n_bad = round(f * n_good / (1 - f))``. One bad image at
    least must stay in test. Returns the samples and the sorted paths of the moved images.
    """
    _require("contamination", fraction, 0 <= fraction < 0.5, "0 <= contamination < 0.5")
    n_bad = round(fraction * len(_pool(samples, "train", 0)) / (1 - fraction))
    bad_test = _pool(samples, "test", 1)
    if n_bad > len(bad_test) - 1:
        raise SpecError(
            f"contamination {fraction} needs {n_bad} bad test images moved to train, but there are "
            f"{len(bad_test)} and at least one must stay in test; allowed: a smaller contamination"
        )
    moved = _draw(bad_test, n_bad, seed)
    return _move(samples, moved, "train"), sorted(moved)


def validation_split(samples: list[Sample], fraction: float = VAL_FRACTION, *, seed: int) -> list[Sample]:
    """Carve a validation set (``split='val'``) out of the test split, stratified good/bad.

    At least one good and one bad image go to validation, and at least one of each stays in test.
    """
    _require("validation fraction", fraction, 0 < fraction < 1, "0 < fraction < 1")
    carved: set[str] = set()
    for label, name in ((0, "good"), (1, "bad")):
        pool = _pool(samples, "test", label)
        n = _count(fraction, len(pool))
        if n >= len(pool):
            raise SpecError(
                f"validation fraction {fraction} would leave no {name} test image ({len(pool)} in test, {n} to "
                f"validation); allowed: a dataset with at least 2 {name} test images"
            )
        carved |= _draw(pool, n, seed)
    return _move(samples, carved, "val")


def synthetic_validation(samples: list[Sample], fraction: float, seed: int) -> list[Sample]:
    """Hold out a share of the good train images as validation goods (``split='val'``).

    The worker turns copies of them into validation anomalies with :func:`make_synthetic_anomalies`;
    at least one good image stays in train.
    """
    _require("synthetic validation fraction", fraction, 0 < fraction < 1, "0 < fraction < 1")
    pool = _pool(samples, "train", 0)
    n = _count(fraction, len(pool))
    if n >= len(pool):
        raise SpecError(f"synthetic validation fraction {fraction} would leave no good train image ({len(pool)} in train)")
    return _move(samples, _draw(pool, n, seed), "val")


def make_synthetic_anomalies(samples_val_good: list[Sample], out_dir: Path, seed: int) -> list[Sample]:
    """Write one anomalous copy of each held-out good image, with its mask, into ``out_dir``.

    An anomaly is either a patch of another held-out image (turned upside down, so it never blends
    in) or a scratch of a random colour. Files: ``val/synthetic/<stem>.png`` and
    ``ground_truth/synthetic/<stem>_mask.png``; returned as label 1, split ``val``.
    """
    goods = sorted(samples_val_good, key=lambda s: s.image_path)
    if not goods:
        raise SpecError("synthetic anomalies need at least one held-out good image; got none")
    rng = np.random.default_rng(seed)
    result = []
    with atomic_folder(out_dir) as tmp:
        for sample in goods:
            stem = Path(sample.image_path).stem
            image, mask = _anomalous_copy(sample, goods, rng)
            image_rel = Path("val", SYNTHETIC_DEFECT, f"{stem}.png")
            mask_rel = Path("ground_truth", SYNTHETIC_DEFECT, f"{stem}_mask.png")
            for picture, rel in ((image, image_rel), (mask, mask_rel)):
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                picture.save(tmp / rel, format="PNG")
            result.append(Sample(str(out_dir / image_rel), 1, "val", SYNTHETIC_DEFECT, str(out_dir / mask_rel)))
    return result


def _anomalous_copy(sample: Sample, goods: list[Sample], rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
    if inspect(sample.image_path).container_bits > 8:  # PIL would clip it to white
        raise SpecError(
            f"synthetic validation anomalies need 8-bit images; {sample.image_path!r} is 16-bit "
            "(use val_early_stop or convert the dataset)"
        )
    with Image.open(sample.image_path) as opened:
        image = opened.convert("L" if opened.mode == "L" else "RGB")
    width, height = image.size
    mask = Image.new("L", image.size, 0)
    if rng.random() < 0.5:
        donor_sample = goods[int(rng.integers(len(goods)))]
        with Image.open(donor_sample.image_path) as opened:
            donor = opened.convert(image.mode).resize(image.size).transpose(Image.Transpose.ROTATE_180)
        w, h = (int(rng.integers(max(2, side // 8), max(3, side // 3))) for side in (width, height))
        sx, dx = (int(v) for v in rng.integers(0, width - w + 1, 2))
        sy, dy = (int(v) for v in rng.integers(0, height - h + 1, 2))
        image.paste(donor.crop((sx, sy, sx + w, sy + h)), (dx, dy))
        ImageDraw.Draw(mask).rectangle((dx, dy, dx + w - 1, dy + h - 1), fill=255)
    else:
        ends = [(float(rng.uniform(0, width - 1)), float(rng.uniform(0, height - 1))) for _ in range(2)]
        line_width = max(2, min(width, height) // 40)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        ImageDraw.Draw(image).line(ends, fill=colour[0] if image.mode == "L" else colour, width=line_width)
        ImageDraw.Draw(mask).line(ends, fill=255, width=line_width)
    return image, mask


def supervised(samples: list[Sample], k: int, seed: int) -> list[Sample]:
    """Leave exactly ``k`` labelled bad images in train (fewer only where a dataset ships fewer).

    A dataset with labelled bad train images (VAD) uses ``k`` of its own, drawn by seed; the others
    leave the list (they are neither trained on nor tested). Otherwise ``k`` bad test images move
    to train, and at least one bad image must stay in test.
    """
    _require("supervised k", k, k >= 0, "k >= 0")
    if k == 0:
        return list(samples)
    labelled = _pool(samples, "train", 1)
    if labelled:
        kept = _draw(labelled, min(k, len(labelled)), seed)
        return [s for s in samples if not (s.split == "train" and s.label == 1 and s.image_path not in kept)]
    bad_test = _pool(samples, "test", 1)
    if k > len(bad_test) - 1:
        raise SpecError(
            f"supervised k={k} needs {k} bad test images moved to train, but there are {len(bad_test)} "
            "and at least one must stay in test; allowed: a smaller k"
        )
    return _move(samples, _draw(bad_test, k, seed), "train")


def subsample_train(samples: list[Sample], fraction: float, seed: int) -> list[Sample]:
    """Keep ``fraction`` of the good train images (at least one), drawn by seed; the rest leave the list.

    PatchCore at 512 px on large sets trains on 25 % of the images (supplement 7.1).
    """
    _require("train fraction", fraction, 0 < fraction <= 1, "0 < fraction <= 1")
    pool = _pool(samples, "train", 0)
    kept = _draw(pool, _count(fraction, len(pool)), seed)
    return [s for s in samples if not (s.split == "train" and s.label == 0 and s.image_path not in kept)]

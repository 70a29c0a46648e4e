"""The built-in ``synthetic`` dataset: seeded textures with pixel-masked defects, in MVTec layout.

It lets a newcomer (and the test suite) run the whole benchmark with no download. The data
depend only on the dataset recipe and the category, never on the run seed, like a real dataset.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from viadk8s.catalog import SyntheticOptions
from viadk8s.errors import SpecError

Texture = Callable[[np.random.Generator, int], np.ndarray]
DEFECTS = ("scratch", "stain", "hole")


def _tiles(rng: np.random.Generator, size: int) -> np.ndarray:
    period = max(8, size // 8)
    yy, xx = np.mgrid[0:size, 0:size]
    oy, ox = rng.integers(0, period, 2)
    grout = ((yy + oy) % period < 2) | ((xx + ox) % period < 2)
    tile_id = ((yy + oy) // period) * 97 + (xx + ox) // period
    jitter = np.random.default_rng(int(rng.integers(1 << 30))).normal(0, 6, tile_id.max() + 1)[tile_id]
    base = np.array([182.0, 150.0, 120.0]) + rng.normal(0, 4, 3)
    img = base[None, None, :] + jitter[..., None]
    img[grout] = [90.0, 84.0, 80.0]
    return img


def _fabric(rng: np.random.Generator, size: int) -> np.ndarray:
    freq = 2 * np.pi / max(4, size // 16)
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    phase = rng.uniform(0, 2 * np.pi, 2)
    weave = np.sin(xx * freq + phase[0]) * np.sin(yy * freq + phase[1])
    base = np.array([70.0, 95.0, 140.0]) + rng.normal(0, 4, 3)
    return base[None, None, :] + 30.0 * weave[..., None]


TEXTURES: dict[str, Texture] = {"tiles": _tiles, "fabric": _fabric}


def _texture(category: str) -> Texture:
    """Known categories have their own look; any other name gets a stable choice among them."""
    if category in TEXTURES:
        return TEXTURES[category]
    names = sorted(TEXTURES)
    return TEXTURES[names[int(hashlib.sha256(category.encode()).hexdigest(), 16) % len(names)]]


def _image(rng: np.random.Generator, texture: Texture, size: int) -> np.ndarray:
    img = texture(rng, size) + rng.normal(0, 5, (size, size, 3))
    return img


def _defect(rng: np.random.Generator, img: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Paint one defect; returns the image and its boolean mask."""
    size = img.shape[0]
    mask_img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask_img)
    cx, cy = rng.integers(size // 5, 4 * size // 5, 2)
    r = int(rng.integers(max(3, size // 16), max(4, size // 7)))
    if kind == "scratch":
        angle = rng.uniform(0, np.pi)
        dx, dy = np.cos(angle) * 2 * r, np.sin(angle) * 2 * r
        draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=max(2, size // 48))
        colour = np.array([245.0, 245.0, 240.0])
    elif kind == "stain":
        draw.ellipse([cx - r, cy - r // 2, cx + r, cy + r // 2], fill=255)
        colour = np.array([60.0, 40.0, 20.0])
    else:  # hole: texture missing, background shows through
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=255)
        colour = np.array([20.0, 20.0, 20.0])
    mask = np.asarray(mask_img) > 0
    out = img.copy()
    out[mask] = 0.35 * out[mask] + 0.65 * colour
    return out, mask


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(path)


def generate_category(options: SyntheticOptions, category: str, root: Path) -> None:
    """Write one category in MVTec layout under ``root``."""
    seed = int(hashlib.sha256(f"{category}:{options.model_dump_json()}".encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(seed)
    texture, size = _texture(category), options.size
    for i in range(options.n_train):
        _save(root / "train" / "good" / f"{i:03d}.png", _image(rng, texture, size))
    for i in range(options.n_test_good):
        _save(root / "test" / "good" / f"{i:03d}.png", _image(rng, texture, size))
    for i in range(options.n_test_bad):
        kind = DEFECTS[i % len(DEFECTS)]
        img, mask = _defect(rng, _image(rng, texture, size), kind)
        _save(root / "test" / kind / f"{i:03d}.png", img)
        _save(root / "ground_truth" / kind / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255)


def ensure_category(options: SyntheticOptions, category: str, cache: Path) -> Path:
    """Generate a category once into the cache (atomically: temp folder, then rename)."""
    if category not in options.categories:
        raise SpecError(f"unknown category {category!r} of the synthetic dataset; allowed: {', '.join(options.categories)}")
    recipe = hashlib.sha256(options.model_dump_json().encode()).hexdigest()[:12]
    target = cache / "synthetic" / recipe / category
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{category}-", dir=target.parent))
    generate_category(options, category, tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process won the race: its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def texture_bank(folder: Path, count: int = 24, size: int = 128) -> Path:
    """Defect-free textures for models that paste an anomaly source (DRAEM's DTD stand-in)."""
    if folder.is_dir() and any(folder.iterdir()):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20250101)
    for i in range(count):
        texture = list(TEXTURES.values())[i % len(TEXTURES)]
        img = _image(rng, texture, size)
        img = np.roll(img[..., rng.permutation(3)], int(rng.integers(size)), axis=0)
        _save(folder / f"texture_{i:03d}.jpg", img)
    return folder

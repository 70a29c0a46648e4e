"""Synthetic data drift on the test set (supplement Table 10, protocol.md "Synthetic drift").

Each test image gets 1 or 2 of three drift categories (distinct, chosen at random); within each
chosen category one transform is chosen at random, its parameters drawn uniformly from Table 10's
ranges. All randomness is drawn up front by :func:`drift_params` into a :class:`DriftRecipe`
(which the worker records), from a generator seeded by a hash of (seed, image key) and never from
global state; :func:`apply_drift` is then a pure function of image, mask and recipe.

Our readings of Table 10 (decisions, kept explicit in the recipe's parameters):

- Gaussian noise (mean 0.5, std 1.0, scale s): on the image scaled to [0, 1],
  ``x + s * N(0.5, 1.0)`` per pixel and channel, clipped to [0, 1] (a slight brightening by s/2
  plus noise of std s); the noise field comes from a seed stored in the recipe.
- Colour jitter: brightness, then contrast, then saturation (a fixed order), each factor U[0.5, 1.5].
- Random shadow (3 layers, brightness factor 0): three random 5-vertex polygons (vertices uniform
  over the image, joined in angular order so the polygon is simple). Inside each, the image is
  blended half-way (opacity 0.5) with its brightness-factor-0 version, i.e. black, as Automold's
  add_shadow halves the lightness; overlapping layers deepen the shadow (x0.5, x0.25, x0.125).
- Random crop (scale s): a window of s times the image area, with the image's aspect ratio, at a
  uniformly random position, resized back to the original size.
- Perspective (distortion 0.2): as torchvision's RandomPerspective, each corner moves inwards by
  U[0, 0.2 * half the side] along each axis.
- Rotation: U[-5, 5] degrees about the centre, same size, corners filled with black.

Order: camera position first, then lighting, then camera quality (the part moves, is lit, then the
camera captures it). Geometric transforms move the mask with the image (nearest interpolation, so
a binary mask stays binary); photometric ones leave it untouched. The image key is the path's last
four parts (``<category>/test/<defect>/<file>``), so an image drifts the same way wherever the
dataset is mounted. Drifted images are written as PNG (no second JPEG compression).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path, PurePath
from typing import Any, Literal

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from viadk8s.data.convert import atomic_folder
from viadk8s.data.images import decode, read_mask
from viadk8s.data.layout import Sample
from viadk8s.errors import SpecError

Category = Literal["camera_position", "lighting", "camera_quality"]
Params = dict[str, Any]
Tensor = torch.Tensor

#: Categories in the order their transforms are applied.
CATEGORIES: dict[Category, tuple[str, ...]] = {
    "camera_position": ("rotation", "random_crop", "perspective"),
    "lighting": ("color_jitter", "random_shadow"),
    "camera_quality": ("gaussian_blur", "gaussian_noise"),
}
BLUR_KERNEL, BLUR_SIGMA = 7, (0.1, 1.5)
NOISE_MEAN, NOISE_STD, NOISE_SCALE = 0.5, 1.0, (0.01, 0.05)
JITTER = (0.5, 1.5)
SHADOW_LAYERS, SHADOW_VERTICES, SHADOW_BRIGHTNESS, SHADOW_OPACITY = 3, 5, 0.0, 0.5
ROTATION = (-5.0, 5.0)
CROP_SCALE = (0.8, 1.0)
DISTORTION = 0.2


class DriftStep(BaseModel):
    """One transform of a recipe with all its sampled parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    category: Category
    transform: str
    params: Params


class DriftRecipe(BaseModel):
    """Everything random about one image's drift: record it to reproduce or inspect the drift."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    seed: int
    key: str
    steps: tuple[DriftStep, ...]

    @property
    def names(self) -> list[str]:
        return [step.transform for step in self.steps]


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def _sample_blur(rng: np.random.Generator) -> Params:
    return {"kernel_size": BLUR_KERNEL, "sigma": _uniform(rng, BLUR_SIGMA)}


def _sample_noise(rng: np.random.Generator) -> Params:
    return {"mean": NOISE_MEAN, "std": NOISE_STD, "scale": _uniform(rng, NOISE_SCALE), "noise_seed": int(rng.integers(2**31))}


def _sample_jitter(rng: np.random.Generator) -> Params:
    return {name: _uniform(rng, JITTER) for name in ("brightness", "contrast", "saturation")}


def _polygon(rng: np.random.Generator) -> list[float]:
    """A simple polygon: random vertices (fractions of width/height) sorted by angle about their mean."""
    points = rng.uniform(0.0, 1.0, (SHADOW_VERTICES, 2))
    centre = points.mean(axis=0)
    points = points[np.argsort(np.arctan2(points[:, 1] - centre[1], points[:, 0] - centre[0]))]
    return [float(v) for v in points.ravel()]


def _sample_shadow(rng: np.random.Generator) -> Params:
    polygons = [_polygon(rng) for _ in range(SHADOW_LAYERS)]
    return {"layers": SHADOW_LAYERS, "brightness": SHADOW_BRIGHTNESS, "opacity": SHADOW_OPACITY, "polygons": polygons}


def _sample_rotation(rng: np.random.Generator) -> Params:
    return {"angle": _uniform(rng, ROTATION)}


def _sample_crop(rng: np.random.Generator) -> Params:
    return {"scale": _uniform(rng, CROP_SCALE), "top": _uniform(rng, (0.0, 1.0)), "left": _uniform(rng, (0.0, 1.0))}


def _sample_perspective(rng: np.random.Generator) -> Params:
    corners = rng.uniform(0.0, DISTORTION / 2, (4, 2))
    return {"distortion_scale": DISTORTION, "corners": [[float(x), float(y)] for x, y in corners]}


def _blur(img: Tensor, p: Params, _: InterpolationMode) -> Tensor:
    return F.gaussian_blur(img, [p["kernel_size"]] * 2, [p["sigma"]] * 2)


def _noise(img: Tensor, p: Params, _: InterpolationMode) -> Tensor:
    noise = np.random.default_rng(p["noise_seed"]).normal(p["mean"], p["std"], tuple(img.shape))
    return (img + p["scale"] * torch.from_numpy(noise).to(img.dtype)).clamp(0.0, 1.0)


def _jitter(img: Tensor, p: Params, _: InterpolationMode) -> Tensor:
    img = F.adjust_brightness(img, p["brightness"])
    img = F.adjust_contrast(img, p["contrast"])
    return F.adjust_saturation(img, p["saturation"])


def _shadow(img: Tensor, p: Params, _: InterpolationMode) -> Tensor:
    height, width = img.shape[-2:]
    factor = torch.ones(height, width, dtype=img.dtype)
    inside = 1.0 - p["opacity"] * (1.0 - p["brightness"])  # blend towards the image at brightness factor b
    for polygon in p["polygons"]:
        canvas = Image.new("L", (width, height), 0)
        xy = [(x * (width - 1), y * (height - 1)) for x, y in zip(polygon[::2], polygon[1::2], strict=True)]
        ImageDraw.Draw(canvas).polygon(xy, fill=1)
        factor[torch.from_numpy(np.asarray(canvas) > 0)] *= inside
    return img * factor


def _rotation(img: Tensor, p: Params, interpolation: InterpolationMode) -> Tensor:
    return F.rotate(img, p["angle"], interpolation=interpolation, fill=0.0)


def _crop(img: Tensor, p: Params, interpolation: InterpolationMode) -> Tensor:
    height, width = img.shape[-2:]
    side = float(np.sqrt(p["scale"]))
    h, w = max(1, round(height * side)), max(1, round(width * side))
    top, left = round(p["top"] * (height - h)), round(p["left"] * (width - w))
    return F.resized_crop(img, top, left, h, w, [height, width], interpolation=interpolation, antialias=True)


def _perspective(img: Tensor, p: Params, interpolation: InterpolationMode) -> Tensor:
    height, width = img.shape[-2:]
    (a, b), (c, d), (e, f), (g, h) = [(round(x * width), round(y * height)) for x, y in p["corners"]]
    right, bottom = width - 1, height - 1
    start = [[0, 0], [right, 0], [right, bottom], [0, bottom]]
    end = [[a, b], [right - c, d], [right - e, bottom - f], [g, bottom - h]]
    return F.perspective(img, start, end, interpolation=interpolation, fill=0.0)


@dataclass(frozen=True)
class _Transform:
    sample: Callable[[np.random.Generator], Params]
    apply: Callable[[Tensor, Params, InterpolationMode], Tensor]
    geometric: bool


TRANSFORMS: dict[str, _Transform] = {
    "rotation": _Transform(_sample_rotation, _rotation, True),
    "random_crop": _Transform(_sample_crop, _crop, True),
    "perspective": _Transform(_sample_perspective, _perspective, True),
    "color_jitter": _Transform(_sample_jitter, _jitter, False),
    "random_shadow": _Transform(_sample_shadow, _shadow, False),
    "gaussian_blur": _Transform(_sample_blur, _blur, False),
    "gaussian_noise": _Transform(_sample_noise, _noise, False),
}


def drift_key(image_path: str) -> str:
    """The part of an image path that identifies it: ``<category>/test/<defect>/<file>``."""
    return "/".join(PurePath(image_path).parts[-4:])


def drift_params(seed: int, image_path: str) -> DriftRecipe:
    """The drift of one image, drawn from a generator seeded by a hash of (seed, image key)."""
    key = drift_key(image_path)
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
    names = list(CATEGORIES)
    chosen = sorted(rng.choice(len(names), size=int(rng.integers(1, 3)), replace=False))
    steps = []
    for index in chosen:
        category = names[index]
        transform = CATEGORIES[category][int(rng.integers(len(CATEGORIES[category])))]
        steps.append(DriftStep(category=category, transform=transform, params=TRANSFORMS[transform].sample(rng)))
    return DriftRecipe(seed=seed, key=key, steps=tuple(steps))


def _as_array(image: Image.Image | np.ndarray, mode: str) -> np.ndarray:
    """Pixels of a PIL image (``L`` kept, anything else as ``mode``) or an array as given."""
    if isinstance(image, np.ndarray):
        return image
    return np.asarray(image if image.mode in ("L", mode) else image.convert(mode))


def _load(path: str) -> np.ndarray:
    """Stored pixels, their depth kept (8-bit, or a 16-bit container)."""
    return decode(path)


def _to_tensor(array: np.ndarray) -> Tensor:
    """HxW or HxWxC uint8 -> CxHxW."""
    if array.dtype != np.uint8:
        raise SpecError(f"drift needs 8-bit masks, got an array of {array.dtype}")
    tensor = torch.from_numpy(np.array(array))  # a writable, contiguous copy
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)


def _to_array(tensor: Tensor, like: np.ndarray) -> np.ndarray:
    out = tensor.squeeze(0) if like.ndim == 2 else tensor.permute(1, 2, 0)
    return out.contiguous().numpy()


def _drift_pixels(pixels: np.ndarray, recipe: DriftRecipe, bit_depth: int = 8) -> np.ndarray:
    """Drift on the [0, 1] scale of the image's depth (Table 10's ranges are on that scale); the
    result keeps the input's dtype: 8-bit stays 8-bit, a 16-bit container keeps its bit depth."""
    top = 255.0 if pixels.dtype == np.uint8 else float(2**bit_depth - 1)
    tensor = torch.from_numpy(pixels.astype(np.float32) / np.float32(top))
    img = tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    for step in recipe.steps:
        img = TRANSFORMS[step.transform].apply(img, step.params, InterpolationMode.BILINEAR)
    return _to_array((img.clamp(0.0, 1.0) * top).round(), pixels).astype(pixels.dtype)


def _move_mask(mask: np.ndarray, recipe: DriftRecipe) -> np.ndarray:
    """The mask under the recipe's geometric steps only (nearest: its values stay its values)."""
    geometric = [step for step in recipe.steps if TRANSFORMS[step.transform].geometric]
    if not geometric:
        return mask
    moved = _to_tensor(mask)
    for step in geometric:
        moved = TRANSFORMS[step.transform].apply(moved, step.params, InterpolationMode.NEAREST)
    return _to_array(moved, mask)


def apply_drift(
    image: Image.Image | np.ndarray, mask: Image.Image | np.ndarray | None, recipe: DriftRecipe
) -> tuple[Image.Image | np.ndarray, Image.Image | np.ndarray | None]:
    """Drift an 8-bit image and move its mask with it; each comes back as the kind it was given (PIL or array)."""
    drifted = _drift_pixels(_as_array(image, "RGB"), recipe)
    out_image = Image.fromarray(drifted) if isinstance(image, Image.Image) else drifted
    if mask is None:
        return out_image, None
    moved = _move_mask(_as_array(mask, "L"), recipe)
    return out_image, Image.fromarray(moved) if isinstance(mask, Image.Image) else moved


def drift_sample(sample: Sample, seed: int, bit_depth: int = 8) -> tuple[np.ndarray, np.ndarray | None, DriftRecipe]:
    """Load one sample and drift it and its mask; the recipe comes along for the record."""
    recipe = drift_params(seed, sample.image_path)
    image = _drift_pixels(_load(sample.image_path), recipe, bit_depth)
    mask = _move_mask(read_mask(sample.mask_path).numpy() * np.uint8(255), recipe) if sample.mask_path else None
    return image, mask, recipe


def write_drifted_test_set(samples: list[Sample], seed: int, out_dir: Path, bit_depth: int = 8) -> list[Sample]:
    """Write drifted copies of the test samples (and masks) into ``out_dir``; train samples stay as they are.

    ``out_dir`` appears complete or not at all; it also gets ``drift.json`` with every recipe.
    """
    result: list[Sample] = []
    recipes: dict[str, Any] = {}
    with atomic_folder(out_dir) as tmp:
        for sample in samples:
            if sample.split != "test":
                result.append(sample)
                continue
            image, mask, recipe = drift_sample(sample, seed, bit_depth)
            image_rel = Path("test", sample.defect, f"{Path(sample.image_path).stem}.png")
            mask_rel = Path("ground_truth", sample.defect, f"{image_rel.stem}_mask.png")
            _save(image, tmp / image_rel)
            if mask is not None:
                _save(mask, tmp / mask_rel)
            recipes[str(image_rel)] = recipe.model_dump(mode="json")
            mask_path = str(out_dir / mask_rel) if mask is not None else None
            result.append(replace(sample, image_path=str(out_dir / image_rel), mask_path=mask_path))
        (tmp / "drift.json").write_text(json.dumps({"seed": seed, "recipes": recipes}, indent=1))
    return result


def _save(pixels: np.ndarray, path: Path) -> None:
    """A PNG of the pixels' own depth (PIL cannot write 16-bit colour: OpenCV does, in BGR order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if pixels.dtype == np.uint16 and pixels.ndim == 3:
        import cv2

        if not cv2.imwrite(str(path), np.ascontiguousarray(pixels[..., ::-1])):
            raise OSError(f"could not write {path}")
        return
    Image.fromarray(pixels).save(path, format="PNG")


def preview_grid(samples: list[Sample], seed: int, n: int, out_png: Path, variants: int = 3) -> Path:
    """The paper's Fig. 5: ``n`` test images, each beside ``variants`` drifted versions (seeds seed, seed+1, ...).

    Each drifted version is captioned with its transform names.
    """
    tests = sorted((s for s in samples if s.split == "test"), key=lambda s: s.image_path)
    if not tests:
        raise SpecError("drift preview needs a dataset with a test split; this one has no test images")
    if n < 1 or variants < 1:
        raise SpecError(f"drift preview needs n >= 1 and variants >= 1, got n={n}, variants={variants}")
    rows = [tests[i] for i in sorted(set(np.linspace(0, len(tests) - 1, min(n, len(tests))).round().astype(int)))]
    fig = Figure(figsize=(2.0 * (variants + 1), 2.1 * len(rows)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), variants + 1, squeeze=False)
    for row, sample in zip(axes, rows, strict=True):
        original = _load(sample.image_path)
        _show(row[0], original, "original")
        for column, ax in enumerate(row[1:]):
            recipe = drift_params(seed + column, sample.image_path)
            _show(ax, _drift_pixels(original, recipe), " + ".join(recipe.names))
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, format="png", dpi=100)
    return out_png


def _show(ax: Any, pixels: np.ndarray, caption: str) -> None:
    top = 255 if pixels.dtype == np.uint8 else int(pixels.max()) or 1  # a 16-bit image at its own range
    ax.imshow(pixels / top, cmap="gray" if pixels.ndim == 2 else None, vmin=0, vmax=1)
    ax.set_title(caption, fontsize=6)
    ax.axis("off")

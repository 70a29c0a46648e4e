"""Each image of a run decoded and resized once, then read from memory every epoch.

Why: a model sees every train image once per epoch, and decoding a 1500×1000 JPEG (VisA's size)
costs more than the model's step on it at 256 px; the worker used to decode and resize every image
again in every epoch, validation and test pass. Here the data module decodes each image and mask
of a run once, before the first epoch, resizes it with the model's own ``Resize`` transform (the
one anomalib applies before collating), and keeps the result in its integer type: uint8, or uint16
for 16-bit containers, whose values above the dataset's bit depth are clipped first, as
:func:`viadk8s.data.images.to_float` clips them. Every later read only scales a cached array to float.

Exactness: the cached and the uncached path are the same function, :func:`load_image` (and
:func:`load_mask`); the cache only remembers its result, so a model receives bit-identical tensors
with the cache on or off. Resizing the integer image (torchvision's uint8 path) instead of the float
image differs from resizing the float one by less than one grey level (0.89/255 at most, 0.26/255
on average on a VisA-sized JPEG): what image pipelines that resize before converting do.

Memory: up to ``budget_mb`` (``$VIADK8S_DECODE_CACHE_MB``, default 2048: a 900-image category at
512 px is 0.7 GB) stays in memory; what does not fit is appended to ``decoded.bin`` in the run's
scratch folder and read through a read-only memory map, so the page cache, not the process,
holds it. The file is scratch, deleted with the run's folder, and never read by anyone else.

Loader workers: the cache is filled in the training process before any loader starts and is
read-only afterwards; forked workers share its pages, and a pickled cache (spawned workers)
re-opens the memory map by path instead of copying it. An image that is not in the cache (the
cache is off: ``$VIADK8S_DECODE_CACHE=0``) is loaded on every read, by the same function.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.transforms.v2 import Transform
from torchvision.tv_tensors import Image as TvImage
from torchvision.tv_tensors import Mask

from viadk8s.data.images import decode, read_mask
from viadk8s.errors import SpecError

DEFAULT_BUDGET_MB = 2048.0
SPILL_FILE = "decoded.bin"
_ALIGN = 64  # bytes: every spilled array starts aligned for its dtype and the CPU's vector loads


def cache_enabled() -> bool:
    """``$VIADK8S_DECODE_CACHE``: 1 (the default) or 0 (decode on every read, to compare or debug)."""
    value = os.environ.get("VIADK8S_DECODE_CACHE", "1")
    if value not in ("0", "1"):
        raise SpecError(f"VIADK8S_DECODE_CACHE={value!r} is not allowed; allowed: 1 (cache decoded images) or 0")
    return value == "1"


def budget_mb() -> float:
    """``$VIADK8S_DECODE_CACHE_MB``: megabytes kept in memory before spilling to a memory-mapped file."""
    value = os.environ.get("VIADK8S_DECODE_CACHE_MB", str(DEFAULT_BUDGET_MB))
    try:
        megabytes = float(value)
    except ValueError:
        megabytes = -1.0
    if not megabytes >= 0:  # also refuses nan
        raise SpecError(f"VIADK8S_DECODE_CACHE_MB={value!r} is not allowed; allowed: a number of megabytes >= 0")
    return megabytes


def same_resize(a: Transform | None, b: Transform | None) -> bool:
    """Whether two resizes give the same pixels (a restored checkpoint brings an equal, new one)."""
    fields = ("size", "interpolation", "max_size", "antialias")
    return type(a) is type(b) and all(getattr(a, f, None) == getattr(b, f, None) for f in fields)


def _resized(array: np.ndarray, resize: Transform, mask: bool = False) -> np.ndarray:
    """``array`` (``(H, W)`` or ``(H, W, 3)``) through ``resize``, in its own integer type."""
    tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
    if not mask:  # (C, H, W), channels-last in memory: torch's fast uint8 path takes it as it is
        tensor = tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    if tensor.dtype != torch.uint8:  # uint16: torchvision resizes other integers in float and rounds back
        tensor = tensor.to(torch.int32)
    out = resize(Mask(tensor) if mask else TvImage(tensor)).as_subclass(torch.Tensor)
    if not mask:
        out = out[0] if out.shape[0] == 1 else out.permute(1, 2, 0)
    values = out.numpy()
    if array.dtype != np.uint8:
        values = np.clip(values, 0, np.iinfo(array.dtype).max).astype(array.dtype)
    return np.ascontiguousarray(values)


def load_image(path: str | Path, bit_depth: int, resize: Transform | None) -> tuple[np.ndarray, tuple[int, int]]:
    """An image's values as the model will see them before scaling to [0, 1], and the file's own
    ``(H, W)`` (a mask is first brought to it). 1-bit images become uint8 0/255, which
    :func:`~viadk8s.data.images.to_float` scales to the same 0/1 as the booleans."""
    array = decode(path)
    size = (int(array.shape[0]), int(array.shape[1]))
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * np.uint8(255)
    elif array.dtype == np.uint16:
        array = np.minimum(array, np.uint16(2**bit_depth - 1))
    return (array if resize is None else _resized(array, resize)), size


def load_mask(path: str | Path, size: tuple[int, int], resize: Transform | None) -> np.ndarray:
    """A mask, uint8 0/1 at its image's ``size`` (nearest neighbour), then through ``resize``
    as a mask (nearest neighbour again, as anomalib resizes masks)."""
    mask = read_mask(path, size).numpy()
    return mask if resize is None else _resized(mask, resize, mask=True)


class DecodedImages:
    """The decoded images and masks of one run, keyed by path; see the module's docstring.

    Args:
        bit_depth: the dataset's (16-bit containers are clipped to it before resizing).
        resize: the model's ``Resize`` transform, or ``None`` to keep images at their own size.
        folder: where ``decoded.bin`` goes if the cache outgrows ``budget_mb``.
        budget_mb: megabytes kept in memory.
    """

    def __init__(self, bit_depth: int, resize: Transform | None, folder: Path, budget_mb: float = DEFAULT_BUDGET_MB) -> None:
        self.bit_depth, self.resize, self.folder = bit_depth, resize, folder
        self.budget = int(budget_mb * 2**20)
        self.in_memory = 0  # bytes
        self.spilled = 0  # bytes in decoded.bin, padding included
        self._images: dict[str, np.ndarray | tuple[int, tuple[int, ...], str]] = {}
        self._sizes: dict[str, tuple[int, int]] = {}
        self._masks: dict[str, np.ndarray | tuple[int, tuple[int, ...], str]] = {}
        self._mapped: np.memmap | None = None

    def __len__(self) -> int:
        return len(self._images) + len(self._masks)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_mapped": None}  # a spawned loader worker maps the file again

    def fill(self, images: Iterable[str], masks: Iterable[tuple[str, str]], threads: int = 1) -> None:
        """Decode every image, then every ``(mask, its image)`` not cached yet, ``threads`` at a time
        (PIL and torch release the GIL while decoding and resizing)."""
        images = list(dict.fromkeys(p for p in images if p not in self._images))
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for path, (array, size) in zip(images, pool.map(self._load_image, images), strict=True):
                self._images[path] = self._keep(array)
                self._sizes[path] = size
            pairs = list(dict.fromkeys((m, i) for m, i in masks if m not in self._masks))
            for (path, _), array in zip(pairs, pool.map(lambda pair: self._load_mask(*pair), pairs), strict=True):
                self._masks[path] = self._keep(array)
        self._mapped = None  # the file may have grown

    def image(self, path: str) -> np.ndarray:
        """The image at ``path`` as :func:`load_image` gives it (read-only when cached)."""
        kept = self._images.get(path)
        return self._load_image(path)[0] if kept is None else self._read(kept)

    def mask(self, path: str, image_path: str) -> np.ndarray:
        """The mask at ``path`` of the image at ``image_path``, as :func:`load_mask` gives it."""
        kept = self._masks.get(path)
        return self._load_mask(path, image_path) if kept is None else self._read(kept)

    def _load_image(self, path: str) -> tuple[np.ndarray, tuple[int, int]]:
        return load_image(path, self.bit_depth, self.resize)

    def _load_mask(self, path: str, image_path: str) -> np.ndarray:
        size = self._sizes.get(image_path) or self._load_image(image_path)[1]
        return load_mask(path, size, self.resize)

    def _keep(self, array: np.ndarray) -> np.ndarray | tuple[int, tuple[int, ...], str]:
        """The array itself while the budget allows, else where it went in the spill file."""
        if self.in_memory + array.nbytes <= self.budget:
            self.in_memory += array.nbytes
            array.flags.writeable = False
            return array
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / SPILL_FILE, "ab") as spill:
            offset = self.spilled
            spill.write(np.ascontiguousarray(array).tobytes())
            self.spilled = offset + -(-array.nbytes // _ALIGN) * _ALIGN
            spill.write(b"\0" * (self.spilled - offset - array.nbytes))
        return offset, array.shape, array.dtype.str

    def _read(self, kept: np.ndarray | tuple[int, tuple[int, ...], str]) -> np.ndarray:
        if isinstance(kept, np.ndarray):
            return kept
        if self._mapped is None:
            self._mapped = np.memmap(self.folder / SPILL_FILE, dtype=np.uint8, mode="r")
        offset, shape, dtype = kept
        count = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return self._mapped[offset : offset + count].view(dtype).reshape(shape)

"""Dataset images and masks, read with their dynamic range intact.

Industrial cameras write 8-, 10-, 12- or 16-bit images, often 12 bits in a 16-bit container.
Converting such an image to 8-bit RGB (what ``PIL.Image.convert("RGB")`` does) clips every value
above 255, so a 16-bit image turns white. Here an image becomes ``float32`` in ``[0, 1]`` by
dividing by its bit depth's maximum, ``2**bits - 1``: 8-bit images by 255 as before, 16-bit
containers by the dataset's bit depth (configured as ``bit_depth``, or detected from the train
images: the smallest of 8/10/12/14/16 bits that holds their largest value).

Masks: any non-zero pixel is defect, whatever the format (palette masks by palette index, not
colour); a mask whose size differs from its image's is resized with nearest neighbour.

A file that cannot be decoded (truncated, not an image) raises :class:`BadImage`: bad data, exit
2, naming the file, never an "infrastructure" retry.

torch is imported by the two functions that return tensors, not here: planning and estimating
read this module (through the dataset checks) and must not pay torch's seconds of import.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from viadk8s.errors import SpecError

if TYPE_CHECKING:
    import torch

BIT_DEPTHS = (8, 10, 12, 14, 16)
TIFF = {".tif", ".tiff"}
_WIDE_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}  # PIL's 16-bit (and 32-bit int) grayscale


class BadImage(SpecError):
    """An image or mask file that cannot be read: bad data, not an infrastructure fault."""


@dataclass(frozen=True)
class ImageInfo:
    """What a file holds, read from its header (no decoding)."""

    format: str  # PNG, JPEG, BMP, TIFF
    mode: str  # PIL's mode: L, RGB, RGBA, P, I;16, ...
    width: int
    height: int
    container_bits: int  # 1, 8 or 16 bits per channel as stored

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width


def _open(path: str | Path) -> Image.Image:
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise BadImage(f"image {str(path)!r} cannot be read: {err}") from None


def inspect(path: str | Path) -> ImageInfo:
    """Format, mode, size and container depth from the header only."""
    if Path(path).suffix.lower() in TIFF:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                shape, dtype = page.shape, np.dtype(page.dtype)
        except Exception as err:
            raise BadImage(f"image {str(path)!r} cannot be read: {type(err).__name__}: {err}") from None
        planar = len(shape) == 3 and shape[0] in (3, 4) and shape[-1] not in (3, 4)
        height, width = shape[1:] if planar else shape[:2]
        channels = (shape[0] if planar else shape[-1]) if len(shape) == 3 else 1
        bits = 1 if dtype == np.bool_ else 8 * dtype.itemsize
        return ImageInfo("TIFF", f"{dtype.name}x{channels}", int(width), int(height), bits)
    with _open(path) as image:
        bits = 16 if image.mode in _WIDE_MODES else 1 if image.mode == "1" else 8
        return ImageInfo(str(image.format), image.mode, image.width, image.height, bits)


def decode(path: str | Path) -> np.ndarray:
    """The stored values, ``(H, W)`` or ``(H, W, 3)``, in their own dtype (uint8, uint16, bool).

    Alpha is dropped, palette and other colour modes become RGB. TIFFs go through tifffile, which
    also reads 16-bit colour and planar files that PIL cannot."""
    path = Path(path)
    try:
        if path.suffix.lower() in TIFF:
            import tifffile

            array = np.asarray(tifffile.imread(path))
            if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
                array = np.moveaxis(array, 0, -1)  # planar (C, H, W)
        else:
            with _open(path) as image:
                image.load()
                if image.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                    image = image.convert("RGB")
                array = np.asarray(image)
    except BadImage:
        raise
    except Exception as err:  # truncated or corrupt files raise OSError, ValueError, SyntaxError...
        raise BadImage(f"image {str(path)!r} cannot be read: {type(err).__name__}: {err}") from None
    if array.ndim == 3:
        if array.shape[-1] == 2:  # LA
            array = array[..., 0]
        elif array.shape[-1] == 4:  # RGBA: the colour, not the alpha
            array = array[..., :3]
        elif array.shape[-1] == 1:
            array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise BadImage(f"image {str(path)!r} has shape {array.shape}; allowed: grayscale (H, W) or colour (H, W, 3|4)")
    if array.dtype == np.int32:  # PIL mode "I": 16-bit PNGs on some versions
        if array.min() < 0 or array.max() > 65535:
            raise BadImage(f"image {str(path)!r} has 32-bit values outside 0..65535; allowed: 8- or 16-bit integers")
        array = array.astype(np.uint16)
    if array.dtype not in (np.uint8, np.uint16, np.bool_):
        raise BadImage(f"image {str(path)!r} stores {array.dtype} pixels; allowed: 8- or 16-bit integers (or 1-bit)")
    return array


def bits_for(maximum: int) -> int:
    """The smallest standard bit depth whose range holds ``maximum``."""
    return next(bits for bits in BIT_DEPTHS if maximum <= 2**bits - 1)


def detect_bit_depth(paths: Iterable[str | Path]) -> tuple[int, str]:
    """The bit depth of a dataset's images, from its train images, with a note of how it was found.

    8-bit files need no decoding (their depth is in the header); 16-bit containers are decoded and
    their largest value decides (12-bit data in 16 bits: maximum <= 4095 -> 12)."""
    wide = [p for p in paths if inspect(p).container_bits == 16]
    if not wide:
        return 8, "8-bit images"
    maximum = max(int(decode(p).max()) for p in wide)
    bits = bits_for(maximum)
    return bits, f"detected from {len(wide)} 16-bit train images (largest value {maximum})"


def to_float(array: np.ndarray, bit_depth: int) -> torch.Tensor:
    """``(3, H, W)`` float32 in [0, 1]: 8-bit data / 255, wider data / (2**bit_depth - 1), clipped."""
    import torch

    if array.dtype == np.bool_:
        scaled = array.astype(np.float32)
    else:
        top = 255 if array.dtype == np.uint8 else 2**bit_depth - 1
        scaled = np.minimum(array.astype(np.float32) / np.float32(top), np.float32(1.0))
    tensor = torch.from_numpy(np.ascontiguousarray(scaled))
    return tensor.unsqueeze(0).expand(3, -1, -1).clone() if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def read_image(path: str | Path, bit_depth: int = 8) -> torch.Tensor:
    """An image as the models expect it: ``(3, H, W)`` float32 in [0, 1], its range preserved."""
    return to_float(decode(path), bit_depth)


def read_mask(path: str | Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """A mask as ``(H, W)`` uint8 0/1 (any non-zero value is defect), resized to ``size`` with
    nearest neighbour when it differs."""
    import torch

    path = Path(path)
    if path.suffix.lower() in TIFF:
        values = decode(path)
    else:
        try:
            with _open(path) as image:
                image.load()
                values = np.asarray(image)  # palette masks: the index, not its colour
        except BadImage:
            raise
        except Exception as err:
            raise BadImage(f"mask {str(path)!r} cannot be read: {type(err).__name__}: {err}") from None
        if values.ndim == 3:
            values = values[..., : 3 if values.shape[-1] >= 3 else 1]  # never the alpha channel
    mask = torch.from_numpy(np.ascontiguousarray((values.any(axis=-1) if values.ndim == 3 else values) != 0))
    mask = mask.to(torch.uint8)
    if size is not None and tuple(mask.shape) != tuple(size):
        mask = torch.nn.functional.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].to(torch.uint8)
    return mask

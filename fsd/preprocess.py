"""Image files and arrays -> the segmenter's fixed-size input, exactly as the paper prepares them.

RGB (the paper's pipeline): PIL ``convert('RGB')``, shorter side to ``size`` with PIL bilinear and the
long side truncated (``int(size * long / short)``, as torchvision's ``Resize`` computes it), then a
centred crop at ``int(round((h - size) / 2))``. Label maps: the same geometry with nearest neighbour, and
the pixel values kept as class ids.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .errors import InputError
from .segmenters.base import Preprocessing

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after scaling the shorter side to ``size``; the long side is truncated."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def resize_center_crop(image: Image.Image, size: int, resample: str) -> Image.Image:
    new_w, new_h = resized_size(*image.size, size)
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), _RESAMPLE[resample])
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def label_array(image: Image.Image) -> np.ndarray:
    """Class ids of a single-channel label image (modes 1, L, P, I;16*, I). RGB images are refused."""
    if image.mode not in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N"):
        raise InputError(
            f"label maps must be single-channel images whose pixel values are class ids; got mode {image.mode}"
        )
    return np.asarray(image, dtype=np.int64) if image.mode != "1" else np.asarray(image).astype(np.int64)


def prepare(image: Image.Image, preprocessing: Preprocessing) -> np.ndarray:
    """A decoded PIL image -> (3, S, S) uint8 RGB, or (1, S, S) int32 labels."""
    if preprocessing.kind == "rgb":
        image = image.convert("RGB")
        out = resize_center_crop(image, preprocessing.size, preprocessing.resample)
        return np.ascontiguousarray(np.asarray(out, dtype=np.uint8).transpose(2, 0, 1))
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        image = image.convert("I")  # PIL resizes 32-bit integer images, not every 16-bit layout
    if image.mode not in ("1", "L", "P", "I"):
        label_array(image)  # raises the explanatory error
    out = resize_center_crop(image, preprocessing.size, "nearest")
    return label_array(out).astype(np.int32)[None]


def prepare_array(image: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """A uint8 (H, W, 3) array (e.g. a generated image) through the same geometry as files."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    if image.shape[:2] == (preprocessing.size, preprocessing.size):
        return np.ascontiguousarray(image.transpose(2, 0, 1))
    return prepare(Image.fromarray(image), preprocessing)


def quantize(images: torch.Tensor, value_range: tuple[float, float] | None) -> torch.Tensor:
    """Float images in ``value_range`` (``None``: already uint8) -> uint8, rounding to nearest.

    The one rule for every float input (generator outputs, float arrays and tensors), so sampling a
    generator and reading its samples back from PNG files give identical statistics. Values a little
    outside the range (up to 10% of its width) are clipped; NaN, infinity, or values far outside the
    declared range are errors, since they mean the range was declared wrongly.
    """
    if value_range is None:
        if images.dtype != torch.uint8:
            raise InputError(f"expected uint8 images for value_range=None, got {images.dtype}")
        return images
    if not images.dtype.is_floating_point:
        raise InputError(f"images of dtype {images.dtype} need value_range=None (uint8) or float values")
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise InputError(f"value_range must be (low, high) with low < high, got {value_range}")
    if not torch.isfinite(images).all():
        raise InputError("images contain NaN or infinite values")
    vmin, vmax = float(images.min()), float(images.max())
    slack = 0.1 * (hi - lo)
    if vmin < lo - slack or vmax > hi + slack:
        raise InputError(
            f"images span [{vmin:.4g}, {vmax:.4g}] but value_range=({lo:g}, {hi:g}) was declared; "
            "pass the range the images really use, e.g. value_range=(0, 1) or (-1, 1), or uint8 images"
        )
    scaled = (images.double() - lo) * (255.0 / (hi - lo))
    return scaled.round().clamp(0, 255).to(torch.uint8)

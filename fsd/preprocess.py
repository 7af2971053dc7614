"""Image files and arrays -> the segmenter's fixed-size input, exactly as the paper prepares them.

RGB (the paper's pipeline): PIL ``convert('RGB')``, shorter side to ``size`` with PIL bilinear and the
long side truncated (``int(size * long / short)``, as torchvision's ``Resize`` computes it), then a
centred crop at ``int(round((h - size) / 2))``. Label maps: the same geometry with nearest neighbour, and
the pixel values kept as class ids.

Colour modes (`to_rgb`): grayscale is replicated, palette images are expanded, an alpha channel is
dropped (not composited over a background), CMYK goes through PIL's naive formula without ICC profiles;
all of this is the paper's ``convert('RGB')``. One deliberate difference: 16-bit grayscale (PIL modes
``I;16*``, and ``I`` from a PNG) keeps its high byte, as PIL itself does for 16-bit RGB PNGs, where
``convert('RGB')`` would clip every value above 255 to white. No LSUN image is 16-bit, so no number
of the paper depends on this. 32-bit integer and float images (``I`` from TIFF, ``F``) are clipped to
0..255 by ``convert('RGB')``, as in the paper.

Extremely elongated images (resized area over `MAX_RESIZED_PIXELS`, e.g. a 1 x 100000 strip, whose full
resize would need gigabytes) resample only the region the crop keeps; the result can differ from the
full resize by one grey level in some pixels. Every image of ordinary shape takes the exact path.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from ._hints import option
from .errors import InputError
from .segmenters.base import Preprocessing

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
MAX_RESIZED_PIXELS = 2**26  # resized area beyond which only the cropped region is resampled


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after scaling the shorter side to ``size``; the long side is truncated."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def resize_center_crop(image: Image.Image, size: int, resample: str) -> Image.Image:
    new_w, new_h = resized_size(*image.size, size)
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    if new_w * new_h > MAX_RESIZED_PIXELS:
        sx, sy = image.width / new_w, image.height / new_h
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        return image.resize((size, size), _RESAMPLE[resample], box=box)
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), _RESAMPLE[resample])
    return image.crop((left, top, left + size, top + size))


def to_rgb(image: Image.Image) -> Image.Image:
    """The paper's ``convert('RGB')``, except that 16-bit grayscale keeps its high byte (see above)."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES or (image.mode == "I" and image.format == "PNG"):
        high = (np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(high, mode="L").convert("RGB")
    return image.convert("RGB")


def label_array(image: Image.Image) -> np.ndarray:
    """Class ids of a single-channel label image (modes 1, L, P, I;16*, I). RGB images are refused."""
    if image.mode not in ("1", "L", "P", "I", *_SIXTEEN_BIT_MODES):
        raise InputError(
            f"label maps must be single-channel images whose pixel values are class ids; got mode {image.mode}"
        )
    return np.asarray(image, dtype=np.int64) if image.mode != "1" else np.asarray(image).astype(np.int64)


def prepare(image: Image.Image, preprocessing: Preprocessing) -> np.ndarray:
    """A decoded PIL image -> (3, S, S) uint8 RGB, or (1, S, S) int32 labels (a new, writable array)."""
    if preprocessing.kind == "rgb":
        out = resize_center_crop(to_rgb(image), preprocessing.size, preprocessing.resample)
        return np.array(np.asarray(out, dtype=np.uint8).transpose(2, 0, 1), order="C")  # owned and writable
    if image.mode in _SIXTEEN_BIT_MODES:
        image = image.convert("I")  # PIL resizes 32-bit integer images, not every 16-bit layout
    if image.mode not in ("1", "L", "P", "I"):
        label_array(image)  # raises the explanatory error
    out = resize_center_crop(image, preprocessing.size, "nearest")
    return label_array(out).astype(np.int32)[None]


def prepare_array(image: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """A uint8 (H, W, 3) array (e.g. a generated image) through the same geometry as files; a new,
    writable array."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    if preprocessing.kind == "rgb" and image.shape[:2] == (preprocessing.size, preprocessing.size):
        # A copy, never a view: the input may be a read-only memory map, which torch will not wrap.
        return np.array(image.transpose(2, 0, 1), order="C")
    return prepare(Image.fromarray(image), preprocessing)


def parse_value_range(value_range: tuple[float, float]) -> tuple[float, float]:
    """``(low, high)`` as floats, or an `InputError` saying what is wrong with it."""
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise InputError(f"value_range must be a pair (low, high) of numbers, got {value_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise InputError(f"value_range must be (low, high) with low < high, got {value_range}")
    return lo, hi


def check_value_range(
    value_range: tuple[float, float], vmin: float, vmax: float, finite: bool = True, remedy: str | None = None
) -> tuple[float, float]:
    """Validate float images spanning [vmin, vmax] against a declared range; returns (low, high).

    Values a little outside the range (up to 10% of its width) are accepted (and later clipped); NaN,
    infinity, or values far outside mean the range was declared wrongly. ``remedy`` replaces the advice
    that ends the message (where the range is not the caller's to pass, as in `fsd.FSDMetric.update`).
    """
    lo, hi = parse_value_range(value_range)
    if not finite:
        raise InputError("images contain NaN or infinite values")
    slack = 0.1 * (hi - lo)
    if vmin < lo - slack or vmax > hi + slack:
        if remedy is not None:
            raise InputError(f"images span [{vmin:.4g}, {vmax:.4g}]; {remedy}")
        declared = option(f"value_range=({lo:g}, {hi:g})", f"--value-range {lo:g},{hi:g}")
        advice = option("value_range=(0, 1) or (-1, 1)", "--value-range 0,1 or -1,1")
        raise InputError(f"images span [{vmin:.4g}, {vmax:.4g}] but {declared} was declared; pass the range the "
                         f"images really use, e.g. {advice}, or uint8 images")
    return lo, hi


def quantize(images: torch.Tensor, value_range: tuple[float, float] | None, remedy: str | None = None) -> torch.Tensor:
    """Float images in ``value_range`` (``None``: already uint8) -> uint8, rounding to nearest.

    The one rule for every float input (generator outputs, float arrays and tensors), so sampling a
    generator and reading its samples back from PNG files give identical statistics. Values a little
    outside the range (up to 10% of its width) are clipped; NaN, infinity, or values far outside the
    declared range are errors, since they mean the range was declared wrongly. uint8 images are
    already quantized and pass through whatever the range (0..255 is their only meaning). ``remedy``:
    see `check_value_range`.
    """
    if images.dtype == torch.uint8:
        return images
    if value_range is None:
        raise InputError(f"expected uint8 images, got {images.dtype}; "
                         + (remedy or "declare the range of float images, e.g. "
                            + option("value_range=(-1, 1)", "--value-range -1,1")))
    if not images.dtype.is_floating_point:
        raise InputError(f"images of dtype {images.dtype} must be uint8 or float; " + (remedy or "convert them"))
    finite = bool(torch.isfinite(images).all())
    vmin, vmax = (float(images.min()), float(images.max())) if finite and images.numel() else (0.0, 0.0)
    lo, hi = check_value_range(value_range, vmin, vmax, finite, remedy)
    scaled = (images.double() - lo) * (255.0 / (hi - lo))
    return scaled.round().clamp(0, 255).to(torch.uint8)

"""Pictures of what a generator drops: per-photo panels, a contact sheet, and an offline HTML page.

Drawn with PIL alone (matplotlib is an optional extra of the package):

- `panel`: like the paper's figures, the real photo and its reconstruction side by side, the object
  segmentation of each below, and a shared legend of the top classes by pixel count over both
  segmentations, with each class's percentage in the photo and in the reconstruction.
- `class_color` / `colorize`: one fixed colour per class id (label 0, no prediction, is black), so a
  class has the same colour in every panel. Ids 1..20 get Kelly's 20 colours of maximum contrast
  (the commonest classes have the smallest ids in the segmenter's list); higher ids step around
  the hue circle by the golden angle, alternating three saturation/brightness levels.
- `contact_sheet`: a grid of thumbnails with captions.

Pictures only: this module knows nothing of reports or output folders (`fsd.invert.omissions` draws
with it, and writes the HTML page that shows the pictures).
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fsd.errors import InputError

__all__ = ["KELLY_COLORS", "class_color", "palette", "colorize", "legend_entries", "panel", "thumbnail",
           "contact_sheet"]

# Kelly (1965), "Twenty-two colors of maximum contrast", without white and black.
KELLY_COLORS: tuple[tuple[int, int, int], ...] = (
    (0xF3, 0xC3, 0x00), (0x87, 0x56, 0x92), (0xF3, 0x84, 0x00), (0xA1, 0xCA, 0xF1), (0xBE, 0x00, 0x32),
    (0xC2, 0xB2, 0x80), (0x84, 0x84, 0x82), (0x00, 0x88, 0x56), (0xE6, 0x8F, 0xAC), (0x00, 0x67, 0xA5),
    (0xF9, 0x93, 0x79), (0x60, 0x4E, 0x97), (0xF6, 0xA6, 0x00), (0xB3, 0x44, 0x6C), (0xDC, 0xD3, 0x00),
    (0x88, 0x2D, 0x17), (0x8D, 0xB6, 0x00), (0x65, 0x45, 0x22), (0xE2, 0x58, 0x22), (0x2B, 0x3D, 0x26),
)
_GOLDEN = (math.sqrt(5) - 1) / 2
_LEVELS = ((0.85, 0.95), (0.55, 0.80), (0.95, 0.60))  # (saturation, value)
MARGIN, GAP, LINE = 8, 6, 16
BACKGROUND, INK = (255, 255, 255), (20, 20, 20)


def class_color(index: int) -> tuple[int, int, int]:
    """The fixed RGB colour of class ``index`` (0 is black)."""
    if index < 0:
        raise InputError(f"class ids are >= 0, got {index}")
    if index == 0:
        return (0, 0, 0)
    if index <= len(KELLY_COLORS):
        return KELLY_COLORS[index - 1]
    step = index - len(KELLY_COLORS)
    saturation, value = _LEVELS[step % len(_LEVELS)]
    r, g, b = colorsys.hsv_to_rgb((step * _GOLDEN) % 1.0, saturation, value)
    return (round(r * 255), round(g * 255), round(b * 255))


def palette(num_classes: int) -> np.ndarray:
    """uint8 ``(num_classes, 3)``: row c is `class_color(c)`."""
    return np.array([class_color(c) for c in range(num_classes)], dtype=np.uint8).reshape(-1, 3)


def colorize(labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Label map ``(H, W)`` of class ids -> uint8 RGB ``(H, W, 3)`` in the fixed colours."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"a label map must be an integer array (H, W), got {labels.dtype} {labels.shape}")
    if labels.size and labels.min() < 0:
        raise InputError("a label map holds negative class ids")
    count = max(int(labels.max()) + 1 if labels.size else 1, num_classes or 0)
    return palette(count)[labels]


def legend_entries(
    photo_labels: np.ndarray, reconstruction_labels: np.ndarray, top_k: int
) -> list[tuple[int, float, float]]:
    """The ``top_k`` classes by pixel count over both maps: ``(class, photo %, reconstruction %)``."""
    photo_labels, reconstruction_labels = np.asarray(photo_labels), np.asarray(reconstruction_labels)
    count = int(max(photo_labels.max(initial=0), reconstruction_labels.max(initial=0))) + 1
    real = np.bincount(photo_labels.ravel(), minlength=count) * (100.0 / max(photo_labels.size, 1))
    fake = np.bincount(reconstruction_labels.ravel(), minlength=count) * (
        100.0 / max(reconstruction_labels.size, 1))
    both = real + fake
    order = sorted((c for c in range(count) if both[c] > 0), key=lambda c: (-both[c], c))[:top_k]
    return [(c, float(real[c]), float(fake[c])) for c in order]


def _font(size: int = 12) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    """``text`` cut (with ``...``) to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _as_tile(image: np.ndarray, what: str) -> Image.Image:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"{what} must be a uint8 RGB array (H, W, 3), got {image.dtype} {image.shape}")
    return Image.fromarray(image)


def panel(
    photo: np.ndarray,
    reconstruction: np.ndarray,
    photo_labels: np.ndarray,
    reconstruction_labels: np.ndarray,
    class_names: Sequence[str],
    *,
    legend_classes: int = 8,
    title: str | None = None,
) -> Image.Image:
    """The paper's pair: photo and reconstruction over their segmentations, with a shared legend.

    ``photo`` / ``reconstruction``: uint8 ``(S, S, 3)`` (the images as segmented);
    ``*_labels``: their class-id maps (resized to the image size with nearest neighbour if they
    differ). The legend lists the ``legend_classes`` classes with most pixels over both maps, as
    ``name  photo% -> reconstruction%``. Returns an RGB image ``2 S + 2 MARGIN + GAP`` wide.
    """
    if legend_classes < 1:
        raise InputError(f"legend_classes must be at least 1, got {legend_classes}")
    real_tile = _as_tile(photo, "the photo")
    fake_tile = _as_tile(reconstruction, "the reconstruction").resize(real_tile.size, Image.Resampling.BILINEAR)
    width, height = real_tile.size
    seg_tiles = []
    for labels in (photo_labels, reconstruction_labels):
        colored = Image.fromarray(colorize(np.asarray(labels), len(class_names)))
        seg_tiles.append(colored.resize((width, height), Image.Resampling.NEAREST))
    entries = legend_entries(photo_labels, reconstruction_labels, legend_classes)
    for c, _, _ in entries:
        if c >= len(class_names):
            raise InputError(f"the label maps hold class {c}, but only {len(class_names)} class names were given")

    font = _font()
    title_height = LINE + 2 if title else 0
    legend_rows = math.ceil(len(entries) / 2)
    total_width = 2 * MARGIN + 2 * width + GAP
    total_height = (MARGIN + title_height + LINE + 2 * height + GAP + GAP + legend_rows * LINE + MARGIN)
    canvas = Image.new("RGB", (total_width, total_height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    y = MARGIN
    if title:
        draw.text((MARGIN, y), _fit(draw, title, font, total_width - 2 * MARGIN), fill=INK, font=font)
        y += title_height
    columns = (MARGIN, MARGIN + width + GAP)
    for x, caption in zip(columns, ("photo", "reconstruction")):
        draw.text((x, y), caption, fill=INK, font=font)
    y += LINE
    for x, tile in zip(columns, (real_tile, fake_tile)):
        canvas.paste(tile, (x, y))
    y += height + GAP
    for x, tile in zip(columns, seg_tiles):
        canvas.paste(tile, (x, y))
    y += height + GAP
    swatch = LINE - 5
    for position, (c, real, fake) in enumerate(entries):
        x = columns[position % 2]
        row_y = y + (position // 2) * LINE
        draw.rectangle((x, row_y + 2, x + swatch, row_y + 2 + swatch), fill=class_color(c), outline=INK)
        name = "no prediction" if c == 0 else class_names[c]
        numbers = f"  {real:.1f}% -> {fake:.1f}%"
        room = width - swatch - 6 - draw.textlength(numbers, font=font)
        draw.text((x + swatch + 6, row_y + 1), _fit(draw, name, font, max(room, 10)) + numbers,
                  fill=INK, font=font)
    return canvas


def thumbnail(image: Image.Image, width: int = 256) -> Image.Image:
    """A copy of ``image`` scaled to ``width`` pixels wide (aspect kept)."""
    if width < 1:
        raise InputError(f"thumbnail width must be at least 1, got {width}")
    height = max(1, round(image.height * width / image.width))
    return image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)


def contact_sheet(
    images: Sequence[Image.Image], captions: Sequence[str], *, columns: int = 4, width: int = 256
) -> Image.Image:
    """A grid of ``images`` (scaled to ``width`` wide), each with its caption below."""
    if len(images) != len(captions):
        raise InputError(f"got {len(images)} images and {len(captions)} captions")
    if columns < 1:
        raise InputError(f"columns must be at least 1, got {columns}")
    font = _font()
    if not images:
        canvas = Image.new("RGB", (width, 2 * LINE), BACKGROUND)
        ImageDraw.Draw(canvas).text((MARGIN, MARGIN), "no photos", fill=INK, font=font)
        return canvas
    tiles = [thumbnail(image, width) for image in images]
    cell_height = max(tile.height for tile in tiles) + LINE
    columns = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    canvas = Image.new("RGB", (MARGIN + columns * (width + MARGIN), MARGIN + rows * (cell_height + MARGIN)),
                       BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for k, (tile, caption) in enumerate(zip(tiles, captions)):
        x = MARGIN + (k % columns) * (width + MARGIN)
        y = MARGIN + (k // columns) * (cell_height + MARGIN)
        canvas.paste(tile, (x, y))
        draw.text((x, y + tile.height + 2), _fit(draw, caption, font, width), fill=INK, font=font)
    return canvas

"""Pictures of what a generator drops: per-photo panels, a contact sheet, and an offline HTML page.

Drawn with PIL alone (matplotlib is an optional extra of the package):

- `panel`: like the paper's figures, the real photo and its reconstruction side by side, the object
  segmentation of each below, and a shared legend of the top classes by pixel count over both
  segmentations, with each class's percentage in the photo and in the reconstruction.
- `class_color` / `colorize`: one fixed colour per class id (label 0, no prediction, is black), so a
  class has the same colour in every panel (defined in `fsd.palette`, shared with the set report).
- `contact_sheet`: a grid of thumbnails with captions.

Pictures only: this module knows nothing of reports or output folders (`fsd.invert.omissions` draws
with it, and writes the HTML page that shows the pictures).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fsd.errors import InputError
from fsd.palette import KELLY_COLORS, class_color, colorize, palette

__all__ = ["KELLY_COLORS", "class_color", "palette", "colorize", "legend_entries", "panel", "thumbnail",
           "contact_sheet"]

MARGIN, GAP, LINE = 8, 6, 16
BACKGROUND, INK = (255, 255, 255), (20, 20, 20)


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

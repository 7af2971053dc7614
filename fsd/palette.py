"""One fixed colour per class id, the same in every picture and page (the inversion panels, the set
report's overlays and legends).

Label 0 (no prediction) is black. Ids 1..20 get Kelly's 20 colours of maximum contrast (the commonest
classes have the smallest ids in the segmenter's list); higher ids step around the hue circle by the
golden angle, alternating three saturation/brightness levels.

>>> palette(3).tolist()
[[0, 0, 0], [243, 195, 0], [135, 86, 146]]
>>> hex_color(class_color(2))
'#875692'
"""

from __future__ import annotations

import colorsys
import math

import numpy as np

from fsd.errors import InputError

__all__ = ["KELLY_COLORS", "class_color", "palette", "colorize", "hex_color"]

# Kelly (1965), "Twenty-two colors of maximum contrast", without white and black.
KELLY_COLORS: tuple[tuple[int, int, int], ...] = (
    (0xF3, 0xC3, 0x00), (0x87, 0x56, 0x92), (0xF3, 0x84, 0x00), (0xA1, 0xCA, 0xF1), (0xBE, 0x00, 0x32),
    (0xC2, 0xB2, 0x80), (0x84, 0x84, 0x82), (0x00, 0x88, 0x56), (0xE6, 0x8F, 0xAC), (0x00, 0x67, 0xA5),
    (0xF9, 0x93, 0x79), (0x60, 0x4E, 0x97), (0xF6, 0xA6, 0x00), (0xB3, 0x44, 0x6C), (0xDC, 0xD3, 0x00),
    (0x88, 0x2D, 0x17), (0x8D, 0xB6, 0x00), (0x65, 0x45, 0x22), (0xE2, 0x58, 0x22), (0x2B, 0x3D, 0x26),
)
_GOLDEN = (math.sqrt(5) - 1) / 2
_LEVELS = ((0.85, 0.95), (0.55, 0.80), (0.95, 0.60))  # (saturation, value)


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


def hex_color(color) -> str:
    """``#rrggbb`` of an RGB triple."""
    r, g, b = (int(c) for c in color)
    return f"#{r:02x}{g:02x}{b:02x}"

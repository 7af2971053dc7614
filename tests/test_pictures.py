"""Panels, colours, contact sheets (drawn with PIL), and the output folder's HTML page."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fsd.errors import InputError
from fsd.invert.omissions import OmissionReport, html_page
from fsd.invert.pictures import (
    GAP,
    KELLY_COLORS,
    LINE,
    MARGIN,
    class_color,
    colorize,
    contact_sheet,
    legend_entries,
    panel,
    palette,
)
from tests.test_proggan import module_imports

NAMES = ["-", "wall", "sky", "person, individual", "car", "a-very-long-class-name-that-will-not-fit-the-legend"]


def photo(seed: int, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def stripes(classes: list[int], size: int = 64) -> np.ndarray:
    """Horizontal bands of equal height, one per class."""
    rows = np.array(classes)[np.arange(size) * len(classes) // size]
    return np.repeat(rows[:, None], size, axis=1).astype(np.int64)


def test_class_colours_are_fixed_and_distinct():
    assert class_color(0) == (0, 0, 0)
    assert class_color(1) == KELLY_COLORS[0] and class_color(20) == KELLY_COLORS[19]
    colours = palette(400)
    assert colours.shape == (400, 3) and colours.dtype == np.uint8
    assert len({tuple(c) for c in colours}) == 400
    # Neighbouring ids (often shown together) differ clearly.
    distance = np.abs(colours[1:-1].astype(int) - colours[2:].astype(int)).sum(axis=1)
    assert distance.min() > 60
    assert class_color(123) == class_color(123)
    with pytest.raises(InputError):
        class_color(-1)


def test_colorize():
    labels = np.array([[0, 1], [2, 150]])
    image = colorize(labels)
    assert image.shape == (2, 2, 3) and image.dtype == np.uint8
    assert tuple(image[1, 1]) == class_color(150) and tuple(image[0, 0]) == (0, 0, 0)
    with pytest.raises(InputError):
        colorize(np.zeros((2, 2), dtype=np.float32))


def test_legend_lists_the_top_classes_over_both_maps():
    real = stripes([1, 1, 2, 3])      # wall 50, sky 25, person 25
    fake = stripes([1, 2, 2, 2])      # wall 25, sky 75
    entries = legend_entries(real, fake, 2)
    assert [c for c, _, _ in entries] == [2, 1]   # sky 100 in all, wall 75
    c, real_pct, fake_pct = legend_entries(real, fake, 3)[2]
    assert c == 3 and real_pct == pytest.approx(100 * 16 / 64) and fake_pct == 0.0


def test_panel_size_and_content():
    real_image, fake_image = photo(0), photo(1)
    real_labels, fake_labels = stripes([1, 2, 3, 5]), stripes([1, 2, 4, 4])
    image = panel(real_image, fake_image, real_labels, fake_labels, NAMES, legend_classes=5, title="photo 1")
    assert image.mode == "RGB"
    legend_rows = 3  # five classes in two columns
    expected_height = MARGIN + (LINE + 2) + LINE + 2 * 64 + 2 * GAP + legend_rows * LINE + MARGIN
    assert image.size == (2 * MARGIN + 2 * 64 + GAP, expected_height)
    pixels = np.asarray(image)
    top = MARGIN + LINE + 2 + LINE
    left, right = MARGIN, MARGIN + 64 + GAP
    assert np.array_equal(pixels[top:top + 64, left:left + 64], real_image)
    assert np.array_equal(pixels[top:top + 64, right:right + 64], fake_image)
    below = top + 64 + GAP
    assert np.array_equal(pixels[below:below + 64, left:left + 64], colorize(real_labels))
    assert np.array_equal(pixels[below:below + 64, right:right + 64], colorize(fake_labels))
    legend = pixels[below + 64 + GAP:]
    colours_in_legend = {tuple(p) for p in legend.reshape(-1, 3)}
    for c in (1, 2, 3, 4, 5):
        assert class_color(c) in colours_in_legend, c
    assert (legend.sum(axis=2) < 150).sum() > 200  # text was drawn
    title_band = pixels[MARGIN:MARGIN + LINE]
    assert (title_band.sum(axis=2) < 150).any()


def test_panel_resizes_maps_and_checks_inputs():
    image = panel(photo(0, 32), photo(1, 32), stripes([1, 2], 8), stripes([2], 8), NAMES, legend_classes=1)
    assert image.size == (2 * MARGIN + 64 + GAP, MARGIN + LINE + 64 + 2 * GAP + LINE + MARGIN)
    with pytest.raises(InputError, match="uint8"):
        panel(photo(0).astype(np.float32), photo(1), stripes([1]), stripes([1]), NAMES)
    with pytest.raises(InputError, match="class names"):
        panel(photo(0), photo(1), stripes([9]), stripes([1]), NAMES)


def test_contact_sheet_grid():
    tiles = [Image.fromarray(photo(k, 40)) for k in range(5)]
    sheet = contact_sheet(tiles, [f"photo {k}" for k in range(5)], columns=2, width=80)
    cell_height = 80 + LINE
    assert sheet.size == (MARGIN + 2 * (80 + MARGIN), MARGIN + 3 * (cell_height + MARGIN))
    pixels = np.asarray(sheet)
    first = np.asarray(tiles[0].resize((80, 80), Image.Resampling.LANCZOS))
    assert np.array_equal(pixels[MARGIN:MARGIN + 80, MARGIN:MARGIN + 80], first)
    caption = pixels[MARGIN + 80:MARGIN + 80 + LINE, MARGIN:MARGIN + 80]
    assert (caption.sum(axis=2) < 150).any()
    empty = contact_sheet([], [])
    assert empty.size[0] > 0
    with pytest.raises(InputError):
        contact_sheet(tiles, ["one caption"])


def test_html_page_escapes_and_links_relatively():
    report = OmissionReport(
        ("photos/<b>x</b>.jpg", "photos/y.jpg"), tuple(NAMES),
        np.array([[0, 50, 20, 30, 0, 0], [0, 60, 40, 0, 0, 0]], dtype=float),
        np.array([[0, 70, 25, 5, 0, 0], [0, 60, 40, 0, 0, 0]], dtype=float),
    )
    page = html_page(report, ["b_x_b", "y"], rankings={3: "ranked_person-3.csv"})
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert 'src="panels/b_x_b.png"' in page and 'href="reconstructions/y.png"' in page
    assert 'id="ranking-3"' in page and 'href="ranked_person-3.csv"' in page
    assert "http" not in page
    assert "person, individual (25.0)" in page  # the lost class of the first photo (full name), its loss
    with pytest.raises(InputError):
        html_page(report, ["only-one"])


def test_pictures_know_nothing_of_reports():
    """omissions draws with pictures; pictures never refers back (not even for type hints)."""
    assert not [m for m in module_imports("fsd.invert.pictures") if m.startswith("fsd.invert")]
    assert "fsd.invert.pictures" in module_imports("fsd.invert.omissions")


@pytest.mark.parametrize("module", ["fsd.invert.omissions", "fsd.invert.pictures"])
def test_each_module_imports_first_in_a_fresh_interpreter(module):
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr

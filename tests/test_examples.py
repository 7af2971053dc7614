"""Choosing example images from per-image rows, and drawing a class on them (fsd.examples)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fsd.errors import InputError
from fsd.examples import outline, overlay, read_examples, reopen, top_images
from fsd.rows import Rows
from fsd.segmenters.labelmap import LabelMapSegmenter
from fsd.sources import open_source
from tests.conftest import stats_of, write_label_folder


def test_the_images_with_the_most_of_a_class_come_first_ties_by_position():
    counts = np.array([[5, 2], [0, 7], [9, 2], [1, 0], [3, 2]])
    rows = Rows.from_dense(counts, [4, 1, 0, 3, 2], ["e", "b", "a", "d", "c"])
    assert top_images(rows, 1, 10) == [1, 2, 4, 0]  # 7, then the three 2s by source index 0, 2, 4; never d
    assert top_images(rows, 1, 2) == [1, 2]
    assert top_images(rows, 0, 2) == [2, 0]
    assert top_images(rows, 1, 0) == []
    # The order the statistics happened to be built in does not matter.
    shuffled = rows.take(np.array([3, 0, 4, 2, 1]))
    assert [shuffled.ids[p] for p in top_images(shuffled, 1, 10)] == ["b", "a", "c", "e"]
    with pytest.raises(InputError, match="out of range"):
        top_images(rows, 2, 1)
    with pytest.raises(InputError, match=">= 0"):
        top_images(rows, 0, -1)


def test_a_known_mask_is_outlined_exactly_and_nothing_else_changes():
    mask = np.zeros((6, 7), bool)
    mask[1:5, 2:6] = True  # a 4 x 4 square
    mask[0, 0] = True  # a lone pixel at the border is all boundary
    expected = np.zeros_like(mask)
    expected[1, 2:6] = expected[4, 2:6] = expected[1:5, 2] = expected[1:5, 5] = True
    expected[0, 0] = True
    assert np.array_equal(outline(mask), expected)
    full = np.ones((3, 3), bool)
    assert np.array_equal(outline(full), ~np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], bool))

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    drawn = overlay(image, mask, color=(0, 200, 0), outline_color=(255, 0, 255), tint=0.5)
    assert np.array_equal(drawn[~mask], image[~mask])  # outside the mask: untouched
    assert (drawn[expected] == [255, 0, 255]).all()  # the boundary: the outline colour
    inner = mask & ~expected
    assert np.array_equal(drawn[inner], np.rint(0.5 * image[inner] + 0.5 * np.array([0, 200, 0])).astype(np.uint8))


def test_examples_are_read_again_and_segmented_as_in_the_statistics(tmp_path):
    folder = write_label_folder(tmp_path / "labels", 6, classes=4, seed=3)
    segmenter = LabelMapSegmenter(4)
    source = open_source(folder)
    rows = stats_of(folder, segmenter).rows
    ids = rows.ids
    examples, problems = read_examples(source, rows, [0, 2], segmenter)
    assert problems == [] and sorted(examples) == [0, 2]
    assert all(e.matches for e in examples.values())
    # A changed file is still read, but marked; a vanished one is named, never a crash.
    name = ids[2]
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(name)
    (folder / ids[0].rsplit("/", 1)[1]).unlink()
    examples, problems = read_examples(open_source(folder), rows, [0, 2], segmenter)
    assert not examples[2].matches
    assert len(problems) == 1 and ids[0] in problems[0] and "no longer in" in problems[0]


def test_recorded_sources_are_opened_again_or_say_why_not(tmp_path):
    folder = write_label_folder(tmp_path / "labels", 2, classes=3, seed=0)
    assert len(reopen(str(folder))) == 2
    with pytest.raises(InputError, match="does not exist any more"):
        reopen(str(tmp_path / "gone"))
    with pytest.raises(InputError, match="nothing to read again"):
        reopen("array (12 images)")
    with pytest.raises(InputError, match="do not record"):
        reopen("")

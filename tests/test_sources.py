import os
import random

import numpy as np
import pytest
from PIL import Image

from fsd.errors import ImageReadError, InputError
from fsd.preprocess import prepare, resized_size
from fsd.segmenters.base import PAPER_PREPROCESSING
from fsd.sources import FolderSource, iterate_batches, list_images, select_indices


def touch_image(path, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(path)


def test_walk_order_is_the_papers(tmp_path):
    for rel in ["zebra.png", "sub/a.png", "a-b/c.jpg", "a/x/y.PNG", "a/b.JPEG", "Upper.png", "notes.txt"]:
        if rel.endswith(".txt"):
            (tmp_path / rel).write_text("not an image")
        else:
            touch_image(tmp_path / rel)
    rel = [os.path.relpath(p, tmp_path) for p in list_images(tmp_path)]
    # Own files first; then directories in string order of their full path ("a-b" < "a/x" since '-' < '/').
    assert rel == ["Upper.png", "zebra.png", "a/b.JPEG", "a-b/c.jpg", "a/x/y.PNG", "sub/a.png"]


def test_symlink_loop_terminates(tmp_path):
    touch_image(tmp_path / "d" / "a.png")
    os.symlink(tmp_path, tmp_path / "d" / "loop")
    assert [os.path.basename(p) for p in list_images(tmp_path)] == ["a.png"]


def test_empty_folder_and_missing_folder_are_errors(tmp_path):
    with pytest.raises(InputError, match="no images found"):
        FolderSource(tmp_path)
    with pytest.raises(InputError, match="not a folder"):
        FolderSource(tmp_path / "missing")


def test_images_only_in_subfolders_are_found(tmp_path):
    touch_image(tmp_path / "x" / "y" / "deep.png")
    assert len(FolderSource(tmp_path)) == 1


def test_subset_rule_matches_the_paper():
    expected = list(range(20))
    random.Random(1).shuffle(expected)
    assert select_indices(20, 5, seed=1) == expected[:5]
    assert select_indices(20, 5, seed=1) == [11, 5, 17, 19, 9]  # fixed by the algorithm of random.shuffle
    assert select_indices(7, None, seed=1) == list(range(7))


def test_asking_for_more_images_than_exist_is_an_error():
    with pytest.raises(InputError, match="only 3"):
        select_indices(3, 4, seed=1)


@pytest.mark.parametrize(
    "size, expected",
    [((500, 375), (341, 256)), ((375, 500), (256, 341)), ((10, 300), (256, 7680)), ((1, 1), (256, 256)),
     ((256, 256), (256, 256)), ((257, 1000), (256, 996))],
)
def test_resize_truncates_the_long_side(size, expected):
    assert resized_size(*size, 256) == expected


def test_prepare_is_pil_bilinear_then_center_crop():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8))
    out = prepare(image, PAPER_PREPROCESSING)
    manual = image.resize((341, 256), Image.Resampling.BILINEAR).crop((42, 0, 298, 256))  # round(42.5) == 42
    assert out.shape == (3, 256, 256) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.asarray(manual).transpose(2, 0, 1))


def test_prepare_converts_modes_like_pil_convert_rgb():
    gray = Image.new("L", (300, 256), 77)
    out = prepare(gray, PAPER_PREPROCESSING)
    assert (out == 77).all()
    rgba = Image.new("RGBA", (256, 256), (200, 100, 50, 0))  # alpha dropped, not composited
    assert (prepare(rgba, PAPER_PREPROCESSING)[:, 0, 0] == [200, 100, 50]).all()


def test_unreadable_image_names_the_file_or_is_skipped(tmp_path):
    touch_image(tmp_path / "good.png", (300, 300))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    source = FolderSource(tmp_path)
    with pytest.raises(ImageReadError, match="bad.jpg"):
        list(iterate_batches(source, range(2), PAPER_PREPROCESSING, batch_size=2, num_workers=0,
                             skip_bad_images=False, skipped=[]))
    skipped = []
    batches = list(iterate_batches(source, range(2), PAPER_PREPROCESSING, batch_size=2, num_workers=1,
                                   skip_bad_images=True, skipped=skipped))
    assert [b.ids for b in batches] == [[str(tmp_path / "good.png")]]
    assert len(skipped) == 1 and skipped[0][0].endswith("bad.jpg")


def test_a_folder_reached_by_two_paths_is_listed_once_under_a_fixed_one(tmp_path, monkeypatch):
    touch_image(tmp_path / "b" / "img.png")
    os.symlink(tmp_path / "b", tmp_path / "a")  # "a" sorts first: it claims the folder
    expected = [os.path.join(str(tmp_path), "a", "img.png")]
    assert list_images(tmp_path, follow_links=True) == expected
    real_scandir = os.scandir

    def reversed_scandir(path):  # a filesystem that lists entries in another order
        return iter(sorted(real_scandir(path), key=lambda e: e.name, reverse=True))

    monkeypatch.setattr(os, "scandir", reversed_scandir)
    assert list_images(tmp_path, follow_links=True) == expected

"""Hugging Face datasets as sources: a `datasets.Dataset` with an image column and a `save_to_disk`
folder (detected by the command line), built here from image files, offline. `datasets` is a test
requirement (the `test` extra): without it this module fails to import, on purpose."""

import io
import json
import sys

import datasets
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import fsd
from fsd.cli import cli
from fsd.errors import ImageReadError, InputError
from fsd.sources import HFDatasetSource, open_source
from tests.conftest import ColorSegmenter, assert_same_sums, random_photo, stats_of

N = 7


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf") / "images"
    root.mkdir()
    rng = np.random.default_rng(11)
    for k in range(N):
        image = random_photo(rng, 36 + 5 * k, 30)
        image.save(root / f"{k:02d}.{'png' if k % 2 else 'jpg'}", **({} if k % 2 else {"quality": 85}))
    return root


def built(folder, **extra_columns):
    """A dataset holding the files' encoded bytes in an Image column, with a label column first."""
    paths = sorted(folder.iterdir())
    columns = {"label": list(range(len(paths))), "image": [{"bytes": p.read_bytes(), "path": None} for p in paths]}
    features = {"label": datasets.Value("int64"), "image": datasets.Image()}
    for name, values in extra_columns.items():
        columns[name] = values
        features[name] = datasets.Image()
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


@pytest.fixture(scope="module")
def segmenter():
    return ColorSegmenter(size=32)


def test_a_dataset_equals_the_folder_it_was_built_from(folder, segmenter):
    expected = stats_of(folder, segmenter)
    dataset = built(folder)
    source = open_source(dataset)
    assert isinstance(source, HFDatasetSource) and source.image_column == "image" and len(source) == N
    assert_same_sums(stats_of(dataset, segmenter), expected)
    assert_same_sums(stats_of(dataset, segmenter, num_workers=2, batch_size=3), expected)
    ids = fsd.class_percentages_of(dataset, segmenter=segmenter, num_workers=0, progress=False).ids
    assert list(ids) == [f"dataset[{k}]" for k in range(N)]


def test_a_saved_folder_is_detected_by_the_api_and_the_command_line(folder, tmp_path, segmenter, monkeypatch):
    saved = tmp_path / "saved"
    built(folder).save_to_disk(str(saved))
    expected = stats_of(folder, segmenter)
    assert_same_sums(stats_of(saved, segmenter), expected)
    assert open_source(saved).identity(3) == f"{saved}[3]"
    monkeypatch.setattr("fsd.cli._make_segmenter", lambda *args, **kwargs: segmenter)
    out = tmp_path / "s.npz"
    result = CliRunner().invoke(cli, ["--save-stats", str(saved), str(out), "--num-workers", "2", "-q"])
    assert result.exit_code == 0, result.output
    assert_same_sums(fsd.Stats.load(out), expected)
    splits = tmp_path / "splits"
    datasets.DatasetDict({"train": built(folder)}).save_to_disk(str(splits))
    refused = CliRunner().invoke(cli, ["--save-stats", str(splits), str(tmp_path / "t.npz"), "-q"])
    assert refused.exit_code == 2
    assert f"holds a DatasetDict with splits train; pass one split's folder, e.g. {splits / 'train'}" in refused.stderr


def test_the_image_column_is_the_first_image_feature_or_the_named_one(folder, segmenter, tmp_path):
    negative = [{"bytes": _png(255 - np.asarray(Image.open(p).convert("RGB"))), "path": None}  # negatives
               for p in sorted(folder.iterdir())]
    dataset = built(folder, negative=negative)
    assert open_source(dataset).image_column == "image"
    other = open_source(dataset, image_column="negative")
    assert other.image_column == "negative"
    assert not np.array_equal(stats_of(other, segmenter).count_outer_sum, stats_of(dataset, segmenter).count_outer_sum)
    with pytest.raises(InputError, match="no column 'nosuch'; its columns: label, image, negative"):
        open_source(dataset, image_column="nosuch")
    with pytest.raises(InputError, match="column 'label' is of type .*not datasets.Image; its image columns: image, "
                                         "negative"):
        open_source(dataset, image_column="label")
    plain = datasets.Dataset.from_dict({"label": [1, 2]})
    with pytest.raises(InputError, match="no image column .*among its columns label; name one with image_column="):
        open_source(plain)
    saved = tmp_path / "two-columns"
    dataset.save_to_disk(str(saved))
    result = CliRunner().invoke(cli, ["--save-stats", str(saved), str(tmp_path / "x.npz"), "--image-column",
                                      "label", "--segmenter", "labelmap", "--num-classes", "4"])
    assert result.exit_code == 2 and "column 'label' is of type" in result.stderr


def _png(array):
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, "PNG")
    return buffer.getvalue()


def test_bad_rows_are_named_and_other_kinds_refused(folder):
    good = (sorted(folder.iterdir())[0]).read_bytes()
    dataset = datasets.Dataset.from_dict({"image": [{"bytes": good, "path": None}, {"bytes": b"not an image",
                                                                                    "path": None}, None]},
                                         features=datasets.Features({"image": datasets.Image()}))
    source = HFDatasetSource(dataset)
    source.open(0)
    with pytest.raises(ImageReadError, match=r"dataset\[1\]: not an image Pillow can decode"):
        source.read(1, fsd.Preprocessing("rgb", 32, "bilinear"))
    with pytest.raises(ImageReadError, match=r"dataset\[2\]: no image in column 'image'"):
        source.read(2, fsd.Preprocessing("rgb", 32, "bilinear"))
    with pytest.raises(InputError, match="DatasetDict with splits a, b: pass one split"):
        open_source(datasets.DatasetDict({"a": dataset, "b": dataset}))
    with pytest.raises(InputError, match="streaming datasets cannot be read at random"):
        open_source(dataset.to_iterable_dataset())
    with pytest.raises(InputError, match="--key|key= does not apply to a Hugging Face Dataset"):
        open_source(dataset, key="x")


def test_a_saved_folder_without_the_package_says_how_to_install_it(folder, tmp_path, monkeypatch):
    saved = tmp_path / "saved"
    built(folder).save_to_disk(str(saved))
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'pytorch-fsd\[datasets\]'"):
        open_source(saved)
    assert json.loads((saved / "state.json").read_text())  # the folder itself is untouched

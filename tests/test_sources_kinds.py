"""Every kind of source gives the same statistics as the same images in a folder of PNG files."""

from __future__ import annotations

import io
import json
import sys
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import fsd
from fsd.cli import cli
from fsd.errors import InputError
from fsd.sources import (
    ArrayFileSource,
    ArraySource,
    FolderSource,
    LmdbSource,
    SequenceSource,
    SourceFormatError,
    ZipSource,
    is_saved_stats,
    open_source,
)
from tests.conftest import ColorSegmenter, random_photo

N, H, W = 8, 40, 56  # non-square, so the resize and the crop both take part


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(7)
    return np.stack([np.asarray(random_photo(rng, W, H)) for _ in range(N)])  # (N, H, W, 3) uint8


@pytest.fixture(scope="module")
def segmenter() -> ColorSegmenter:
    return ColorSegmenter(size=32)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, images, segmenter):
    folder = tmp_path_factory.mktemp("ref") / "pngs"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return folder, stats_of(folder, segmenter)


def stats_of(source, segmenter, **options):
    options = {"num_workers": 0, "progress": False, **options}
    return fsd.compute_stats(source, segmenter=segmenter, **options)


def assert_same(stats, expected):
    assert stats.n == expected.n
    assert np.array_equal(stats.count_sum, expected.count_sum)
    assert np.array_equal(stats.count_outer_sum, expected.count_outer_sum)
    assert np.array_equal(stats.mu, expected.mu) and np.array_equal(stats.sigma, expected.sigma)


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def ids_of(source, segmenter):
    return fsd.class_percentages_of(source, segmenter=segmenter, num_workers=0, progress=False).ids


# -- archives ----------------------------------------------------------------------------------------

def test_zip_archive_matches_the_folder_and_names_members(tmp_path, images, reference, segmenter):
    folder, expected = reference
    archive = tmp_path / "samples.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for i, image in enumerate(images):
            z.writestr(f"{'nested/' if i % 2 else ''}{i:03d}.PNG", png_bytes(image))
        z.writestr("readme.txt", "not an image")
        z.writestr("__MACOSX/._000.png", b"\x00\x05\x16\x07 resource fork")
    assert_same(stats_of(archive, segmenter), expected)
    assert_same(stats_of(archive, segmenter, num_workers=2, batch_size=3), expected)
    source = open_source(archive)
    assert isinstance(source, ZipSource) and len(source) == N
    assert source.identity(0) == f"{archive}!000.PNG"


def test_zip_order_is_the_folder_order(tmp_path):
    names = ["zebra.png", "sub/a.png", "a-b/c.jpg", "a/x/y.PNG", "a/b.JPEG", "Upper.png"]
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "PNG")
    with zipfile.ZipFile(tmp_path / "t.zip", "w") as z:
        for name in names:
            z.writestr(name, buffer.getvalue())
    folder = tmp_path / "t"
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(buffer.getvalue())
    in_zip = ZipSource(tmp_path / "t.zip").members
    in_folder = [p[len(str(folder)) + 1:] for p in FolderSource(folder).paths]
    assert in_zip == in_folder == ["Upper.png", "zebra.png", "a/b.JPEG", "a-b/c.jpg", "a/x/y.PNG", "sub/a.png"]


def test_bad_zip_files_are_clear_errors(tmp_path):
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(InputError, match="broken.zip"):
        open_source(tmp_path / "broken.zip")
    with zipfile.ZipFile(tmp_path / "text.zip", "w") as z:
        z.writestr("a.txt", "hi")
    with pytest.raises(InputError, match="no images found in .*text.zip"):
        open_source(tmp_path / "text.zip")


# -- array files -------------------------------------------------------------------------------------

@pytest.mark.parametrize("save", [np.savez, np.savez_compressed], ids=["stored", "compressed"])
def test_adm_npz_batch_matches_the_folder(tmp_path, images, reference, save, segmenter):
    _, expected = reference
    path = tmp_path / "samples.npz"
    save(path, images, np.arange(N))  # arr_0: images, arr_1: class labels, as ADM writes them
    source = open_source(path)
    assert isinstance(source, ArrayFileSource) and source.key == "arr_0"
    assert isinstance(source.images(), np.memmap) == (save is np.savez)
    assert_same(stats_of(path, segmenter), expected)
    assert_same(stats_of(path, segmenter, num_workers=2, batch_size=3), expected)
    assert ids_of(path, segmenter)[2] == f"{path}[2]"


def test_npy_and_channels_first_match_the_folder(tmp_path, images, reference, segmenter):
    _, expected = reference
    np.save(tmp_path / "hwc.npy", images)
    np.save(tmp_path / "chw.npy", images.transpose(0, 3, 1, 2))
    np.savez(tmp_path / "named.npz", samples=images.transpose(0, 3, 1, 2))
    for name in ("hwc.npy", "chw.npy", "named.npz"):
        assert_same(stats_of(tmp_path / name, segmenter), expected)


def test_npz_statistics_and_image_batches_are_told_apart_by_their_keys(tmp_path, images, segmenter):
    stats = stats_of(ArraySource(images), segmenter)
    stats.save(tmp_path / "stats.npz")
    np.savez(tmp_path / "batch.npz", arr_0=images)
    np.savez(tmp_path / "fid.npz", mu=np.zeros(3), sigma=np.eye(3))
    assert is_saved_stats(tmp_path / "stats.npz") and not is_saved_stats(tmp_path / "batch.npz")
    assert isinstance(open_source(tmp_path / "stats.npz"), fsd.Stats)
    assert isinstance(open_source(tmp_path / "batch.npz"), ArrayFileSource)
    with pytest.raises(InputError, match="pytorch-fid style"):
        open_source(tmp_path / "fid.npz")
    np.savez(tmp_path / "two.npz", a=images, b=images)
    with pytest.raises(InputError, match="say which"):
        open_source(tmp_path / "two.npz")
    assert len(ArrayFileSource(tmp_path / "two.npz", key="b")) == N
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="junk.npz"):
        open_source(tmp_path / "junk.npz")


def test_float_array_files_need_a_declared_range(tmp_path, images, reference, segmenter):
    _, expected = reference
    path = tmp_path / "float.npy"
    np.save(path, images.astype(np.float32) / 127.5 - 1)
    with pytest.raises(SourceFormatError, match=r"value_range=\(-1, 1\)"):
        open_source(path)
    assert_same(stats_of(ArrayFileSource(path, value_range=(-1, 1)), segmenter), expected)
    np.save(tmp_path / "tally.npy", np.zeros((10, 336)))  # the paper's per-image tallies are not images
    with pytest.raises(SourceFormatError, match="per-image values"):
        open_source(tmp_path / "tally.npy")


# -- LMDB ----------------------------------------------------------------------------------------------

def test_lmdb_database_matches_the_folder(tmp_path, images, reference, segmenter):
    lmdb = pytest.importorskip("lmdb")
    _, expected = reference
    db = tmp_path / "church_outdoor_train_lmdb"
    env = lmdb.open(str(db), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i, image in reversed(list(enumerate(images))):  # written out of order; read in key order
            txn.put(f"{i:040x}".encode(), png_bytes(image))
    env.close()
    source = open_source(db)
    assert isinstance(source, LmdbSource)
    assert source.identity(3) == f"lmdb:{db}!{3:040x}"
    assert_same(stats_of(db, segmenter), expected)
    assert_same(stats_of(db, segmenter, num_workers=2, batch_size=3), expected)
    assert_same(stats_of(db / "data.mdb", segmenter), expected)


def test_lmdb_without_the_package_says_how_to_install_it(tmp_path, monkeypatch):
    db = tmp_path / "db"
    db.mkdir()
    (db / "data.mdb").write_bytes(b"\x00" * 64)
    monkeypatch.setitem(sys.modules, "lmdb", None)  # makes `import lmdb` fail
    with pytest.raises(ImportError, match=r"pip install lmdb.*pytorch-fsd\[lmdb\]"):
        open_source(db)


def test_broken_lmdb_is_a_clear_error(tmp_path):
    pytest.importorskip("lmdb")
    db = tmp_path / "db"
    db.mkdir()
    (db / "data.mdb").write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match="cannot read LMDB database .*db"):
        open_source(db)


# -- in memory -----------------------------------------------------------------------------------------

def test_arrays_and_tensors_match_the_folder(images, reference, segmenter):
    _, expected = reference
    as_float = images.astype(np.float64) / 127.5 - 1  # the rounding rule brings back the same bytes
    for source in (
        images,
        torch.from_numpy(images).permute(0, 3, 1, 2),
        ArraySource(as_float, value_range=(-1, 1)),
        ArraySource(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, value_range=(0, 1)),
        ArraySource(images.astype(np.uint16) * 257, value_range=(0, 65535)),
    ):
        assert_same(stats_of(source, segmenter), expected)
    assert ids_of(images, segmenter)[5] == "array[5]"


def test_bare_float_input_says_how_to_declare_its_range(images):
    for data in (images.astype(np.float32) / 255, torch.zeros(2, 3, 8, 8)):
        with pytest.raises(SourceFormatError, match=r"ArraySource\(x, value_range=\(-1, 1\)\)"):
            open_source(data)
    with pytest.raises(InputError, match="span"):
        ArraySource(images.astype(np.float32), value_range=(0, 1))  # 0..255 declared as 0..1
    with pytest.raises(InputError, match="NaN"):
        ArraySource(np.full((2, 8, 8, 3), np.nan), value_range=(0, 1))
    with pytest.raises(SourceFormatError, match="does not apply"):
        ArraySource(images, value_range=(-1, 1))
    with pytest.raises(SourceFormatError, match="low < high"):
        ArraySource(images.astype(np.float32), value_range=(1, 0))
    assert len(ArraySource(np.full((2, 8, 8, 3), 0.75), value_range=(0.5, 1))) == 2


def test_array_shapes_are_checked_and_ambiguity_resolved_by_layout():
    with pytest.raises(SourceFormatError, match="add a batch axis"):
        ArraySource(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(SourceFormatError, match="layout="):
        ArraySource(np.zeros((2, 3, 5, 3), np.uint8))
    assert ArraySource(np.zeros((2, 3, 5, 3), np.uint8), layout="NHWC").open(0).size == (5, 3)
    assert ArraySource(np.zeros((2, 3, 5, 3), np.uint8), layout="NCHW").open(0).size == (3, 5)
    with pytest.raises(SourceFormatError, match="C = 1 or 3"):
        ArraySource(np.zeros((2, 8, 8, 5), np.uint8))
    with pytest.raises(SourceFormatError, match="no images"):
        ArraySource(np.zeros((0, 8, 8, 3), np.uint8))
    gray = ArraySource(np.full((2, 8, 8, 1), 90, np.uint8))
    assert gray.open(1).mode == "L"


def test_pil_images_paths_and_single_files(reference, images, segmenter):
    folder, expected = reference
    pil = [Image.fromarray(image) for image in images]
    paths = sorted(folder.iterdir())
    assert_same(stats_of(pil, segmenter), expected)
    assert_same(stats_of([Image.open(p) for p in paths], segmenter, num_workers=2), expected)
    assert_same(stats_of([str(p) for p in paths], segmenter), expected)
    assert ids_of(paths, segmenter)[1] == str(paths[1])
    assert len(open_source(pil[0])) == 1 and len(open_source(paths[0])) == 1
    assert list(ids_of([Image.open(p) for p in paths], segmenter)) == [str(p) for p in paths]  # named by file
    assert ids_of(Image.open(paths[2]), segmenter)[0] == str(paths[2])
    assert ids_of(pil, segmenter)[1] == "images[1]"  # made in memory: no file to name


class PairDataset(torch.utils.data.Dataset):
    """torchvision-style: (float CHW tensor in [0, 1], target)."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.images[i]).permute(2, 0, 1).float() / 255, i % 3


class DictDataset(torch.utils.data.Dataset):
    """Hugging Face-style: {"image": PIL image, "label": int}."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return {"image": Image.fromarray(self.images[i]), "label": 0}


def test_datasets_match_the_folder(images, reference, segmenter):
    _, expected = reference
    assert_same(stats_of(SequenceSource(PairDataset(images), value_range=(0, 1)), segmenter, num_workers=2), expected)
    assert_same(stats_of(DictDataset(images), segmenter), expected)
    uint8_chw = torch.utils.data.TensorDataset(torch.from_numpy(images).permute(0, 3, 1, 2))
    assert_same(stats_of(uint8_chw, segmenter), expected)
    assert ids_of(DictDataset(images), segmenter)[4] == "dataset[4]"


def test_float_dataset_without_a_range_is_refused_even_when_skipping(images, segmenter):
    with pytest.raises(SourceFormatError, match=r"SequenceSource\(dataset, value_range="):
        stats_of(PairDataset(images), segmenter, skip_bad_images=True, num_workers=2)


def test_iterables_are_read_once(images, reference, segmenter):
    _, expected = reference
    assert_same(stats_of((Image.fromarray(image) for image in images), segmenter), expected)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(images), torch.arange(N)), batch_size=3)
    assert_same(stats_of(loader, segmenter), expected)  # batches of (images, labels), NHWC
    source = open_source(loader)
    assert source.description == f"DataLoader ({N} images read into memory)"
    assert source.identity(5) == "DataLoader[5]"
    assert open_source(x for x in images).description == f"generator ({N} images read into memory)"


def test_unusable_objects_are_clear_errors(tmp_path, images):
    with pytest.raises(InputError, match="dict"):
        open_source({"a": images})
    with pytest.raises(InputError, match="int"):
        open_source(3)
    with pytest.raises(InputError, match="holds no images"):
        open_source([])
    np.savez(tmp_path / "b.npz", arr_0=images)
    with np.load(tmp_path / "b.npz") as data, pytest.raises(InputError, match="pass its path"):
        open_source(data)
    with pytest.raises(SourceFormatError, match=r"images\[1\] is of type int"):
        SequenceSource([Image.fromarray(images[0]), 5], name="images").open(1)


# -- the command line accepts every on-disk kind ----------------------------------------------------------

def test_cli_reads_zip_npz_and_npy_like_folders(tmp_path):
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=(6, 24, 24), dtype=np.uint8).repeat(4, axis=1).repeat(4, axis=2)
    folder = tmp_path / "folder"
    folder.mkdir()
    with zipfile.ZipFile(tmp_path / "labels.zip", "w") as z:
        for i, label in enumerate(labels):
            Image.fromarray(label).save(folder / f"{i}.png")
            z.writestr(f"{i}.png", png_bytes(label))
    fake = tmp_path / "fake"
    fake.mkdir()
    for i, label in enumerate(labels):
        Image.fromarray((label + i) % 4).save(fake / f"{i}.png")
    np.savez(tmp_path / "labels.npz", labels[..., None])
    np.save(tmp_path / "labels.npy", labels[:, None])
    options = ["--segmenter", "labelmap", "--num-classes", "4", "--num-workers", "0", "-q", "--json"]
    scores = []
    for real in ("folder", "labels.zip", "labels.npz", "labels.npy"):
        result = CliRunner().invoke(cli, [str(tmp_path / real), str(fake), *options])
        assert result.exit_code == 0, result.output
        payload = json.loads(result.output)
        scores.append((payload["fsd"], payload["mean_term"], payload["covariance_term"], payload["real"]["n"]))
    assert scores[0][0] > 0 and len(set(scores)) == 1
    result = CliRunner().invoke(cli, ["--save-stats", str(tmp_path / "labels.npz"), str(tmp_path / "s.npz"),
                                      *options])
    assert result.exit_code == 0, result.output
    assert is_saved_stats(tmp_path / "s.npz")

"""WebDataset tar shards: brace lists, samples grouped by key, random access from each worker, and
statistics equal to the extracted folder; broken shards name the shard and the member."""

import gzip
import io
import json
import os
import tarfile

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import fsd
from fsd.cli import cli
from fsd.errors import ImageReadError, InputError
from fsd.segmenters.base import Preprocessing
from fsd.sources import TarSource, expand_braces, iterate_batches, open_source
from tests.conftest import ColorSegmenter, assert_same_sums, random_photo, stats_of

SMALL = Preprocessing("rgb", 32, "bilinear")
PER_SHARD, SHARDS = 5, 3


def encoded(image: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Three shards of five samples each: an image (.jpg or .png, some in a subfolder) with a .json and
    a .cls beside it, the way WebDataset writers lay them out."""
    root = tmp_path_factory.mktemp("tar")
    rng = np.random.default_rng(3)
    (root / "shards").mkdir()
    for s in range(SHARDS):
        with tarfile.open(root / "shards" / f"train-{s:03d}.tar", "w") as archive:
            for k in range(PER_SHARD):
                key = f"{'sub/' if k % 2 else ''}{s:03d}{k:04d}"
                image = np.asarray(random_photo(rng, 40 + 3 * k, 30 + s))
                ext = "png" if k % 3 else "jpg"
                add(archive, f"{key}.json", json.dumps({"k": k}).encode())
                add(archive, f"{key}.{ext}", encoded(image, "PNG" if ext == "png" else "JPEG"))
                add(archive, f"{key}.cls", str(k).encode())
    return root


def pattern(root) -> str:
    return str(root / "shards" / "train-{000..002}.tar")


@pytest.fixture(scope="module")
def segmenter():
    return ColorSegmenter(size=32)


def test_braces_expand_the_webdataset_way():
    assert expand_braces("train-{000000..000002}.tar") == ["train-000000.tar", "train-000001.tar",
                                                           "train-000002.tar"]
    assert expand_braces("{9..11}.tar") == ["9.tar", "10.tar", "11.tar"]
    assert expand_braces("{a,b}-{0..1}.tar") == ["a-0.tar", "a-1.tar", "b-0.tar", "b-1.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    for bad in ["x-{3..1}.tar", "x-{1..2.tar", "x-{abc}.tar"]:
        with pytest.raises(InputError, match="x-"):
            expand_braces(bad)


def test_shards_equal_the_extracted_folder_bit_for_bit(shards, tmp_path, segmenter):
    folder = tmp_path / "extracted"
    for s in range(SHARDS):
        with tarfile.open(shards / "shards" / f"train-{s:03d}.tar") as archive:
            archive.extractall(folder, filter="data")
    expected = stats_of(folder, segmenter)
    assert expected.n == SHARDS * PER_SHARD
    source = open_source(pattern(shards))
    assert isinstance(source, TarSource) and len(source.shards) == SHARDS and len(source) == SHARDS * PER_SHARD
    assert_same_sums(stats_of(pattern(shards), segmenter), expected)
    assert_same_sums(stats_of(pattern(shards), segmenter, num_workers=2, batch_size=4), expected)
    listed = [str(shards / "shards" / f"train-{s:03d}.tar") for s in range(SHARDS)]
    assert_same_sums(stats_of(listed, segmenter), expected)  # a list of shards is the same source
    subset = stats_of(pattern(shards), segmenter, num_samples=7, seed=2, num_workers=2, batch_size=3)
    assert_same_sums(subset, stats_of(pattern(shards), segmenter, num_samples=7, seed=2))


def test_identities_are_shard_and_key_in_shard_order(shards, segmenter):
    source = TarSource(pattern(shards))
    first = str(shards / "shards" / "train-000.tar")
    assert source.identity(0) == f"{first}/0000000" and source.identity(1) == f"{first}/sub/0000001"
    assert source.identity(PER_SHARD) == str(shards / "shards" / "train-001.tar") + "/0010000"
    ids = fsd.class_percentages_of(pattern(shards), segmenter=segmenter, num_workers=0, progress=False).ids
    assert list(ids) == [source.identity(i) for i in range(len(source))]
    assert source.description == f"{pattern(shards)} (3 shards)"


def test_each_process_opens_its_own_handles(shards, monkeypatch):
    source = TarSource(pattern(shards))
    source.open(0)
    mine = source._get()
    assert len(mine) == 1
    monkeypatch.setattr(os, "getpid", lambda: -7)  # as in a forked worker
    assert source._get() is not mine and source._get() == {}
    import pickle

    assert pickle.loads(pickle.dumps(source))._handle is None  # spawned workers open their own too


def test_missing_shards_and_compressed_shards_are_named(shards, tmp_path):
    with pytest.raises(InputError, match=r"2 shards of 5 do not exist: .*train-003.tar, .*train-004.tar"):
        TarSource(str(shards / "shards" / "train-{000..004}.tar"))
    packed = tmp_path / "packed.tar"
    packed.write_bytes(gzip.compress((shards / "shards" / "train-000.tar").read_bytes()))
    with pytest.raises(InputError, match="packed.tar is a compressed tar file.*decompress"):
        open_source(packed)


def read_all(source, skip=False, num_workers=0):
    skipped = []
    ids = [i for b in iterate_batches(source, range(len(source)), SMALL, batch_size=4, num_workers=num_workers,
                                      skip_bad_images=skip, skipped=skipped) for i in b.ids]
    return ids, skipped


def shard_with(tmp_path, members, name="one.tar"):
    path = tmp_path / name
    with tarfile.open(path, "w") as archive:
        for member, data in members:
            add(archive, member, data)
    return path


def test_a_corrupt_member_names_shard_key_and_member(tmp_path):
    good = encoded(np.asarray(random_photo(np.random.default_rng(1), 40, 30)), "PNG")
    bad = bytearray(good)
    bad[60:90] = b"\0" * 30
    path = shard_with(tmp_path, [("a.png", good), ("b.png", bytes(bad)), ("c.png", good)])
    source = TarSource(path)
    with pytest.raises(ImageReadError) as info:
        read_all(source, num_workers=2)
    assert info.value.path == f"{path}/b" and "member b.png:" in str(info.value)
    ids, skipped = read_all(source, skip=True, num_workers=2)
    assert ids == [f"{path}/a", f"{path}/c"] and [p for p, _ in skipped] == [f"{path}/b"]


def test_a_shard_cut_short_names_the_member_or_the_shard(tmp_path):
    data = encoded(np.asarray(random_photo(np.random.default_rng(2), 40, 30)), "PNG")
    whole = shard_with(tmp_path, [("a.png", data), ("b.png", data)]).read_bytes()
    start_of_b = 512 + ((len(data) + 511) // 512) * 512  # a header block, then the data in whole blocks
    in_data = tmp_path / "in-data.tar"
    in_data.write_bytes(whole[:start_of_b + 512 + 200])  # inside b.png's data
    ids, skipped = read_all(TarSource(in_data), skip=True)
    assert ids == [f"{in_data}/a"]
    assert skipped[0][0] == f"{in_data}/b" and "member b.png: truncated (the shard ends 200 bytes into its" in \
        skipped[0][1]
    in_header = tmp_path / "in-header.tar"
    in_header.write_bytes(whole[:start_of_b + 100])  # inside b.png's header
    with pytest.raises(InputError, match=r"in-header.tar is corrupt or cut short at byte .*after member a.png"):
        TarSource(in_header)


def test_a_corrupt_header_in_the_middle_is_not_taken_for_the_end(tmp_path):
    data = encoded(np.asarray(random_photo(np.random.default_rng(2), 40, 30)), "PNG")
    raw = bytearray(shard_with(tmp_path, [("a.png", data), ("b.png", data), ("c.png", data)]).read_bytes())
    start_of_b = 512 + ((len(data) + 511) // 512) * 512
    raw[start_of_b + 148:start_of_b + 156] = b"garbage!"  # b.png's header checksum
    broken = tmp_path / "broken.tar"
    broken.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"broken.tar is corrupt .*after member a.png.*re-download"):
        TarSource(broken)


def test_the_image_member_is_chosen_by_extension_and_the_rest_is_counted(tmp_path):
    png = encoded(np.zeros((8, 8, 3), np.uint8), "PNG")
    path = shard_with(tmp_path, [("x.json", b"{}"), ("x.jpg", png), ("x.png", png),  # jpg comes first
                                 ("y.webp", png), ("z.json", b"{}"), ("noext", b"x")])
    with pytest.warns(UserWarning, match=r"left out 1 image file .*\(1 \.webp\).*extensions=.*; 1 sample had "
                                         r"no image member"):
        source = TarSource(path)
    assert [m.name for m in source.members] == ["x.jpg"]
    with pytest.warns(UserWarning, match="1 sample had no image member"):
        assert [m.name for m in TarSource(path, extensions="png,webp").members] == ["x.png", "y.webp"]


def test_the_command_line_takes_a_brace_pattern(shards, tmp_path, monkeypatch, segmenter):
    monkeypatch.setattr("fsd.cli._make_segmenter", lambda *args, **kwargs: segmenter)
    out = tmp_path / "s.npz"
    result = CliRunner().invoke(cli, ["--save-stats", pattern(shards), str(out), "--num-workers", "2", "-q"])
    assert result.exit_code == 0, result.output
    assert_same_sums(fsd.Stats.load(out), stats_of(pattern(shards), segmenter))
    assert fsd.Stats.load(out).meta.source == f"{pattern(shards)} (3 shards)"
    refused = CliRunner().invoke(cli, ["--save-stats", pattern(shards), str(tmp_path / "t.npz"), "--follow-links"])
    assert refused.exit_code == 2 and "--follow-links does not apply to the tar shards" in refused.stderr


@pytest.mark.parametrize("subset", [None, 8], ids=["whole", "subset of 8"])
def test_shards_of_tar_shards_merged_equal_one_run(shards, segmenter, subset):
    """An array job over a brace list of tar shards: K shards of the run, merged, equal one run exactly,
    sums and per-image rows, with and without the paper's subset."""
    options = dict(num_samples=subset, seed=5) if subset else {}
    one = stats_of(pattern(shards), segmenter, **options)
    parts = [stats_of(pattern(shards), segmenter, shard=(i, 4), num_workers=2 if i == 1 else 0, batch_size=3,
                      **options) for i in range(4)]
    assert sum(part.n for part in parts) == one.n == (subset or SHARDS * PER_SHARD)
    merged = fsd.merge_stats(parts)
    assert_same_sums(merged, one)
    assert merged.rows.ids == one.rows.ids and np.array_equal(merged.rows.dense(), one.rows.dense())
    with pytest.raises(InputError, match=r"1 shard of .*train-\{000\.\.002\}\.tar.* missing \(3/4\)"):
        fsd.merge_stats(parts[:3])

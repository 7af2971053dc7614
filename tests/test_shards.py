"""Shards of a source (`--shard I/K`, ``shard=(i, k)``) and their exact merge (`fsd merge`, `fsd.merge_stats`)."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import fsd
from fsd.cli import cli
from fsd.errors import IncompatibleStatsError, InputError
from fsd.segmenters.upp import UPPSegmenter
from fsd.stats import Stats
from tests.conftest import ColorSegmenter, write_folder
from tests.synthetic import write_upp_weights

CLASSES = 6
LABELMAP = ["--segmenter", "labelmap", "--num-classes", str(CLASSES), "--num-workers", "0", "-q"]


def seg() -> fsd.LabelMapSegmenter:
    return fsd.LabelMapSegmenter(CLASSES)


@pytest.fixture
def label_folder(tmp_path):
    folder = tmp_path / "labels"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for k in range(23):
        size = (24, 24) if k % 3 else (30, 20)
        Image.fromarray(rng.integers(0, CLASSES, size, dtype=np.uint8)).save(folder / f"{k:03d}.png")
    return folder


def npz_arrays(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def assert_same_file(a, b):
    left, right = npz_arrays(a), npz_arrays(b)
    assert sorted(left) == sorted(right)
    for key in left:
        assert left[key].dtype == right[key].dtype and np.array_equal(left[key], right[key]), key


def shards_of(source, k, **kwargs) -> list[Stats]:
    return [fsd.compute_stats(source, segmenter=seg(), num_workers=0, progress=False, shard=(i, k), **kwargs)
            for i in range(k)]


@pytest.mark.parametrize("subset", [None, 17])
def test_shards_merged_equal_one_run_bit_for_bit_on_a_folder(label_folder, tmp_path, subset):
    kwargs = dict(num_samples=subset, seed=5) if subset else {}
    single = fsd.compute_stats(label_folder, segmenter=seg(), num_workers=0, progress=False, **kwargs)
    single.save(tmp_path / "single.npz")
    parts = shards_of(label_folder, 3, **kwargs)
    assert [p.n for p in parts] == [len(range(i, subset or 23, 3)) for i in range(3)]
    assert {p.shard.fingerprint for p in parts} == {parts[0].shard.fingerprint} and parts[2].shard.label == "shard 2/3"
    paths = []
    for k, part in enumerate(reversed(parts)):  # the order given does not matter
        paths.append(tmp_path / f"part{k}.npz")
        part.save(paths[-1])
    merged = fsd.merge_stats(paths)
    assert merged.shard is None
    merged.save(tmp_path / "merged.npz")
    assert_same_file(tmp_path / "single.npz", tmp_path / "merged.npz")


def test_shards_of_a_zip_and_of_a_generator(label_folder, tmp_path):
    archive = tmp_path / "labels.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(label_folder.iterdir()):
            z.write(path, path.name)
    single = fsd.compute_stats(archive, segmenter=seg(), num_workers=0, progress=False)
    merged = fsd.merge_stats(shards_of(archive, 4))
    assert np.array_equal(merged.count_outer_sum, single.count_outer_sum) and merged.rows.ids == single.rows.ids

    class G(torch.nn.Module):
        z_dim = 8

        def forward(self, z):
            return torch.tanh(z[:, :3, None, None].expand(-1, 3, 16, 16) * 3)


    one = fsd.compute_stats(generator=G(), num_samples=11, seed=4, segmenter=ColorSegmenter(), progress=False)
    parts = [fsd.compute_stats(generator=G(), num_samples=11, seed=4, segmenter=ColorSegmenter(), progress=False,
                               shard=(i, 3), batch_size=2) for i in range(3)]
    merged = fsd.merge_stats(parts)
    assert merged.n == 11 and np.array_equal(merged.count_outer_sum, one.count_outer_sum)
    assert np.array_equal(merged.rows.index, one.rows.index) and merged.meta.source == one.meta.source


def test_the_cli_array_job_and_merge_equal_a_single_run(label_folder, tmp_path):
    runner = CliRunner()
    single = tmp_path / "single.npz"
    assert runner.invoke(cli, ["--save-stats", str(label_folder), str(single), *LABELMAP]).exit_code == 0
    parts = []
    for i in range(4):  # what a SLURM array of 4 tasks runs
        out = tmp_path / f"shard-{i}.npz"
        result = runner.invoke(cli, ["--save-stats", str(label_folder), str(out), "--shard", f"{i}/4", *LABELMAP])
        assert result.exit_code == 0, result.output
        assert f"(shard {i}/4)" in result.stderr
        parts.append(str(out))
    merged = tmp_path / "all.npz"
    result = runner.invoke(cli, ["merge", *parts, "-o", str(merged)])
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and "merged 4 files (23 images" in result.stderr
    assert_same_file(single, merged)
    again = runner.invoke(cli, ["merge", *parts, "-o", str(merged)])
    assert again.exit_code == 2 and "exists; pass --overwrite" in again.stderr


def test_merge_refuses_what_is_not_one_complete_run(label_folder, tmp_path):
    parts = shards_of(label_folder, 3)
    with pytest.raises(InputError, match=r"1 shard of .* missing \(1/3\).*--shard I/3"):
        fsd.merge_stats([parts[0], parts[2]])
    with pytest.raises(InputError, match="are both shard 0/3: give each shard once"):
        fsd.merge_stats([parts[0], parts[0], parts[1], parts[2]])
    other_subset = fsd.compute_stats(label_folder, segmenter=seg(), num_workers=0, progress=False, shard=(1, 3),
                                     num_samples=20, seed=1)
    with pytest.raises(InputError, match="different sources"):  # another subset: other images chosen
        fsd.merge_stats([parts[0], other_subset, parts[2]])
    (tmp_path / "few").mkdir()
    for path in sorted(label_folder.iterdir())[:9]:
        (tmp_path / "few" / path.name).write_bytes(path.read_bytes())
    other_source = fsd.compute_stats(tmp_path / "few", segmenter=seg(), num_workers=0, progress=False, shard=(1, 3))
    with pytest.raises(InputError, match="different sources.*--different-sources"):
        fsd.merge_stats([parts[0], other_source, parts[2]])
    four = shards_of(label_folder, 4)
    with pytest.raises(InputError, match="different shard counts"):
        fsd.merge_stats([parts[0], parts[1], four[2]])
    whole = fsd.compute_stats(label_folder, segmenter=seg(), num_workers=0, progress=False)
    with pytest.raises(InputError, match="is not a shard"):
        fsd.merge_stats([whole, whole])
    wider = fsd.compute_stats(label_folder, segmenter=fsd.LabelMapSegmenter(CLASSES + 1), num_workers=0,
                              progress=False, shard=(1, 3))
    with pytest.raises(IncompatibleStatsError, match="cannot merge statistics #1 with statistics #0"):
        fsd.merge_stats([parts[0], wider, parts[2]])
    with pytest.raises(InputError, match="at least 2"):
        fsd.merge_stats([parts[0]])


def test_the_cli_names_the_file_at_fault(label_folder, tmp_path):
    runner = CliRunner()
    paths = []
    for i in (0, 0, 1):
        out = tmp_path / f"s{len(paths)}.npz"
        assert runner.invoke(cli, ["--save-stats", str(label_folder), str(out), "--shard", f"{i}/2",
                                   *LABELMAP]).exit_code == 0
        paths.append(str(out))
    result = runner.invoke(cli, ["merge", *paths, "-o", str(tmp_path / "all.npz")])
    assert result.exit_code == 2 and f"{paths[1]} and {paths[0]} are both shard 0/2" in result.stderr
    for bad in ("2/2", "1/0", "a/b", "3"):
        result = runner.invoke(cli, ["--save-stats", str(label_folder), str(tmp_path / "x.npz"), "--shard", bad,
                                     *LABELMAP])
        assert result.exit_code == 2 and "shard" in result.stderr, bad
    result = runner.invoke(cli, [str(label_folder), str(label_folder), "--shard", "0/2", *LABELMAP])
    assert result.exit_code == 2 and "--shard applies to --save-stats" in result.output


def test_growing_a_reference_set_from_different_sources_is_explicit(label_folder, tmp_path):
    (tmp_path / "more").mkdir()
    rng = np.random.default_rng(9)
    for k in range(5):
        Image.fromarray(rng.integers(0, CLASSES, (24, 24), dtype=np.uint8)).save(tmp_path / "more" / f"m{k}.png")
    a = fsd.compute_stats(label_folder, segmenter=seg(), num_workers=0, progress=False)
    b = fsd.compute_stats(tmp_path / "more", segmenter=seg(), num_workers=0, progress=False)
    grown = fsd.merge_stats([a, b], different_sources=True)
    assert grown.n == 28 and np.array_equal(grown.count_sum, a.count_sum + b.count_sum)
    assert list(grown.rows.index) == list(range(28)) and grown.rows.ids == a.rows.ids + b.rows.ids
    assert " + " in grown.meta.source
    grown.save(tmp_path / "grown.npz")
    assert Stats.load(tmp_path / "grown.npz").n == 28  # its rows reproduce its sums


def test_three_upp_shards_merged_equal_one_run(tmp_path):
    """The paper's architecture (synthetic weights): 3 shards of 5 images merged equal one run, integer for integer."""
    write_upp_weights(tmp_path / "weights")
    write_folder(tmp_path / "photos", 5, seed=2, sizes=((96, 80), (64, 64)))
    upp = UPPSegmenter.from_folder(tmp_path / "weights" / "upp-resnet50-upernet", device="cpu")
    upp.preprocessing = fsd.Preprocessing("rgb", 64, "bilinear")  # small images keep the test fast
    one = fsd.compute_stats(tmp_path / "photos", segmenter=upp, num_workers=0, progress=False, batch_size=5)
    parts = [fsd.compute_stats(tmp_path / "photos", segmenter=upp, num_workers=0, progress=False, batch_size=2,
                               shard=(i, 3)) for i in range(3)]
    merged = fsd.merge_stats(parts)
    assert np.array_equal(merged.count_sum, one.count_sum)
    assert np.array_equal(merged.count_outer_sum, one.count_outer_sum)
    assert merged.rows.ids == one.rows.ids

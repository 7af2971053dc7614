import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fsd
from fsd.errors import ImageReadError, IncompatibleStatsError, InputError
from fsd.segmenters.labelmap import LabelMapSegmenter
from tests.conftest import stats_of, write_label_folder


def test_compute_gives_score_terms_and_stats(image_folders, color_segmenter):
    real, fake = image_folders
    result = fsd.compute(real, fake, segmenter=color_segmenter, num_workers=0, progress=False)
    assert result.real.n == 12 and result.fake.n == 10
    assert result.fsd == pytest.approx(result.mean_term + result.covariance_term)
    expected = fsd.frechet_distance(result.real.mu, result.real.sigma, result.fake.mu, result.fake.sigma)
    assert result.fsd == expected.value
    assert result.real.meta.source == str(real) and result.real.meta.segmenter == "color-demo"


def test_per_image_percentages_sum_to_100_and_match_stats(image_folders, color_segmenter):
    real, _ = image_folders
    per_image = fsd.class_percentages_of(real, segmenter=color_segmenter, num_workers=0, progress=False)
    assert per_image.percentages.shape == (12, 4) and per_image.percentages.dtype == np.float64
    np.testing.assert_allclose(per_image.percentages.sum(axis=1), 100.0)
    stats = fsd.compute_stats(real, segmenter=color_segmenter, num_workers=0, progress=False)
    np.testing.assert_allclose(stats.mu, per_image.percentages.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(stats.sigma, np.cov(per_image.percentages, rowvar=False), rtol=1e-10, atol=1e-10)
    assert per_image.ids[0].endswith("img_000.jpg")


def test_independent_of_batch_size_workers_and_order(tmp_path, image_folders, color_segmenter):
    real, _ = image_folders
    base = fsd.compute_stats(real, segmenter=color_segmenter, batch_size=5, num_workers=0, progress=False)
    other = fsd.compute_stats(real, segmenter=color_segmenter, batch_size=1, num_workers=2, progress=False)
    # The same images under shuffled names, in nested folders: a different reading order.
    shuffled = tmp_path / "shuffled"
    for k, path in enumerate(sorted(real.iterdir(), reverse=True)):
        target = shuffled / f"d{k % 3}" / f"{k:02d}{path.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    reordered = fsd.compute_stats(shuffled, segmenter=color_segmenter, batch_size=7, num_workers=1, progress=False)
    for s in (other, reordered):
        assert np.array_equal(s.mu, base.mu) and np.array_equal(s.sigma, base.sigma)


_START_METHOD_RUN = """
import multiprocessing
import sys

import fsd
from fsd.segmenters.labelmap import LabelMapSegmenter

if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    for source in sys.argv[2:]:
        s = fsd.compute_stats(source, segmenter=LabelMapSegmenter(4), num_workers=2, batch_size=2, progress=False)
        print(multiprocessing.get_start_method(), s.n, s.count_sum.tolist(), s.count_outer_sum.tolist())
"""


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_loader_workers_started_by_spawn_or_forkserver_read_the_same_images(tmp_path, method):
    """macOS starts processes by spawn, Python 3.14 on Linux by forkserver: the workers then get the
    sources pickled instead of forked, folders and tar shards alike."""
    folder = write_label_folder(tmp_path / "labels", 7, 4, seed=5)
    shard = tmp_path / "labels.tar"
    with tarfile.open(shard, "w") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, f"s{path.stem}.png")
    script = tmp_path / "run.py"
    script.write_text(_START_METHOD_RUN)
    repo = str(Path(__file__).resolve().parents[1])
    result = subprocess.run([sys.executable, str(script), method, str(folder), str(shard)], capture_output=True,
                            text=True, timeout=180, cwd=tmp_path, env={**os.environ, "PYTHONPATH": repo})
    assert result.returncode == 0, result.stderr
    expected = [stats_of(source, LabelMapSegmenter(4)) for source in (folder, shard)]
    assert result.stdout.splitlines() == [f"{method} {e.n} {e.count_sum.tolist()} {e.count_outer_sum.tolist()}"
                                          for e in expected]


def test_subset_uses_the_papers_rule(image_folders, color_segmenter):
    real, _ = image_folders
    per_image = fsd.class_percentages_of(real, segmenter=color_segmenter, num_samples=5, seed=3,
                                         num_workers=0, progress=False)
    chosen = fsd.sources.select_indices(12, 5, seed=3)
    assert [p.rsplit("_", 1)[1][:3] for p in per_image.ids] == [f"{i:03d}" for i in chosen]
    with pytest.raises(InputError, match="only 12"):
        fsd.compute_stats(real, segmenter=color_segmenter, num_samples=13, progress=False)


def test_saved_stats_are_a_source(tmp_path, image_folders, color_segmenter):
    real, fake = image_folders
    stats = fsd.compute_stats(real, segmenter=color_segmenter, num_workers=0, progress=False)
    stats.save(tmp_path / "real.npz")
    direct = fsd.compute(real, fake, segmenter=color_segmenter, num_workers=0, progress=False)
    from_file = fsd.compute(tmp_path / "real.npz", fake, segmenter=color_segmenter, num_workers=0, progress=False)
    assert from_file.fsd == direct.fsd


def test_stats_from_a_different_segmenter_are_refused(tmp_path, image_folders, color_segmenter):
    real, fake = image_folders
    fsd.compute_stats(real, segmenter=color_segmenter, num_workers=0, progress=False).save(tmp_path / "r.npz")
    other = LabelMapSegmenter(4, class_names=color_segmenter.class_names)
    labels = tmp_path / "labels"
    labels.mkdir()
    for i in range(3):
        Image.fromarray(np.full((64, 64), i, np.uint8)).save(labels / f"{i}.png")
    with pytest.raises(IncompatibleStatsError, match="segmenter"):
        fsd.compute(tmp_path / "r.npz", labels, segmenter=other, progress=False)


def test_bad_image_is_named_or_skipped_with_a_report(tmp_path, image_folders, color_segmenter):
    real, fake = image_folders
    (fake / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ImageReadError, match="broken.png"):
        fsd.compute_stats(fake, segmenter=color_segmenter, num_workers=0, progress=False)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        stats = fsd.compute_stats(fake, segmenter=color_segmenter, num_workers=0, progress=False,
                                  skip_bad_images=True)
    assert stats.n == 10 and stats.skipped[0][0].endswith("broken.png")


def test_few_images_warn_that_the_estimate_is_noisy(image_folders, color_segmenter):
    real, fake = image_folders
    with pytest.warns(UserWarning, match="noisy"):
        fsd.compute(real, fake, segmenter=color_segmenter, num_samples=3, num_workers=0, progress=False)


def test_labelmap_segmenter_hand_computed_fsd(tmp_path):
    real, fake = tmp_path / "real", tmp_path / "fake"
    real.mkdir(), fake.mkdir()
    # real: one image all class 0, one all class 1 -> rows [100, 0], [0, 100]
    Image.fromarray(np.zeros((300, 256), np.uint8)).save(real / "a.png")
    Image.fromarray(np.ones((256, 256), np.uint8)).save(real / "b.png")
    # fake: two images all class 0 -> mu_f = [100, 0], sigma_f = 0
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((256, 256), np.uint8)).save(fake / name)
    # mu_r = [50, 50], sigma_r = [[5000, -5000], [-5000, 5000]]
    # mean term 50^2 + 50^2 = 5000; covariance term tr(sigma_r) = 10000
    result = fsd.compute(real, fake, segmenter=LabelMapSegmenter(2), num_workers=0, progress=False)
    assert result.mean_term == pytest.approx(5000.0, rel=1e-12)
    assert result.covariance_term == pytest.approx(10000.0, rel=1e-12)
    assert result.fsd == pytest.approx(15000.0, rel=1e-12)


def test_labelmap_ids_out_of_range_name_the_file(tmp_path):
    folder = tmp_path / "labels"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "ok.png")
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(folder / "too_high.png")
    with pytest.raises(InputError, match="too_high.png.*num-classes"):
        fsd.compute_stats(folder, segmenter=LabelMapSegmenter(3), num_workers=0, progress=False)


def test_labelmap_refuses_rgb_images_and_keeps_16_bit_ids(tmp_path):
    folder = tmp_path / "labels"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "rgb.png")
    with pytest.raises(ImageReadError, match="single-channel"):
        fsd.compute_stats(folder, segmenter=LabelMapSegmenter(3), num_workers=0, progress=False)
    (folder / "rgb.png").unlink()
    ids = np.full((16, 16), 300, np.uint16)
    ids[:8] = 2
    Image.fromarray(ids).save(folder / "wide.png")
    per_image = fsd.class_percentages_of(folder, segmenter=LabelMapSegmenter(336), num_workers=0, progress=False)
    assert per_image.percentages[0, 300] == 50.0 and per_image.percentages[0, 2] == 50.0


def test_unknown_source_kinds_are_clear_errors(tmp_path, color_segmenter):
    with pytest.raises(InputError, match="no such file or folder"):
        fsd.compute_stats(tmp_path / "nope", segmenter=color_segmenter)
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(InputError, match="x.txt"):
        fsd.compute_stats(tmp_path / "x.txt", segmenter=color_segmenter)


def test_a_segmenter_missing_part_of_the_protocol_is_named(image_folders):
    class NoDevice:
        class_names, num_classes, name, weights_id = ["-", "a"], 2, "x", "none"
        preprocessing = fsd.Preprocessing()

        def segment(self, images):
            return images[:, 0].long() * 0

    with pytest.raises(InputError, match="lacks device"):
        fsd.compute_stats(image_folders[0], segmenter=NoDevice(), progress=False)

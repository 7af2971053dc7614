import numpy as np
import pytest

from fsd.errors import IncompatibleStatsError, InputError
from fsd.stats import Stats, StatsMeta

META = StatsMeta(("-", "wall", "sky", "tree"), "demo", "w1", "rgb:256", "0.1.0", "somewhere")
P = 64


def random_counts(rng, n, c=4, p=P):
    cuts = np.sort(rng.integers(0, p + 1, size=(n, c - 1)), axis=1)
    edges = np.concatenate([np.zeros((n, 1), int), cuts, np.full((n, 1), p)], axis=1)
    return np.diff(edges, axis=1)


def stats_of(counts, meta=META, p=P):
    s = Stats(meta, pixels_per_image=p)
    s.update(counts)
    return s


def test_mean_and_covariance_match_numpy():
    rng = np.random.default_rng(0)
    counts = random_counts(rng, 200)
    s = stats_of(counts)
    pct = counts * (100.0 / P)
    np.testing.assert_allclose(s.mu, pct.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(s.sigma, np.cov(pct, rowvar=False), rtol=1e-12, atol=1e-12)


def test_streaming_equals_all_at_once_bit_for_bit_in_any_order_and_batching():
    rng = np.random.default_rng(1)
    counts = random_counts(rng, 301)
    whole = stats_of(counts)
    streamed = Stats(META, P)
    perm = rng.permutation(len(counts))
    for chunk in np.array_split(counts[perm], 17):
        streamed.update(chunk)
    assert streamed.n == whole.n
    assert np.array_equal(streamed.mu, whole.mu)
    assert np.array_equal(streamed.sigma, whole.sigma)


def test_shard_merge_is_exact():
    rng = np.random.default_rng(2)
    counts = random_counts(rng, 100)
    shards = [stats_of(counts[i::3]) for i in range(3)]
    merged = Stats(META, P)
    for shard in reversed(shards):
        merged.merge(shard)
    whole = stats_of(counts)
    assert np.array_equal(merged.sigma, whole.sigma) and merged.n == 100


def test_memory_does_not_grow_with_images():
    s = Stats(META, P)
    rng = np.random.default_rng(3)
    for _ in range(20):
        s.update(random_counts(rng, 50))
    assert s.count_outer_sum.shape == (4, 4) and s.n == 1000


def test_centering_is_exact_for_large_offsets():
    # Nearly constant samples: naive E[x^2] - E[x]^2 in float64 loses everything here.
    p = 65536
    meta = StatsMeta(("a", "b"), "demo", "w", "pre", "0")
    counts = np.array([[p - 1, 1], [p, 0]] * 500)
    s = stats_of(counts, meta, p)
    pct = counts * (100.0 / p)
    np.testing.assert_allclose(s.sigma, np.cov(pct, rowvar=False), rtol=1e-12)


def test_update_validates_rows():
    s = Stats(META, P)
    with pytest.raises(ValueError, match="sum to 64"):
        s.update(np.array([[1, 2, 3, 4]]))
    with pytest.raises(ValueError, match="shape"):
        s.update(np.zeros((2, 3), int))
    with pytest.raises(TypeError):
        s.update(np.zeros((1, 4)) + 16.0)


def test_update_percentages_accepts_only_whole_pixel_counts():
    s = Stats(META, P)
    s.update_percentages(np.array([[25.0, 25.0, 50.0, 0.0]]))
    assert s.count_sum.tolist() == [16, 16, 32, 0]
    with pytest.raises(ValueError, match="whole pixel counts"):
        s.update_percentages(np.array([[25.1, 24.9, 50.0, 0.0]]))


def test_too_few_images_is_a_clear_error():
    s = Stats(META, P)
    with pytest.raises(InputError, match="no images"):
        _ = s.mu
    s.update(random_counts(np.random.default_rng(0), 1))
    with pytest.raises(InputError, match="at least 2"):
        _ = s.sigma


def test_npz_round_trip_keeps_everything(tmp_path):
    rng = np.random.default_rng(4)
    s = stats_of(random_counts(rng, 30))
    path = tmp_path / "sub" / "stats.npz"
    s.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["stats.npz"]  # no temp file left
    loaded = Stats.load(path)
    assert loaded.meta == s.meta and loaded.n == 30 and loaded.skipped == ()
    assert np.array_equal(loaded.sigma, s.sigma) and np.array_equal(loaded.mu, s.mu)
    with np.load(path) as data:  # pytorch-fid's tools read mu and sigma
        np.testing.assert_array_equal(data["mu"], s.mu)
        np.testing.assert_array_equal(data["sigma"], s.sigma)


@pytest.mark.parametrize("field", ["segmenter", "weights", "preprocessing"])
def test_refuses_to_compare_different_pipelines(field):
    other = StatsMeta(**{**META.__dict__, field: "something else"})
    with pytest.raises(IncompatibleStatsError, match=field):
        META.check_comparable(other)


def test_refuses_different_class_names_and_names_the_class():
    other = StatsMeta(**{**META.__dict__, "class_names": ("-", "wall", "floor", "tree")})
    with pytest.raises(IncompatibleStatsError, match="class 2"):
        META.check_comparable(other)
    # The source may differ: that is the point of comparing.
    META.check_comparable(StatsMeta(**{**META.__dict__, "source": "elsewhere"}))


def test_loading_foreign_npz_is_a_clear_error(tmp_path):
    fid_style = tmp_path / "fid.npz"
    np.savez(fid_style, mu=np.zeros(3), sigma=np.eye(3))
    with pytest.raises(InputError, match="not an FSD statistics file"):
        Stats.load(fid_style)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(InputError, match="garbage.npz"):
        Stats.load(garbage)


def test_the_list_of_skipped_images_is_saved(tmp_path):
    s = stats_of(random_counts(np.random.default_rng(5), 3))
    s.skipped = (("photos/bad ü.jpg", "image file is truncated"),)
    s.save(tmp_path / "s.npz")
    assert Stats.load(tmp_path / "s.npz").skipped == s.skipped


# ------------------------------------------------------------------ exactness limits of the int64 sums


def _two_class_rows(n: int, pixels: int) -> np.ndarray:
    """n images of two classes, alternately (pixels - 1, 1) and (1, pixels - 1): odd squares, so a float64
    sum past 2**53 would lose its last bit."""
    rows = np.ones((n, 2), dtype=np.int64)
    rows[0::2, 0] = pixels - 1
    rows[1::2, 1] = pixels - 1
    return rows


@pytest.mark.parametrize("pixels, n", [
    (256 * 256, 2**21 + 3),  # past 2**53 for one float64 product of all rows: blocks are needed
    (512 * 512, 2**17 + 5),  # a larger image takes smaller blocks (2**20 rows were too many here)
])
def test_one_update_of_many_images_stays_exact(pixels, n):
    meta = StatsMeta(("a", "b"), "demo", "w", "labels:512", "0")
    stats = Stats(meta, pixels_per_image=pixels, keep_rows=False)
    stats.update(_two_class_rows(n, pixels))
    odd, even = (n + 1) // 2, n // 2  # rows (pixels - 1, 1) and (1, pixels - 1)
    big, small = (pixels - 1) ** 2, 1
    want = [[odd * big + even * small, n * (pixels - 1)], [n * (pixels - 1), odd * small + even * big]]
    assert stats.count_outer_sum.tolist() == want
    assert stats.count_sum.tolist() == [odd * (pixels - 1) + even, odd + even * (pixels - 1)]


def test_exact_outer_sum_in_many_small_blocks_with_weights(monkeypatch):
    from fsd import rows as rows_module

    rng = np.random.default_rng(3)
    dense = random_counts(rng, 500)
    weights = rng.integers(0, 5, size=500)
    weights[17] = 40  # one image weighing more than a block
    want_plain = sum(np.outer(r, r).astype(object) for r in dense)
    want_weighted = sum(int(w) * np.outer(r, r).astype(object) for r, w in zip(dense, weights))
    monkeypatch.setattr(rows_module, "EXACT_FLOAT_LIMIT", 7 * P * P)  # blocks of 7 rows (or weight 7)
    assert rows_module.exact_block_weight(P) == 7
    assert (rows_module.exact_outer_sum(dense) == want_plain).all()
    assert (rows_module.exact_outer_sum(dense, weights) == want_weighted).all()


def test_rows_sums_a_few_rows_at_a_time_equal_the_streamed_sums(monkeypatch):
    from fsd import rows as rows_module

    rng = np.random.default_rng(5)
    counts = random_counts(rng, 103, c=6)
    counts[:, 5] += counts[:, 4]
    counts[:, 4] = 0  # a class no image holds
    stats = stats_of(counts, meta=StatsMeta(tuple("abcdef"), "demo", "w", "p", "0"))
    monkeypatch.setattr(rows_module, "SUMS_BLOCK", 10)  # 11 blocks, the last of 3 rows
    count_sum, outer = stats.rows.sums()
    want = sum(np.outer(r, r).astype(object) for r in counts)
    assert np.array_equal(count_sum, stats.count_sum) and (outer == want).all()
    assert np.array_equal(outer, stats.count_outer_sum)
    empty = rows_module.Rows.empty(6).sums()
    assert not empty[0].any() and not empty[1].any()


def test_exact_weighted_sum_in_float64_and_past_its_limit_in_int64():
    from fsd.rows import exact_weighted_sum

    rng = np.random.default_rng(4)
    dense = random_counts(rng, 300)
    weights = rng.integers(0, 4, size=300)
    want = sum(int(w) * r.astype(object) for r, w in zip(dense, weights))
    assert (exact_weighted_sum(dense, weights) == want).all()
    assert (exact_weighted_sum(dense.astype(np.float64), weights) == want).all()
    assert exact_weighted_sum(dense[:0], weights[:0]).tolist() == [0, 0, 0, 0]
    # A total past 2**53, which float64 would round to 2**53: summed in int64 instead.
    big = np.array([[2**52 + 1, 1], [2**52, 0]], dtype=np.int64)
    assert exact_weighted_sum(big, np.array([1, 1])).tolist() == [2**53 + 1, 1]


def test_update_and_merge_refuse_to_overflow_int64():
    from fsd.stats import max_images

    pixels = 256 * 256
    limit = max_images(pixels)
    assert limit == 2**31 - 1
    meta = StatsMeta(("a", "b"), "demo", "w", "rgb:256", "0")
    zeros = (np.zeros(2, np.int64), np.zeros((2, 2), np.int64))
    nearly_full = Stats.from_sums(meta, pixels, limit - 1, *zeros)
    with pytest.raises(InputError, match=r"adding these images would make 2,147,483,648 images, more than the "
                                         r"2,147,483,647 of 65536 pixels whose sums stay exact in int64"):
        nearly_full.update(np.array([[pixels, 0], [0, pixels]]))
    assert nearly_full.n == limit - 1  # nothing was added
    nearly_full.update(np.array([[pixels, 0]]))  # exactly the capacity is fine
    half = Stats.from_sums(meta, pixels, 2**30, *zeros)
    with pytest.raises(InputError, match="merging these statistics would make 2,147,483,648 images"):
        half.merge(Stats.from_sums(meta, pixels, 2**30, *zeros))
    assert half.n == 2**30
    # Sums all-reduced over processes past the capacity have wrapped around: n is the one witness.
    with pytest.raises(InputError, match="these sums count 2,147,483,648 images"):
        Stats.from_sums(meta, pixels, 2**31, *zeros)


def test_a_file_claiming_too_many_images_is_refused(tmp_path):
    stats = stats_of(random_counts(np.random.default_rng(4), 5))
    stats.save(tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as data:
        arrays = dict(data)
    arrays["n"] = np.array(2**62, dtype=np.int64)
    np.savez(tmp_path / "forged.npz", **arrays)
    with pytest.raises(InputError, match=r"forged.npz counts 4,611,686,018,427,387,904 images, more than"):
        Stats.load(tmp_path / "forged.npz")


def test_statistics_record_how_they_were_computed_and_never_compare_it(tmp_path):
    import platform

    import torch
    from click.testing import CliRunner

    import fsd
    from fsd.cli import cli
    from fsd.segmenters.labelmap import LabelMapSegmenter
    from fsd.shards import merge_stats
    from tests.conftest import write_label_folder

    folder = write_label_folder(tmp_path / "labels", 6, 3, seed=0)
    before = torch.get_num_threads()
    try:
        parts = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            parts.append(fsd.compute_stats(folder, segmenter=LabelMapSegmenter(3), num_workers=0, progress=False))
    finally:
        torch.set_num_threads(before)
    one, two = parts
    machine = platform.machine()
    assert one.environment == (f"torch {torch.__version__}, cpu ({machine}), 1 thread, float32",)
    assert two.environment == (f"torch {torch.__version__}, cpu ({machine}), 2 threads, float32",)
    one.save(tmp_path / "one.npz")
    two.save(tmp_path / "two.npz")
    assert Stats.load(tmp_path / "one.npz").environment == one.environment
    merged = merge_stats([tmp_path / "one.npz", tmp_path / "two.npz"], different_sources=True)
    assert merged.environment == one.environment + two.environment  # both kept, in order, never compared
    assert fsd.distance(one, two).fsd == 0.0

    old = Stats.load(tmp_path / "one.npz")
    old.environment = ()  # what a file of an earlier fsd holds
    old.save(tmp_path / "old.npz")
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "one.npz"), str(tmp_path / "old.npz"),
                                      "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    assert f"real statistics computed with: {one.environment[0]}\n" in result.output
    assert "fake statistics computed with: not recorded (statistics from an older fsd)\n" in result.output
    as_json = CliRunner().invoke(cli, ["report", str(tmp_path / "one.npz"), str(tmp_path / "two.npz"),
                                       "--bootstrap", "0", "--json"])
    payload = __import__("json").loads(as_json.stdout)
    assert payload["real"]["environment"] == list(one.environment)
    assert payload["fake"]["environment"] == list(two.environment)

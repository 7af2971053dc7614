"""How sure is the number: per-image rows, bootstrap intervals, FSD_inf, per-class tests, comparisons."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy import stats as scipy_stats

import fsd
from fsd import uncertainty as U
from fsd.cli import cli
from fsd.errors import InputError
from fsd.report import class_report
from fsd.segmenters.labelmap import LabelMapSegmenter
from fsd.stats import Stats, StatsMeta
from tests.synthetic_scenes import SceneModel

MODEL = SceneModel.default(12, seed=3)
META = StatsMeta(MODEL.class_names(), "scenes", "synthetic", "none", "0")


def scene_stats(model: SceneModel, n: int, seed: int, keep_rows: bool = True) -> Stats:
    stats = Stats(META, model.pixels, keep_rows=keep_rows)
    stats.update(model.counts(np.random.default_rng(seed), n))
    return stats


# -- rows ---------------------------------------------------------------------------------------------
def test_rows_reproduce_the_sums_and_survive_a_file(tmp_path):
    stats = scene_stats(MODEL, 50, seed=0)
    rows = stats.rows
    assert len(rows) == 50 and rows.ids[:2] == ("#0", "#1")
    count_sum, outer = rows.sums()
    assert np.array_equal(count_sum, stats.count_sum) and np.array_equal(outer, stats.count_outer_sum)
    assert rows.nnz < 50 * MODEL.num_classes  # kept sparse
    stats.save(tmp_path / "s.npz")
    loaded = Stats.load(tmp_path / "s.npz")
    assert loaded.rows.ids == rows.ids and np.array_equal(loaded.rows.dense(), rows.dense())


def test_rows_keep_identities_and_source_order(tmp_path):
    stats = Stats(META, MODEL.pixels)
    counts = MODEL.counts(np.random.default_rng(1), 6)
    # Arriving in the shuffled order of a subset, kept in source order.
    stats.update(counts[[4, 1, 5]], ids=["e.png", "b.png", "f.png"], index=[4, 1, 5])
    stats.update(counts[[0, 3]], ids=["a.png", "d.png\udcff"], index=[0, 3])
    assert stats.rows.ids == ("a.png", "b.png", "d.png\udcff", "e.png", "f.png")
    assert np.array_equal(stats.rows.dense(), counts[[0, 1, 3, 4, 5]])
    stats.save(tmp_path / "s.npz")
    assert Stats.load(tmp_path / "s.npz").rows.ids[2] == "d.png\udcff"  # undecodable file names survive


def _rewrite(path, **changes):
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    for key, value in changes.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    np.savez(path, **arrays)


def test_a_file_whose_rows_do_not_add_up_is_refused(tmp_path):
    path = tmp_path / "s.npz"
    scene_stats(MODEL, 20, seed=2).save(path)
    with np.load(path) as data:
        counts = data["rows_counts"].copy()
    counts[0] += 1
    _rewrite(path, rows_counts=counts)
    with pytest.raises(InputError, match="damaged.*--save-stats"):
        Stats.load(path)
    scene_stats(MODEL, 20, seed=2).save(path)
    with np.load(path) as data:
        index = data["rows_index"][:-1]
    _rewrite(path, rows_index=index)
    with pytest.raises(InputError, match="damaged"):
        Stats.load(path)


def test_old_format_files_load_without_rows_and_say_how_to_recompute(tmp_path):
    path = tmp_path / "old.npz"
    real = scene_stats(MODEL, 30, seed=3)
    real.save(path)
    _rewrite(path, format=np.array("fsd-stats-1"), rows_note=None,
             **{k: None for k in ("rows_indptr", "rows_classes", "rows_counts", "rows_index", "rows_id_offsets",
                                  "rows_id_bytes")})
    old = Stats.load(path)
    assert old.rows is None and np.array_equal(old.count_outer_sum, real.count_outer_sum)
    fake = scene_stats(MODEL, 30, seed=4)
    with pytest.warns(UserWarning, match="no per-image rows.*--save-stats"):
        result = fsd.distance(old, fake)
    assert result.fsd_ci is None and "no interval" in result.ci_note
    assert result.fsd == fsd.distance(real, fake, bootstrap=0).fsd
    with pytest.raises(InputError, match="bootstrap interval needs per-image rows.*before per-image rows"):
        fsd.distance(old, fake, bootstrap=200)
    with pytest.raises(InputError, match="fsd_inf.*needs per-image rows"):
        fsd.distance(old, fake, fsd_inf=True)
    # Welch's test needs only n, mu and sigma: the per-class report works, without prevalence.
    report = class_report(old, fake)
    assert all(r.prevalence_real is None and r.p is not None for r in report.rows if r.present)


def test_no_rows_on_purpose(tmp_path):
    real = scene_stats(MODEL, 30, seed=5, keep_rows=False)
    assert real.rows is None and real.n == 30
    with pytest.raises(InputError, match="keep_rows=False"):
        real.require_rows("an interval")
    fake = scene_stats(MODEL, 30, seed=6)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a choice the user made is not warned about
        result = fsd.distance(real, fake)
    assert result.fsd_ci is None


# -- the bootstrap ------------------------------------------------------------------------------------
def test_weighted_sums_equal_explicit_resampling_bit_for_bit():
    real, fake = scene_stats(MODEL, 40, seed=7), scene_stats(MODEL.with_area(2, 0.5), 35, seed=8)
    values = U.replicates(real, [fake], 5, seed=11)
    real_rng, fake_rng = U.real_stream(11), U.fake_stream(11, fake.rows)
    for b in range(5):
        resampled = []
        for stats, rng in ((real, real_rng), (fake, fake_rng)):
            rows = stats.rows.take(stats.rows.content_order())
            drawn = rows.take(rng.integers(0, len(rows), size=len(rows)))
            explicit = Stats(META, MODEL.pixels)
            explicit.update(drawn.dense())
            resampled.append(explicit)
        d = fsd.distance(*resampled, bootstrap=0)
        assert tuple(values[b, 0]) == (d.fsd, d.mean_term, d.covariance_term)


def test_intervals_are_seeded_and_independent_of_order_and_identity():
    real, fake = scene_stats(MODEL, 60, seed=9), scene_stats(MODEL.with_area(1, 0.6), 50, seed=10)
    first = fsd.distance(real, fake, bootstrap=300, bootstrap_seed=4)
    assert first.fsd_ci == fsd.distance(real, fake, bootstrap=300, bootstrap_seed=4).fsd_ci
    assert first.fsd_ci != fsd.distance(real, fake, bootstrap=300, bootstrap_seed=5).fsd_ci
    # The same images in another order and under other names: the same interval.
    perm = np.random.default_rng(0).permutation(50)
    shuffled = Stats(META, MODEL.pixels)
    shuffled.update(fake.rows.dense()[perm], ids=[f"other{k}" for k in range(50)])
    assert fsd.distance(real, shuffled, bootstrap=300, bootstrap_seed=4).fsd_ci == first.fsd_ci
    low, high = first.fsd_ci
    assert first.ci_level == 0.95 and first.bootstrap == U.BootstrapSettings(300, 0.95, 4)
    assert 0 <= low < high and first.mean_term_ci[0] <= first.mean_term_ci[1]
    narrow = fsd.distance(real, fake, bootstrap=300, bootstrap_seed=4, ci_level=0.5).fsd_ci
    assert low <= narrow[0] < narrow[1] < high


def test_interval_methods_on_known_replicates():
    values = np.arange(1, 101, dtype=np.float64)  # quantiles 1 + 0.025 * 99 = 3.475 and 97.525 at 95%
    assert U.interval(40.0, values, 0.95, "percentile") == pytest.approx((3.475, 97.525))
    assert U.interval(40.0, values, 0.95, "basic") == pytest.approx((0.0, 76.525))  # 80 - 97.525 clipped at 0
    # mean 50.5, bias 10.5: the percentile interval moved down by 21
    assert U.interval(40.0, values, 0.95, "bias-corrected") == pytest.approx((0.0, 76.525))
    assert U.interval(40.0, values, 0.95, "bias-corrected", non_negative=False)[0] == pytest.approx(-17.525)


@pytest.mark.parametrize("kwargs, message", [
    (dict(bootstrap=-1), "whole number >= 0"),
    (dict(bootstrap=10), "too few"),
    (dict(ci_level=1.0), "strictly between 0 and 1"),
    (dict(ci_level=0), "strictly between 0 and 1"),
    (dict(ci_method="bca"), "unknown interval method"),
])
def test_bad_bootstrap_settings_are_input_errors(kwargs, message):
    real, fake = scene_stats(MODEL, 10, seed=1), scene_stats(MODEL, 10, seed=2)
    with pytest.raises(InputError, match=message):
        fsd.distance(real, fake, **kwargs)


def test_small_sets_say_the_interval_means_little():
    real, fake = scene_stats(MODEL, 6, seed=1), scene_stats(MODEL, 40, seed=2)
    with pytest.warns(UserWarning, match="rank-deficient"):
        result = fsd.distance(real, fake, bootstrap=200)
    assert result.ci_note.startswith("unreliable: no more images than classes (real 6 for ")
    assert "95% CI" in result.summary() and "unreliable" in result.summary()


# -- FSD_inf ------------------------------------------------------------------------------------------
def test_fsd_inf_removes_most_of_the_finite_sample_bias():
    fake_model = MODEL.with_area(2, 0.5)
    population = U.stats_distance(scene_stats(MODEL, 100_000, seed=100, keep_rows=False),
                                  scene_stats(fake_model, 100_000, seed=101, keep_rows=False)).value
    plain, corrected = [], []
    for seed in range(6):
        result = fsd.distance(scene_stats(MODEL, 300, seed=2 * seed), scene_stats(fake_model, 300, seed=2 * seed + 1),
                              bootstrap=0, fsd_inf=True)
        plain.append(result.fsd)
        corrected.append(result.fsd_inf)
        assert result.fsd_inf_se > 0 and len(result.extrapolation.sizes) == U.INF_POINTS
        assert result.extrapolation.sizes[-1] == (300, 300)  # the last point is the whole sets
    bias_plain, bias_corrected = np.mean(plain) - population, np.mean(corrected) - population
    assert bias_plain > 0 and abs(bias_corrected) < 0.35 * bias_plain
    again = fsd.distance(scene_stats(MODEL, 300, seed=0), scene_stats(fake_model, 300, seed=1), bootstrap=0,
                         fsd_inf=True)
    assert again.fsd_inf == corrected[0]  # seeded
    assert again.fsd_inf_ci is None  # no replicates, no interval around it


def test_fsd_inf_interval_combines_the_fit_error_with_the_bootstrap_spread():
    real, fake = scene_stats(MODEL, 200, seed=0), scene_stats(MODEL.with_area(2, 0.5), 200, seed=1)
    result = fsd.distance(real, fake, bootstrap=200, fsd_inf=True)
    low, high = result.fsd_inf_ci
    spread = U.replicates(real, [fake], 200, 0)[:, 0, 0].std(ddof=1)
    half = 1.959963984540054 * math.sqrt(result.fsd_inf_se**2 + spread**2)
    assert (low, high) == pytest.approx((max(result.fsd_inf - half, 0), result.fsd_inf + half), rel=1e-9)
    assert half > 1.96 * result.fsd_inf_se * 1.2  # clearly wider than the fit's error alone
    assert result.to_dict()["fsd_inf_ci"] == [low, high] and "FSD_inf:" in result.summary()
    assert "95% CI" in result.summary().splitlines()[1]


# -- per-class tests ------------------------------------------------------------------------------------
def test_welch_against_a_hand_computed_example():
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 4.0, 6.0, 8.0, 10.0])
    # By hand: means 2.5 and 6, variances 5/3 and 10; se^2 = 5/12 + 2 = 29/12;
    # dof = (29/12)^2 / ((5/12)^2 / 3 + 2^2 / 4) = (841/144) / (25/432 + 1) = 2523/457 = 5.5208...
    diff, low, high, p = U.welch(np.array([2.5]), np.array([5 / 3]), 4, np.array([6.0]), np.array([10.0]), 5)
    se = math.sqrt(29 / 12)
    dof = (29 / 12) ** 2 / ((5 / 12) ** 2 / 3 + 4 / 4)
    assert dof == pytest.approx(2523 / 457, rel=1e-12)
    assert diff[0] == 3.5
    assert p[0] == pytest.approx(2 * scipy_stats.t.sf(3.5 / se, dof), rel=1e-12)
    assert p[0] == pytest.approx(scipy_stats.ttest_ind(b, a, equal_var=False).pvalue, rel=1e-10)
    half = scipy_stats.t.ppf(0.975, dof) * se
    assert (low[0], high[0]) == pytest.approx((3.5 - half, 3.5 + half))
    # No variance on either side: the difference is exact.
    diff, low, high, p = U.welch(np.array([1.0, 2.0]), np.zeros(2), 3, np.array([1.0, 5.0]), np.zeros(2), 3)
    assert p.tolist() == [1.0, 0.0] and low.tolist() == high.tolist() == [0.0, 3.0]


def test_benjamini_hochberg_against_a_hand_computed_example():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.5])
    # sorted: 0.005 0.01 0.03 0.04 0.5 -> times 5/rank: 0.025 0.025 0.05 0.05 0.5; running minimum from the top
    assert U.benjamini_hochberg(p).tolist() == pytest.approx([0.025, 0.05, 0.05, 0.025, 0.5])
    assert U.benjamini_hochberg(np.array([])).size == 0


def test_one_distribution_gives_no_verdict_and_a_halved_class_gives_too_few():
    # Class 3 (the largest) drawn at half its area where it occurs: its mean share drops by about a third
    # (the other classes fill the space), and it alone is found too few.
    halved = MODEL.with_area(3, 0.5)
    for seed in range(3):
        null = class_report(scene_stats(MODEL, 1000, seed=10 + seed), scene_stats(MODEL, 1000, seed=20 + seed))
        assert not any(r.verdict for r in null.rows), null.summary()
        assert null.summary().startswith("no class differs significantly")
        report = class_report(scene_stats(MODEL, 1000, seed=30 + seed), scene_stats(halved, 1000, seed=40 + seed))
        assert report.summary() == "too few: class_3; too many: none"
        assert report.to_dict()["too_few"] == ["class_3"] and report.to_dict()["too_many"] == []


def test_prevalence_tells_never_from_smaller():
    rarer = MODEL.with_prevalence(1, 0.5)
    smaller = MODEL.with_area(1, 0.5)
    real = scene_stats(MODEL, 500, seed=1)
    rows_rarer = class_report(real, scene_stats(rarer, 500, seed=2)).row("class_1")
    rows_smaller = class_report(real, scene_stats(smaller, 500, seed=3)).row("class_1")
    assert rows_rarer.prevalence_fake < 0.75 * rows_rarer.prevalence_real
    assert rows_smaller.prevalence_fake == pytest.approx(rows_smaller.prevalence_real, abs=0.08)
    assert rows_rarer.sentence().startswith("class_1: ") and "of real images" in rows_rarer.sentence()


# -- through the segmenter and the command line ------------------------------------------------------------
def _label_folder(path, model: SceneModel, n: int, seed: int):
    path.mkdir()
    for k, labels in enumerate(model.label_maps(np.random.default_rng(seed), n)):
        Image.fromarray(labels).save(path / f"{k:03d}.png")
    return path


SMALL = replace(SceneModel.default(6, seed=1), pixels=256)  # 16 x 16 label maps
LABELMAP = ["--segmenter", "labelmap", "--num-classes", "7", "--num-workers", "0", "-q"]


@pytest.fixture(scope="module")
def label_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    return (_label_folder(root / "real", SMALL, 40, 1), _label_folder(root / "a", SMALL.with_area(2, 0.3), 40, 2),
            _label_folder(root / "b", SMALL, 40, 3))


def test_label_maps_through_the_segmenter_equal_the_counts(label_sets):
    real, _, _ = label_sets
    stats = fsd.compute_stats(real, segmenter=LabelMapSegmenter(7), num_workers=0, progress=False)
    expected = SMALL.counts(np.random.default_rng(1), 40) * (65536 // 256)  # 16x16 maps upsampled to 256x256
    assert np.array_equal(stats.rows.dense(), expected)
    assert stats.rows.ids[0].endswith("000.png") and stats.rows.index.tolist() == list(range(40))


def test_compare_end_to_end_through_the_cli(label_sets):
    real, a, b = label_sets
    result = CliRunner().invoke(cli, ["compare", str(real), str(a), str(b), *LABELMAP, "--json",
                                      "--bootstrap", "200", "--names", "A,B"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    models, pairs = payload["models"], payload["pairs"]
    assert [m["name"] for m in models] == ["A", "B"] and [m["n"] for m in models] == [40, 40]
    assert len(pairs) == 1 and pairs[0]["a"] == str(a) and pairs[0]["b"] == str(b)
    assert pairs[0]["difference"] == pytest.approx(models[0]["fsd"] - models[1]["fsd"])
    assert 0.0 <= pairs[0]["support"] <= 0.5  # A is the worse model
    low, high = pairs[0]["difference_ci"]
    assert low < high
    # Each model's interval equals the one fsd.compute gives it alone (same seed, same images).
    for model, folder in zip(models, (a, b)):
        alone = fsd.compute(real, folder, segmenter=LabelMapSegmenter(7), num_workers=0, progress=False,
                            bootstrap=200)
        assert model["fsd"] == alone.fsd and model["fsd_ci"] == list(alone.fsd_ci)
    text = CliRunner().invoke(cli, ["compare", str(real), str(a), str(b), *LABELMAP, "--bootstrap", "200"])
    assert text.exit_code == 0 and text.stdout.count("FSD: ") == 2 and "closer in" in text.stdout


def test_compute_prints_the_interval_and_report_verdicts(label_sets, tmp_path):
    real, a, _ = label_sets
    result = CliRunner().invoke(cli, [str(real), str(a), *LABELMAP, "--report", "--fsd-inf"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("FSD: ") and "(95% CI " in lines[0]
    assert lines[1].startswith("FSD_inf: ")
    assert "q < 0.05" in result.stdout
    saved = tmp_path / "real.npz"
    assert CliRunner().invoke(cli, ["--save-stats", str(real), str(saved), *LABELMAP, "--no-rows"]).exit_code == 0
    no_rows = CliRunner().invoke(cli, [str(saved), str(a), *LABELMAP])
    assert no_rows.exit_code == 0 and "no interval" in no_rows.stdout
    refused = CliRunner().invoke(cli, [str(saved), str(a), *LABELMAP, "--fsd-inf"])
    assert refused.exit_code == 2 and "needs per-image rows" in refused.stderr


@pytest.mark.parametrize("args, message", [
    (["--bootstrap", "-3"], "--bootstrap"),
    (["--ci-level", "1.5"], "--ci-level"),
    (["--ci-level", "0"], "--ci-level"),
])
def test_cli_bad_interval_options_exit_2(label_sets, args, message):
    real, a, _ = label_sets
    result = CliRunner().invoke(cli, [str(real), str(a), *LABELMAP, *args])
    assert result.exit_code == 2 and message in result.output


def test_cli_bootstrap_on_a_set_of_one_image_and_compare_with_one_model(label_sets, tmp_path):
    real, a, _ = label_sets
    one = tmp_path / "one"
    one.mkdir()
    (one / "x.png").write_bytes((a / "000.png").read_bytes())
    result = CliRunner().invoke(cli, [str(real), str(one), *LABELMAP, "--bootstrap", "200"])
    assert result.exit_code == 2 and "1 image" in result.stderr
    result = CliRunner().invoke(cli, ["compare", str(real), str(a), *LABELMAP])
    assert result.exit_code == 2 and "at least two generated sets" in result.stderr
    with pytest.raises(InputError, match="at least two"):
        fsd.compare(real, [a], segmenter=LabelMapSegmenter(7))


def test_the_summary_says_why_an_interval_can_lie_below_the_estimate():
    # FSD at finite N is biased upward; the interval is for the population value and may exclude the estimate.
    far = MODEL.with_area(2, 0.2).with_prevalence(4, 0.3)
    result = fsd.distance(scene_stats(MODEL, 400, seed=1), scene_stats(far, 400, seed=2), bootstrap=200)
    assert result.fsd_ci[0] < result.fsd < result.fsd_ci[1] and "below the estimate" not in result.summary()
    same = fsd.distance(scene_stats(MODEL, 400, seed=1), scene_stats(MODEL, 400, seed=5), bootstrap=200)
    assert same.fsd > same.fsd_ci[1] and "below the estimate" in same.summary()  # two samples of one distribution

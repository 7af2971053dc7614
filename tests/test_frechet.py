import numpy as np
import pytest
import scipy.linalg

from fsd.frechet import frechet_distance, trace_sqrt_product


def random_spd(rng, c, rank=None):
    a = rng.standard_normal((c, rank or c + 5))
    return a @ a.T / a.shape[1]


def sqrtm_reference(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def test_equal_covariances_give_mean_term_only():
    rng = np.random.default_rng(0)
    s = random_spd(rng, 12)
    mu1, mu2 = rng.standard_normal(12), rng.standard_normal(12)
    d = frechet_distance(mu1, s, mu2, s)
    assert d.mean_term == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-12)
    assert abs(d.covariance_term) < 1e-9
    assert d.value == pytest.approx(d.mean_term + d.covariance_term)


def test_set_against_itself_is_zero_even_when_singular():
    rng = np.random.default_rng(1)
    s = random_spd(rng, 40, rank=7)  # rank-deficient, like real segmentation statistics
    mu = rng.random(40)
    d = frechet_distance(mu, s, mu, s)
    assert d.value == 0.0 or abs(d.value) < 1e-9 * np.trace(s)
    assert d.value >= 0


@pytest.mark.parametrize("k", [0.01, 3.0, 100.0])
def test_scaling_samples_by_k_scales_fsd_by_k_squared(k):
    rng = np.random.default_rng(2)
    s1, s2 = random_spd(rng, 10), random_spd(rng, 10)
    mu1, mu2 = rng.random(10), rng.random(10)
    base = frechet_distance(mu1, s1, mu2, s2).value
    scaled = frechet_distance(k * mu1, k * k * s1, k * mu2, k * k * s2).value
    assert scaled == pytest.approx(k * k * base, rel=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_sqrtm_on_well_conditioned_inputs(seed):
    rng = np.random.default_rng(seed)
    c = 30
    s1, s2 = random_spd(rng, c) + np.eye(c), random_spd(rng, c) + np.eye(c)
    mu1, mu2 = rng.random(c), rng.random(c)
    ours = frechet_distance(mu1, s1, mu2, s2).value
    reference = sqrtm_reference(mu1, s1, mu2, s2)
    assert ours == pytest.approx(reference, rel=1e-12)  # measured: at most 2.1e-14 over 200 seeds


def test_singular_covariances_stay_real_and_finite():
    rng = np.random.default_rng(3)
    c = 50
    s1 = np.zeros((c, c))
    s2 = np.zeros((c, c))
    s1[:5, :5] = random_spd(rng, 5)
    s2[3:9, 3:9] = random_spd(rng, 6)
    d = frechet_distance(np.zeros(c), s1, np.zeros(c), s2)
    assert np.isfinite(d.value) and d.covariance_term >= 0
    # Against 40-digit arithmetic on the 9 x 9 block the supports span. Not against scipy.linalg.sqrtm,
    # whose answer for this singular product depends on the scipy version (1.18.1 gives nan).
    ref = _mp_reference(np.zeros(9), s1[:9, :9], np.zeros(9), s2[:9, :9])
    assert d.value == pytest.approx(ref, rel=1e-12)  # measured: 1.9e-16


def test_trace_sqrt_product_of_diagonal():
    a, b = np.diag([4.0, 9.0, 0.0]), np.diag([1.0, 4.0, 5.0])
    assert trace_sqrt_product(a, b) == pytest.approx(2 + 6)


def test_shape_mismatch_and_nan_are_errors():
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    bad = np.eye(3)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.zeros(3), bad, np.zeros(3), np.eye(3))


# ------------------------------------------------------------------------- rare classes are real


def test_diagonal_covariances_match_the_closed_form_down_to_rare_classes():
    # Diagonal: Tr((S1 S2)^1/2) = sum sqrt(a_i b_i), so the covariance term is sum (sqrt(a_i) - sqrt(b_i))^2.
    # 5e-11 is the variance of a class seen in one pixel of one image in 50,000, next to common classes of
    # variance 1000; it is an eigenvalue like any other, not rounding noise.
    c = 336
    a, b = np.zeros(c), np.zeros(c)
    a[[1, 2, 3, 7]] = [1000.0, 400.0, 5e-11, 2e-9]
    b[[1, 2, 3, 8]] = [900.0, 300.0, 25.0, 1e-3]
    rng = np.random.default_rng(5)
    mu1, mu2 = rng.random(c), rng.random(c)
    exact_cov = float(np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    d = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert d.covariance_term == pytest.approx(exact_cov, rel=1e-13)
    assert d.value == pytest.approx(exact_cov + float(np.sum((mu1 - mu2) ** 2)), rel=1e-13)


def _exact_fsd(stats1, stats2, digits: int = 50) -> float:
    """FSD from the exact integer sums, in 50-digit arithmetic (mpmath), over the classes either set holds."""
    import mpmath
    from fractions import Fraction

    classes = np.flatnonzero(stats1.count_sum + stats2.count_sum)
    with mpmath.workdps(digits):
        def gaussian(stats):
            n, scale = stats.n, Fraction(100, stats.pixels_per_image)
            s1 = [int(stats.count_sum[i]) for i in classes]
            s2 = [[int(stats.count_outer_sum[i, j]) for j in classes] for i in classes]
            mu = [Fraction(x, n) * scale for x in s1]
            cov = [[Fraction(n * s2[i][j] - s1[i] * s1[j], n * (n - 1)) * scale**2 for j in range(len(classes))]
                   for i in range(len(classes))]
            as_mp = mpmath.matrix([[mpmath.mpf(x.numerator) / x.denominator for x in row] for row in cov])
            return [mpmath.mpf(x.numerator) / x.denominator for x in mu], as_mp

        mu1, cov1 = gaussian(stats1)
        mu2, cov2 = gaussian(stats2)
        return _mp_frechet(mu1, cov1, mu2, cov2)


def _mp_frechet(mu1, cov1, mu2, cov2) -> float:
    """|mu1 - mu2|^2 + Tr(cov1 + cov2 - 2 (cov1^(1/2) cov2 cov1^(1/2))^(1/2)) in mpmath's working precision,
    the square roots taken of eigenvalues (negative rounding clipped to 0), so singular inputs are fine."""
    import mpmath

    w, q = mpmath.eigsy(cov1)
    root1 = q * mpmath.diag([mpmath.sqrt(max(x, 0)) for x in w]) * q.T
    inner, _ = mpmath.eigsy(root1 * cov2 * root1)
    trace_root = mpmath.fsum(mpmath.sqrt(max(x, 0)) for x in inner)
    mean_term = mpmath.fsum((x - y) ** 2 for x, y in zip(mu1, mu2))
    trace = mpmath.fsum(cov1[i, i] + cov2[i, i] for i in range(len(mu1)))
    return float(mean_term + trace - 2 * trace_root)


def _mp_reference(mu1, s1, mu2, s2, digits: int = 40) -> float:
    """`_mp_frechet` of float64 inputs, taken exactly, in ``digits``-digit arithmetic."""
    import mpmath

    with mpmath.workdps(digits):
        return _mp_frechet([mpmath.mpf(float(x)) for x in mu1], mpmath.matrix(s1.tolist()),
                           [mpmath.mpf(float(x)) for x in mu2], mpmath.matrix(s2.tolist()))


def _stats_of_kinds(kinds: list[tuple[int, dict[int, int]]], pixels: int = 65536, classes: int = 336):
    """Statistics of images of a few kinds: (how many, {class: pixels}) each; the sums exactly, cheaply."""
    from fsd.rows import exact_outer_sum
    from fsd.stats import Stats, StatsMeta

    dense = np.zeros((len(kinds), classes), dtype=np.int64)
    for row, (_, counts) in enumerate(kinds):
        for cls, count in counts.items():
            dense[row, cls] = count
    assert (dense.sum(axis=1) == pixels).all()
    weights = np.array([how_many for how_many, _ in kinds], dtype=np.int64)
    meta = StatsMeta(tuple(f"class {i}" for i in range(classes)), "demo", "w", "rgb:256", "0")
    return Stats.from_sums(meta, pixels, int(weights.sum()), weights @ dense, exact_outer_sum(dense, weights))


def test_a_rare_class_keeps_its_variance_in_the_distance():
    # Training: wall or sky, and one pixel of class 3 in one image of 50,000. Generated: class 3 is common.
    # A rank tolerance relative to the largest eigenvalue dropped class 3's variance from the training
    # covariance and moved FSD by 6.7e-8 relative; FSD must match exact arithmetic on the same sums.
    real = _stats_of_kinds([(25_000, {1: 65536}), (24_999, {2: 65536}), (1, {1: 65535, 3: 1})])
    fake = _stats_of_kinds([(20_000, {1: 30000, 2: 35536}), (25_000, {1: 50000, 3: 15536}), (5_000, {2: 65536})])
    ours = frechet_distance(real.mu, real.sigma, fake.mu, fake.sigma)
    assert ours.value == pytest.approx(_exact_fsd(real, fake), rel=1e-12)
    again = frechet_distance(real.mu, real.sigma, real.mu, real.sigma)
    assert 0 <= again.value < 1e-10 * np.trace(real.sigma)

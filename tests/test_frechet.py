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
    assert ours == pytest.approx(reference, rel=1e-6)


def test_singular_covariances_stay_real_and_finite():
    rng = np.random.default_rng(3)
    c = 50
    s1 = np.zeros((c, c))
    s2 = np.zeros((c, c))
    s1[:5, :5] = random_spd(rng, 5)
    s2[3:9, 3:9] = random_spd(rng, 6)
    d = frechet_distance(np.zeros(c), s1, np.zeros(c), s2)
    assert np.isfinite(d.value) and d.covariance_term >= 0
    # Disjoint supports except classes 3, 4: check against the 9x9 block computed by sqrtm
    ref = sqrtm_reference(np.zeros(9), s1[:9, :9] + 0, np.zeros(9), s2[:9, :9])
    assert d.value == pytest.approx(ref, rel=1e-5, abs=1e-8)


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

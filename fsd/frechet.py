"""The Fréchet distance between two Gaussians, with its mean and covariance terms.

    d^2 = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))

Tr((S_1 S_2)^(1/2)) equals Tr((S_1^(1/2) S_2 S_1^(1/2))^(1/2)), the trace of the square root of a
symmetric positive semi-definite matrix. We compute it from symmetric eigendecompositions in float64
(of each covariance scaled to unit variances, dropping eigenvalues at rounding level: `psd_factor`) and
one singular value decomposition, which stays real and finite for the rank-deficient covariances that
segmentation statistics always have (classes that never occur), where ``scipy.linalg.sqrtm(S_1 @ S_2)`` can return complex values or fail, and
gives 0 for a set against itself to rounding (the eigenvalue-clipping form is off by ~1e-7 there).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class FrechetDistance(NamedTuple):
    """The distance and its two terms; unpacks as ``value, mean_term, covariance_term = ...``.

    ``.fsd`` is ``.value`` under the name `fsd.FSDResult` uses.

    >>> d = FrechetDistance(3.0, 2.0, 1.0)
    >>> value, mean_term, covariance_term = d
    >>> (value, d.fsd, float(d))
    (3.0, 3.0, 3.0)
    """

    value: float
    mean_term: float
    covariance_term: float

    @property
    def fsd(self) -> float:
        return self.value

    def __float__(self) -> float:
        return self.value


# Eigenvalues of the unit-diagonal (correlation) matrix below this many units of C * eps * its largest
# eigenvalue are rounding noise: its entries carry a few eps of rounding, and eigh adds about C * eps.
NOISE_ULPS = 8


def psd_factor(matrix: np.ndarray) -> np.ndarray:
    """L with L @ L.T = matrix for a symmetric positive semi-definite ``matrix``, without its rounding noise.

    The classes are first scaled to unit variance (classes of zero variance, those absent from the set,
    are left out exactly): ``matrix = D R D`` with ``D`` the standard deviations. Each entry of a covariance
    carries a rounding error of a few eps *relative to its own size*, so in ``R`` every entry is known to
    a few eps and an eigenvalue of ``R`` below ``NOISE_ULPS * C * eps * max`` is indistinguishable from zero
    (directions that are exactly null: percentages summing to 100, fewer images than classes). Those are
    dropped rather than square-rooted, since sqrt(1e-16) noise would become 1e-8 signal. What the scaling
    buys: a real class that is merely rare (one pixel in 50,000 images has a variance 1e-14 of a common
    class's) keeps its eigenvalue, where a tolerance relative to the largest eigenvalue of ``matrix`` itself
    would drop it.
    """
    c = matrix.shape[0]
    variances = np.diagonal(matrix)
    support = np.flatnonzero(variances > 0)
    factor = np.zeros((c, 0))
    if support.size == 0:
        return factor
    std = np.sqrt(variances[support])
    scaled = matrix[np.ix_(support, support)] / np.outer(std, std)
    w, v = np.linalg.eigh((scaled + scaled.T) / 2)
    keep = w > NOISE_ULPS * support.size * np.finfo(np.float64).eps * max(w.max(initial=0.0), 0.0)
    factor = np.zeros((c, int(keep.sum())))
    factor[support] = std[:, None] * v[:, keep] * np.sqrt(w[keep])
    return factor


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((sigma1 sigma2)^(1/2)) for symmetric positive semi-definite inputs.

    With sigma_i = L_i L_i^T, the eigenvalues of sigma1^(1/2) sigma2 sigma1^(1/2) are the squared
    singular values of L_1^T L_2, so the trace is their sum (the nuclear norm): no square root of a
    nearly singular product is ever taken.
    """
    product = psd_factor(sigma1).T @ psd_factor(sigma2)
    if product.size == 0:
        return 0.0
    return float(np.linalg.svd(product, compute_uv=False).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> FrechetDistance:
    """FSD (or FID) between N(mu1, sigma1) and N(mu2, sigma2), in float64."""
    mu1, mu2 = (np.asarray(m, dtype=np.float64) for m in (mu1, mu2))
    sigma1, sigma2 = (np.asarray(s, dtype=np.float64) for s in (sigma1, sigma2))
    c = mu1.shape[0]
    if mu1.shape != (c,) or mu2.shape != (c,) or sigma1.shape != (c, c) or sigma2.shape != (c, c):
        raise ValueError(
            f"shapes do not match: mu {mu1.shape} and {mu2.shape}, sigma {sigma1.shape} and {sigma2.shape}"
        )
    for name, arr in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or infinity")
    sigma1 = (sigma1 + sigma1.T) / 2
    sigma2 = (sigma2 + sigma2.T) / 2
    diff = mu1 - mu2
    mean_term = float(diff @ diff)
    trace1, trace2 = float(np.trace(sigma1)), float(np.trace(sigma2))
    covariance_term = trace1 + trace2 - 2.0 * trace_sqrt_product(sigma1, sigma2)
    # Mathematically >= 0 (a squared Bures distance); clip rounding noise of identical inputs only.
    if covariance_term < 0 and -covariance_term <= 1e-10 * max(trace1 + trace2, 1.0):
        covariance_term = 0.0
    return FrechetDistance(mean_term + covariance_term, mean_term, covariance_term)

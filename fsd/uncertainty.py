"""How sure is the number: bootstrap intervals, the bias-corrected FSD, per-class tests, comparisons.

Everything here is computed from the statistics' per-image rows (`fsd.rows.Rows`), never by segmenting
again. A bootstrap replicate resamples the images of each set with replacement; since every image is a
row of whole pixel counts, a replicate's sums are the weighted sums ``sum_i w_i x_i`` and
``sum_i w_i x_i x_i^T`` with integer weights ``w`` (how often image ``i`` was drawn), formed exactly
(`fsd.rows.exact_outer_sum`). So a replicate gives, to the bit, the FSD of the explicitly resampled set.

Determinism. Images are drawn in the order of their content (`Rows.content_order`), from streams seeded
by ``(seed, side)``; a generated set's stream also by a digest of its rows. So the intervals depend on
the seed and the images only: not on file order, batch size, workers or processes, and a model gets the
same interval from `fsd.compute` as from `fsd.compare`.

The quantities and their methods are documented, with their measured coverage, in the README section
"How sure is the number" and benchmarks/bench_coverage.py.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

from .errors import InputError
from .frechet import FrechetDistance, frechet_distance
from .rows import Rows, exact_outer_sum, exact_weighted_sum
from .stats import Stats, covariance_from_sums

DEFAULT_SAMPLES = 1000
DEFAULT_LEVEL = 0.95
DEFAULT_SEED = 0
METHODS = ("bias-corrected", "basic", "percentile")
DEFAULT_METHOD = "basic"  # closest to nominal coverage in benchmarks/bench_coverage.py (README)
DEFAULT_Q = 0.05  # the false discovery rate below which a class difference counts as significant

# The bias-corrected FSD (Chong and Forsyth, CVPR 2020): FSD of random subsets of both sets, at
# INF_POINTS sizes spread evenly from INF_SMALLEST of each set to all of it, a least-squares line in
# 1 / (images in the generated subset), and its intercept.
INF_POINTS = 15
INF_SMALLEST = 0.2

_REAL_STREAM, _FAKE_STREAM, _SUBSET_STREAM = 0, 1, 2


@dataclass(frozen=True)
class BootstrapSettings:
    """How intervals are computed: ``samples`` replicates (0: none), two-sided ``level``, ``seed``, ``method``.

    Methods, for a replicate distribution ``t*`` of an estimate ``t`` with quantiles ``q_lo``, ``q_hi``:
    ``"percentile"`` ``[q_lo, q_hi]``; ``"basic"`` ``[2t - q_hi, 2t - q_lo]``; ``"bias-corrected"``
    ``[q_lo - 2b, q_hi - 2b]`` with ``b = mean(t*) - t``, the percentile interval moved by the bootstrap
    estimate of FSD's upward bias twice (once for the estimate, once for the replicates). Intervals of
    non-negative quantities (FSD, its terms) are clipped at 0.
    """

    samples: int = DEFAULT_SAMPLES
    level: float = DEFAULT_LEVEL
    seed: int = DEFAULT_SEED
    method: str = DEFAULT_METHOD

    def __post_init__(self) -> None:
        if isinstance(self.samples, bool) or not isinstance(self.samples, (int, np.integer)) or self.samples < 0:
            raise InputError(f"the number of bootstrap samples must be a whole number >= 0 (0: no interval), "
                             f"got {self.samples!r}")
        if 0 < self.samples < 100:
            raise InputError(f"{self.samples} bootstrap samples are too few for an interval: use at least 100 "
                             f"(default {DEFAULT_SAMPLES}), or 0 for none")
        if not isinstance(self.level, (int, float)) or not 0.0 < float(self.level) < 1.0:
            raise InputError(f"the confidence level must lie strictly between 0 and 1 (e.g. 0.95), got {self.level!r}")
        if self.method not in METHODS:
            raise InputError(f"unknown interval method {self.method!r}; use one of {', '.join(METHODS)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise InputError(f"the bootstrap seed must be a whole number >= 0, got {self.seed!r}")

    def to_dict(self) -> dict:
        return {"samples": int(self.samples), "seed": int(self.seed), "method": self.method}


# -- the one distance of exact sums --------------------------------------------------------------------
def distance_of_sums(n_real: int, sum_real: np.ndarray, outer_real: np.ndarray,
                     n_fake: int, sum_fake: np.ndarray, outer_fake: np.ndarray, scale: float) -> FrechetDistance:
    """FSD from the exact sums of two sets, over the classes that occur in either (the others add 0).

    `fsd.distance` and every bootstrap replicate go through this function, so a replicate equals the
    distance of the explicitly resampled statistics bit for bit.
    """
    if (n_real == n_fake and np.array_equal(sum_real, sum_fake) and np.array_equal(outer_real, outer_fake)):
        return FrechetDistance(0.0, 0.0, 0.0)  # the same Gaussian: exactly 0, not 0 to rounding
    present = np.flatnonzero((sum_real > 0) | (sum_fake > 0))
    grid = np.ix_(present, present)
    mu_real = sum_real[present] / n_real * scale
    mu_fake = sum_fake[present] / n_fake * scale
    sigma_real = covariance_from_sums(n_real, sum_real[present], outer_real[grid], scale)
    sigma_fake = covariance_from_sums(n_fake, sum_fake[present], outer_fake[grid], scale)
    return frechet_distance(mu_real, sigma_real, mu_fake, sigma_fake)


def stats_distance(real: Stats, fake: Stats) -> FrechetDistance:
    """FSD between two `Stats` (assumed comparable), through `distance_of_sums`."""
    if real.pixels_per_image != fake.pixels_per_image:
        raise InputError(f"cannot compare statistics over {real.pixels_per_image} and {fake.pixels_per_image} "
                         "pixels per image")
    return distance_of_sums(real.n, real.count_sum, real.count_outer_sum,
                            fake.n, fake.count_sum, fake.count_outer_sum, real.scale)


# -- resampling ----------------------------------------------------------------------------------------
def content_digest(rows: Rows) -> list[int]:
    """Four 32-bit words of a SHA-256 of the rows' content in content order (identities left out)."""
    ordered = rows.take(rows.content_order())
    digest = hashlib.sha256()
    for array in (ordered.indptr, ordered.classes, ordered.counts):
        digest.update(np.ascontiguousarray(array, dtype="<i8").tobytes())
    words = np.frombuffer(digest.digest()[:16], dtype="<u4")
    return [int(w) for w in words]


class _Sample:
    """One set's rows, in content order, as a dense (N, K) count matrix over shared columns (float64, which
    holds every count exactly, for BLAS products that `exact_outer_sum` keeps exact)."""

    def __init__(self, stats: Stats, columns: np.ndarray, what: str, name: str):
        rows = stats.require_rows(what, name)
        if len(rows) < 2:
            raise InputError(f"{what} needs at least 2 images per set; {name or stats.meta.source} has {len(rows)}")
        self.order = rows.content_order()
        self.rows = rows
        self.dense = rows.take(self.order).dense(columns, dtype=np.float64)
        self.n = len(rows)

    def sums(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact weighted sums of the counts and of their outer products (int64)."""
        drawn = np.flatnonzero(weights)  # a replicate leaves about 37% of the images out: they add nothing
        dense, weights = self.dense[drawn], weights[drawn]
        return exact_weighted_sum(dense, weights), exact_outer_sum(dense, weights)


def resample_weights(rng: np.random.Generator, n: int) -> np.ndarray:
    """How often each of ``n`` images is drawn in one replicate: ``n`` draws with replacement."""
    return np.bincount(rng.integers(0, n, size=n), minlength=n)


def real_stream(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), _REAL_STREAM]))


def fake_stream(seed: int, rows: Rows) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), _FAKE_STREAM, *content_digest(rows)]))


def _columns(sets: Sequence[Stats]) -> np.ndarray:
    present = np.zeros(sets[0].num_classes, dtype=bool)
    for s in sets:
        present |= s.count_sum > 0
    return np.flatnonzero(present)


def replicates(real: Stats, fakes: Sequence[Stats], samples: int, seed: int,
               what: str = "a bootstrap interval") -> np.ndarray:
    """``(samples, len(fakes), 3)``: FSD, mean term and covariance term of each replicate and fake set.

    In each replicate the real set is resampled once and shared by every fake set (a paired bootstrap),
    and each fake set is resampled from its own stream.
    """
    columns = _columns([real, *fakes])
    real_sample = _Sample(real, columns, what, "the real set")
    fake_samples = [_Sample(f, columns, what, f"generated set {j + 1}" if len(fakes) > 1 else "the generated set")
                    for j, f in enumerate(fakes)]
    real_rng = real_stream(seed)
    fake_rngs = [fake_stream(seed, s.rows) for s in fake_samples]
    c = real.num_classes
    out = np.empty((samples, len(fakes), 3), dtype=np.float64)
    grid = np.ix_(columns, columns)

    def full(s1: np.ndarray, s2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Back to all C classes, so the distance sees exactly what explicit resampling would.
        sum_full = np.zeros(c, dtype=np.int64)
        outer_full = np.zeros((c, c), dtype=np.int64)
        sum_full[columns] = s1
        outer_full[grid] = s2
        return sum_full, outer_full

    for b in range(samples):
        r1, r2 = full(*real_sample.sums(resample_weights(real_rng, real_sample.n)))
        for j, (sample, rng) in enumerate(zip(fake_samples, fake_rngs)):
            f1, f2 = full(*sample.sums(resample_weights(rng, sample.n)))
            d = distance_of_sums(real_sample.n, r1, r2, sample.n, f1, f2, real.scale)
            out[b, j] = (d.value, d.mean_term, d.covariance_term)
    return out


def interval(estimate: float, values: np.ndarray, level: float, method: str,
             non_negative: bool = True) -> tuple[float, float]:
    """A two-sided interval from bootstrap replicates ``values`` of ``estimate`` (see `BootstrapSettings`)."""
    alpha = 1.0 - level
    low_q, high_q = (float(q) for q in np.quantile(values, [alpha / 2, 1 - alpha / 2]))
    if method == "percentile":
        low, high = low_q, high_q
    elif method == "basic":
        low, high = 2 * estimate - high_q, 2 * estimate - low_q
    elif method == "bias-corrected":
        shift = 2.0 * (float(np.mean(values)) - estimate)
        low, high = low_q - shift, high_q - shift
    else:
        raise InputError(f"unknown interval method {method!r}; use one of {', '.join(METHODS)}")
    if non_negative:
        low, high = max(low, 0.0), max(high, 0.0)
    return low, high


# -- the bias-corrected FSD ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Extrapolation:
    """``fsd_inf``: the intercept of FSD against 1 / N over subsets, with its least-squares standard error."""

    value: float
    se: float
    sizes: tuple[tuple[int, int], ...]  # (real, generated) images in each subset
    values: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"fsd_inf": self.value, "fsd_inf_se": self.se,
                "points": [{"n_real": a, "n_fake": b, "fsd": v} for (a, b), v in zip(self.sizes, self.values)]}


def inf_interval(ext: Extrapolation, fsd_replicates: np.ndarray, level: float) -> tuple[float, float]:
    """A normal interval for the population FSD around ``fsd_inf``, with variance the fit's ``se**2`` plus the
    bootstrap variance of FSD.

    The least-squares error alone reflects only how well 15 nested subsets of one sample lie on a line, not
    how the sample itself varies: its +-1.96 se covered the population value in 44% (100 images) to 75% (300
    images) of simulated runs, the combined interval in 82% to 98% (benchmarks/bench_coverage.py).
    """
    z = float(scipy_stats.norm.ppf(0.5 + level / 2))
    half = z * math.sqrt(ext.se**2 + float(np.var(fsd_replicates, ddof=1)))
    return max(ext.value - half, 0.0), max(ext.value + half, 0.0)


def extrapolate(real: Stats, fake: Stats, seed: int, points: int = INF_POINTS,
                smallest: float = INF_SMALLEST) -> Extrapolation:
    """FSD at ``points`` subset sizes, a least-squares line in 1/N, its intercept and standard error.

    Both sets are subsampled (without replacement) to the same fraction of their size, from ``smallest``
    to 1, so the finite-sample bias ``a / N_real + b / N_fake`` is a straight line in 1 / N_fake. Each size
    uses its own random subset, drawn from a stream seeded by ``seed``.
    """
    what = "the bias-corrected FSD (fsd_inf)"
    columns = _columns([real, fake])
    samples = [_Sample(real, columns, what, "the real set"), _Sample(fake, columns, what, "the generated set")]
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _SUBSET_STREAM, *content_digest(samples[1].rows)]))
    fractions = np.linspace(smallest, 1.0, points)
    c = real.num_classes
    grid = np.ix_(columns, columns)
    sizes, values = [], []
    for f in fractions:
        sums = []
        size = []
        for s in samples:
            k = max(2, int(round(f * s.n)))
            weights = np.zeros(s.n, dtype=np.int64)
            weights[rng.choice(s.n, size=k, replace=False)] = 1
            s1, s2 = s.sums(weights)
            full1, full2 = np.zeros(c, np.int64), np.zeros((c, c), np.int64)
            full1[columns], full2[grid] = s1, s2
            sums.append((k, full1, full2))
            size.append(k)
        (nr, r1, r2), (nf, f1, f2) = sums
        values.append(distance_of_sums(nr, r1, r2, nf, f1, f2, real.scale).value)
        sizes.append(tuple(size))
    x = np.array([1.0 / b for _, b in sizes])
    y = np.array(values)
    if np.ptp(x) == 0:
        raise InputError(f"{what} needs sets large enough for subsets of different sizes "
                         f"(the sets have {real.n} and {fake.n} images)")
    slope, intercept = np.polyfit(x, y, 1)
    residuals = y - (intercept + slope * x)
    dof = max(len(x) - 2, 1)
    s2 = float(residuals @ residuals) / dof
    sxx = float(((x - x.mean()) ** 2).sum())
    se = math.sqrt(s2 * (1.0 / len(x) + x.mean() ** 2 / sxx))
    return Extrapolation(float(intercept), se, tuple(sizes), tuple(values))


# -- per-class tests -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassTests:
    """Per class: the difference of mean percentages (fake - real), its interval, p- and q-values,
    and the share of images holding the class at all in each set (``None`` without rows)."""

    difference: np.ndarray
    low: np.ndarray
    high: np.ndarray
    p: np.ndarray
    q: np.ndarray  # NaN for classes outside the family tested
    tested: np.ndarray  # bool: the classes the false discovery rate is controlled over
    prevalence_real: np.ndarray | None
    prevalence_fake: np.ndarray | None
    level: float


def welch(mu_a: np.ndarray, var_a: np.ndarray, n_a: int, mu_b: np.ndarray, var_b: np.ndarray, n_b: int,
          level: float = DEFAULT_LEVEL) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Welch's two-sample t test of ``mu_b - mu_a`` per class: ``(difference, low, high, p)``.

    Degrees of freedom by Welch-Satterthwaite. Where both variances are 0 the difference is exact:
    p = 1 for no difference, 0 otherwise, and the interval is the point.
    """
    diff = np.asarray(mu_b, np.float64) - np.asarray(mu_a, np.float64)
    va, vb = np.asarray(var_a, np.float64) / n_a, np.asarray(var_b, np.float64) / n_b
    se2 = va + vb
    with np.errstate(divide="ignore", invalid="ignore"):
        dof = se2**2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
        t = diff / np.sqrt(se2)
    degenerate = se2 <= 0
    dof = np.where(degenerate, 1.0, dof)
    p = np.where(degenerate, np.where(diff == 0, 1.0, 0.0), 2.0 * scipy_stats.t.sf(np.abs(np.where(degenerate, 0, t)), dof))
    half = np.where(degenerate, 0.0, scipy_stats.t.ppf(0.5 + level / 2, dof) * np.sqrt(np.where(degenerate, 0, se2)))
    return diff, diff - half, diff + half, p


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) of a family of tests.

    >>> benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.2])).round(4).tolist()
    [0.04, 0.0533, 0.0533, 0.2]
    """
    p = np.asarray(p, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1]
    q = np.empty(m)
    q[order] = np.minimum(adjusted, 1.0)
    return q


def class_tests(real: Stats, fake: Stats, level: float = DEFAULT_LEVEL) -> ClassTests:
    """Welch tests of every class, Benjamini-Hochberg q-values over the object classes that occur in
    either set (label 0, "no prediction", gets a p-value but is left out of the family), prevalence
    from the rows when both sets have them. Needs at least 2 images per set."""
    for name, s in (("real", real), ("generated", fake)):
        if s.n < 2:
            raise InputError(f"a per-class test needs at least 2 images per set; the {name} set has {s.n}")
    var_real, var_fake = np.diag(real.sigma).clip(min=0), np.diag(fake.sigma).clip(min=0)
    diff, low, high, p = welch(real.mu, var_real, real.n, fake.mu, var_fake, fake.n, level)
    tested = (real.count_sum > 0) | (fake.count_sum > 0)
    tested[0] = False
    q = np.full(len(p), np.nan)
    q[tested] = benjamini_hochberg(p[tested])
    prevalence_real = prevalence_fake = None
    if real.rows is not None and fake.rows is not None:
        prevalence_real = real.rows.images_containing() / real.n
        prevalence_fake = fake.rows.images_containing() / fake.n
    return ClassTests(diff, low, high, p, q, tested, prevalence_real, prevalence_fake, level)


def small_sample_note(sets: Sequence[tuple[str, Stats]]) -> str:
    """Why an interval means little here ("" when it means what it says): no more images than classes occur.

    >>> from fsd.stats import StatsMeta
    >>> s = Stats(StatsMeta(("-", "a", "b"), "demo", "w", "p", "0"), pixels_per_image=2)
    >>> s.update(np.array([[1, 1, 0], [0, 1, 1]]))
    >>> small_sample_note([("real", s)])
    'unreliable: no more images than classes (real 2 for 3)'
    """
    small = [f"{name} {s.n} for {s.observed_classes()}" for name, s in sets if s.n <= s.observed_classes()]
    return f"unreliable: no more images than classes ({', '.join(small)})" if small else ""

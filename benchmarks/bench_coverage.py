"""How often the intervals cover the truth, and how often the verdicts cry wolf: measured, not assumed.

Synthetic scenes from known distributions (tests/synthetic_scenes.py: heavy-tailed per-class areas, most
images holding 0% of a rare class) stand in for segmentations; the population values come from a very
large sample of each distribution (2,000,000 images by default). For each set size N, ``--reps``
independent pairs of sets are drawn and every interval fsd computes is checked against the population
value:

- FSD, its mean term and its covariance term, by every bootstrap method (`fsd.uncertainty.METHODS`);
- FSD_inf (the bias-corrected FSD) with its least-squares standard error alone, and combined with the
  bootstrap spread of FSD;
- the per-class differences of mean area (Welch intervals), averaged over the classes that occur;
- the difference of two models' FSDs from `fsd.compare` (paired bootstrap);

and, with both sets drawn from one distribution, how often any class gets a verdict ("too few" /
"too many") or any q-value falls below 0.05: the false-positive rates of the per-class tests.

The scenes go straight to per-image counts (the label maps they stand for are `SceneModel.label_maps`,
whose class counts are exactly these; tests/test_uncertainty.py runs that path through the `labelmap`
segmenter): segmenting millions of label maps would measure the decoder, not the statistics.

    python benchmarks/bench_coverage.py                       # the table in the README (~1 to 2 hours on 2 cores)
    python benchmarks/bench_coverage.py --sizes 100,1000 --reps 50 --bootstrap 200   # a quick look
"""

from __future__ import annotations

import os

# Many small matrix products, one after another: OpenBLAS threads only spin here, and on a shared machine
# they stall each other. One thread is also what makes runs on different machines comparable.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import norm  # noqa: E402

from benchmarks.common import machine_description  # noqa: E402
from fsd import uncertainty as U  # noqa: E402
from fsd.report import VerdictRule, class_report  # noqa: E402
from fsd.stats import Stats, StatsMeta  # noqa: E402
from tests.synthetic_scenes import SceneModel  # noqa: E402


def models(classes: int) -> dict[str, SceneModel]:
    real = SceneModel.default(classes)
    # A generator that draws class 3 at half its area, class 6 in 60% of the images it should, class 10
    # 50% larger; and a second one that is worse at class 3 and better at class 6.
    a = real.with_area(3, 0.5).with_prevalence(6, 0.6).with_area(10, 1.5)
    b = real.with_area(3, 0.35).with_prevalence(6, 0.8).with_area(10, 1.5)
    return {"real": real, "a": a, "b": b}


def population(model: SceneModel, meta: StatsMeta, n: int, seed: int) -> Stats:
    rng = np.random.default_rng(seed)
    stats = Stats(meta, model.pixels, keep_rows=False)
    chunk = 100_000
    for start in range(0, n, chunk):
        stats.update(model.counts(rng, min(chunk, n - start)))
    return stats


def sample(model: SceneModel, meta: StatsMeta, rng: np.random.Generator, n: int) -> Stats:
    stats = Stats(meta, model.pixels)
    stats.update(model.counts(rng, n))
    return stats


def covered(low: float, high: float, truth: float) -> bool:
    return low <= truth <= high


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,300,1000,3000,10000", help="images per set, comma-separated")
    parser.add_argument("--reps", type=int, default=200, help="independent pairs of sets per size")
    parser.add_argument("--bootstrap", type=int, default=500, help="replicates per interval")
    parser.add_argument("--classes", type=int, default=40, help="object classes of the scene model")
    parser.add_argument("--population", type=int, default=2_000_000, help="images behind each population value")
    parser.add_argument("--level", type=float, default=0.95)
    parser.add_argument("--json", dest="json_path", help="also write every figure to this JSON file")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    print(machine_description(torch.device("cpu")))
    print(f"scene model: {args.classes} object classes; population values from {args.population:,} images per "
          f"distribution; {args.reps} pairs of sets per size; {args.bootstrap} bootstrap replicates; "
          f"nominal level {args.level:g}")
    scenes = models(args.classes)
    meta = StatsMeta(scenes["real"].class_names(), "scenes", "synthetic", "none", "0")
    t0 = time.perf_counter()
    pops = {name: population(m, meta, args.population, seed=1000 + k) for k, (name, m) in enumerate(scenes.items())}
    truth_a = U.stats_distance(pops["real"], pops["a"])
    truth_b = U.stats_distance(pops["real"], pops["b"])
    true_diff = pops["a"].mu - pops["real"].mu
    tested_truth = (pops["real"].count_sum > 0) | (pops["a"].count_sum > 0)
    tested_truth[0] = False
    print(f"population FSD(real, a) = {truth_a.value:.3f} (mean term {truth_a.mean_term:.3f}, covariance term "
          f"{truth_a.covariance_term:.3f}); FSD(real, b) = {truth_b.value:.3f}; ({time.perf_counter() - t0:.0f} s)")

    z = float(norm.ppf(0.5 + args.level / 2))
    results = []
    for n in sizes:
        rng = np.random.default_rng(n)
        hits = {m: np.zeros(3) for m in U.METHODS}
        inf_hits = np.zeros(2)
        class_cover, pair_cover, fp_verdict, fp_q = [], 0, 0, 0
        estimates, corrected, inf_values, widths = [], [], [], []
        start = time.perf_counter()
        for r in range(args.reps):
            real, a, b = (sample(scenes[k], meta, rng, n) for k in ("real", "a", "b"))
            d = U.stats_distance(real, a)
            values = U.replicates(real, [a, b], args.bootstrap, seed=r)
            reps_a = values[:, 0]
            for method in U.METHODS:
                for k, (est, truth) in enumerate(zip((d.value, d.mean_term, d.covariance_term),
                                                     (truth_a.value, truth_a.mean_term, truth_a.covariance_term))):
                    hits[method][k] += covered(*U.interval(est, reps_a[:, k], args.level, method), truth)
            estimates.append(d.value)
            corrected.append(d.value - (reps_a[:, 0].mean() - d.value))
            low, high = U.interval(d.value, reps_a[:, 0], args.level, U.DEFAULT_METHOD)
            widths.append(high - low)
            # FSD_inf with its regression standard error, and with the bootstrap spread added.
            ext = U.extrapolate(real, a, seed=r)
            inf_values.append(ext.value)
            spread = float(reps_a[:, 0].std(ddof=1))
            inf_hits[0] += covered(ext.value - z * ext.se, ext.value + z * ext.se, truth_a.value)
            combined = (ext.se**2 + spread**2) ** 0.5
            inf_hits[1] += covered(ext.value - z * combined, ext.value + z * combined, truth_a.value)
            # Per-class differences (Welch), over the classes occurring in the population.
            tests = U.class_tests(real, a, args.level)
            inside = (tests.low <= true_diff) & (true_diff <= tests.high)
            class_cover.append(float(inside[tested_truth].mean()))
            # The difference of two models, paired bootstrap.
            d_b = U.stats_distance(real, b)
            pair = U.interval(d.value - d_b.value, values[:, 0, 0] - values[:, 1, 0], args.level, U.DEFAULT_METHOD,
                              non_negative=False)
            pair_cover += covered(*pair, truth_a.value - truth_b.value)
            # False positives: two sets of one distribution.
            other = sample(scenes["real"], meta, rng, n)
            null = class_report(real, other, rule=VerdictRule())
            fp_verdict += any(row.verdict is not None for row in null.rows)
            fp_q += any(row.q is not None and row.q < 0.05 for row in null.rows)
        elapsed = time.perf_counter() - start
        row = {
            "n": n,
            "reps": args.reps,
            "fsd_mean": float(np.mean(estimates)),
            "fsd_sd": float(np.std(estimates, ddof=1)),
            "bias_corrected_mean": float(np.mean(corrected)),
            "fsd_inf_mean": float(np.mean(inf_values)),
            "fsd_inf_sd": float(np.std(inf_values, ddof=1)),
            "ci_width_mean": float(np.mean(widths)),
            "coverage": {m: {"fsd": h[0] / args.reps, "mean_term": h[1] / args.reps,
                             "covariance_term": h[2] / args.reps} for m, h in hits.items()},
            "fsd_inf_coverage_se_only": inf_hits[0] / args.reps,
            "fsd_inf_coverage_combined": inf_hits[1] / args.reps,
            "class_difference_coverage_mean": float(np.mean(class_cover)),
            "class_difference_coverage_min_run": float(np.min(class_cover)),
            "pair_difference_coverage": pair_cover / args.reps,
            "false_verdict_rate": fp_verdict / args.reps,
            "false_q_rate": fp_q / args.reps,
            "seconds": elapsed,
        }
        results.append(row)
        print(json.dumps(row), flush=True)

    se = lambda p: (p * (1 - p) / args.reps) ** 0.5  # noqa: E731
    print(f"\nCoverage of nominal {args.level:.0%} intervals (share of {args.reps} runs that contain the population "
          f"value; a share p has a standard error of about {se(args.level):.3f}):")
    header = ["N", "FSD (mean)", "FSD CI width"] + [f"FSD {m}" for m in U.METHODS] + [
        "mean term", "cov. term", "FSD_inf se", "FSD_inf comb.", "class diff.", "A - B", "false verdict", "any q<.05"]
    print(" | ".join(header))
    for row in results:
        cov = row["coverage"]
        cells = [str(row["n"]), f"{row['fsd_mean']:.2f}", f"{row['ci_width_mean']:.2f}"]
        cells += [f"{cov[m]['fsd']:.3f}" for m in U.METHODS]
        cells += [f"{cov[U.DEFAULT_METHOD]['mean_term']:.3f}", f"{cov[U.DEFAULT_METHOD]['covariance_term']:.3f}",
                  f"{row['fsd_inf_coverage_se_only']:.3f}", f"{row['fsd_inf_coverage_combined']:.3f}",
                  f"{row['class_difference_coverage_mean']:.3f}", f"{row['pair_difference_coverage']:.3f}",
                  f"{row['false_verdict_rate']:.3f}", f"{row['false_q_rate']:.3f}"]
        print(" | ".join(cells))
    print(f"population FSD {truth_a.value:.3f}; total {time.perf_counter() - t0:.0f} s")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"truth": truth_a.value, "rows": results}, indent=1))


if __name__ == "__main__":
    main()

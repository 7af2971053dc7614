"""What per-image rows cost: memory and file size at 10k and 100k images, and the time of everything
computed from them (loading with its exactness check, the bootstrap, FSD_inf, the per-class report).

The rows are synthetic but shaped like segmentations: 336 classes with Zipf-like prevalence, about 20
classes per image (tests/synthetic_scenes.py), 65,536 pixels per image as in the paper. Times are
compared with the segmentation time of the same images, from benchmarks/README.md (1.6 images/s on the
2-core CPU those figures come from), so "a small fraction" is a measured ratio.

    python benchmarks/bench_rows.py                  # 10k and 100k images, bootstrap of 10k + 10k
    python benchmarks/bench_rows.py --sizes 10000 --bootstrap 200
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import fsd  # noqa: E402
from benchmarks.common import machine_description  # noqa: E402
from fsd.report import class_report  # noqa: E402
from fsd.stats import Stats, StatsMeta  # noqa: E402
from tests.synthetic_scenes import SceneModel  # noqa: E402

SEGMENTATION_IMAGES_PER_S = 1.6  # benchmarks/README.md: fsd.compute_stats on 2 CPU cores, float32


def segmentation_like(classes: int = 335, seed: int = 0) -> SceneModel:
    rng = np.random.default_rng(seed)
    rank = np.arange(1, classes + 1)
    return SceneModel(np.clip(0.95 / rank**0.6, 0.002, 0.95), rng.uniform(0.3, 3.0, size=classes), shape=0.7)


def build(model: SceneModel, n: int, seed: int, keep_rows: bool = True) -> Stats:
    meta = StatsMeta(model.class_names(), "scenes", "synthetic", "none", "0", f"scenes seed {seed}")
    stats = Stats(meta, model.pixels, keep_rows=keep_rows)
    rng = np.random.default_rng(seed)
    for start in range(0, n, 32):  # the batches of a run
        count = min(32, n - start)
        stats.update(model.counts(rng, count), ids=[f"images/{k:07d}.png" for k in range(start, start + count)],
                     index=range(start, start + count))
    stats.rows  # joined, as before saving
    return stats


def timed(action):
    start = time.perf_counter()
    value = action()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--bootstrap", type=int, default=1000, help="replicates for the 10k + 10k timing")
    parser.add_argument("--pair-size", type=int, default=10_000, help="images per set for the bootstrap timing")
    args = parser.parse_args()
    print(machine_description(torch.device("cpu")))
    model = segmentation_like()
    fake_model = model.with_area(5, 0.5).with_prevalence(12, 0.5)

    print("\nMemory and files (rows of ~20 classes per image, identities like images/0000123.png)")
    print("images | classes per image | rows in memory | peak while building | .npz with rows | without | "
          "load + check")
    for n in (int(s) for s in args.sizes.split(",")):
        gc.collect()
        tracemalloc.start()
        stats = build(model, n, seed=1)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        with tempfile.TemporaryDirectory() as folder:
            with_rows, without = Path(folder) / "rows.npz", Path(folder) / "sums.npz"
            stats.save(with_rows)
            sums_only = Stats.from_sums(stats.meta, stats.pixels_per_image, stats.n, stats.count_sum,
                                        stats.count_outer_sum, rows_note="made with keep_rows=False (--no-rows)")
            sums_only.save(without)
            _, load_s = timed(lambda: Stats.load(with_rows))
            sizes = with_rows.stat().st_size, without.stat().st_size
        rows = stats.rows
        print(f"{n:,} | {rows.nnz / n:.1f} | {rows.nbytes / 2**20:.1f} MiB | {peak / 2**20:.1f} MiB | "
              f"{sizes[0] / 2**20:.1f} MiB | {sizes[1] / 2**20:.2f} MiB | {load_s:.2f} s")
        del stats, rows

    n = args.pair_size
    real, fake = build(model, n, seed=2), build(fake_model, n, seed=3)
    present = int(((real.count_sum > 0) | (fake.count_sum > 0)).sum())
    segmentation_s = 2 * n / SEGMENTATION_IMAGES_PER_S
    print(f"\nFrom the rows of {n:,} + {n:,} images ({present} classes occur; segmenting them takes about "
          f"{segmentation_s / 3600:.1f} h at {SEGMENTATION_IMAGES_PER_S} images/s):")
    plain, plain_s = timed(lambda: fsd.distance(real, fake, bootstrap=0))
    result, boot_s = timed(lambda: fsd.distance(real, fake, bootstrap=args.bootstrap))
    inf, inf_s = timed(lambda: fsd.distance(real, fake, bootstrap=0, fsd_inf=True))
    _, report_s = timed(lambda: class_report(real, fake))
    for what, seconds in (("FSD alone", plain_s), (f"bootstrap, {args.bootstrap} replicates", boot_s - plain_s),
                          ("FSD_inf (15 subsets)", inf_s - plain_s), ("per-class report", report_s)):
        print(f"  {what}: {seconds:.2f} s ({seconds / segmentation_s * 100:.3f}% of the segmentation time)")
    print(f"  FSD {plain.fsd:.3f}, 95% CI {result.fsd_ci[0]:.3f} to {result.fsd_ci[1]:.3f}; FSD_inf {inf.fsd_inf:.3f} "
          f"(se {inf.fsd_inf_se:.3f})")


if __name__ == "__main__":
    main()

"""How much the CPU thread count changes labels and FSD (what `torchrun` on CPU differs by).

    python benchmarks/bench_threads.py                      # 16 + 16 synthetic images, 1, 2 and 4 threads
    python benchmarks/bench_threads.py --images 64 --threads 1 2 4 8

The UPP network (the real architecture, synthetic weights of ``tests/synthetic.py``, or ``--weights-dir``)
segments the same photo-like 256x256 images with each thread count. Printed per count: pixels whose label
differs from the first count's, and FSD between two such sets against the first count's FSD. Everything
else (batch size, processes, workers, order, shards) is held fixed and does not change labels (tests).
Random weights amplify rounding (see bench_precision.py), so these are upper figures for trained weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import common
import torch

from bench_precision import segment_all, stats_of
from fsd.frechet import frechet_distance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16, help="images per set")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--weights-dir", type=Path)
    args = parser.parse_args()
    device = torch.device("cpu")
    segmenter = common.build_segmenter(device, weights_dir=args.weights_dir)
    real, fake = common.synthetic_batch(args.images, seed=1), common.synthetic_batch(args.images, seed=2)
    print(common.machine_description(device))
    print(common.software_versions())
    print(f"{args.images} + {args.images} images of 256x256, UPP network, float32, batch size 1")
    before = torch.get_num_threads()
    reference = None
    try:
        for threads in args.threads:
            torch.set_num_threads(threads)
            labels = (segment_all(segmenter.segment, real, 1, device), segment_all(segmenter.segment, fake, 1, device))
            value = frechet_distance(*(s for pair in (stats_of(x, segmenter.num_classes) for x in labels)
                                       for s in (pair.mu, pair.sigma))).fsd
            if reference is None:
                reference = (labels, value)
                print(f"{threads} thread(s): FSD {value:.6f} (reference)")
                continue
            changed = sum(int((a != b).sum()) for a, b in zip(labels, reference[0]))
            total = sum(x.numel() for x in labels)
            print(f"{threads} thread(s): {changed} of {total} labels differ ({changed / total:.2e}); "
                  f"FSD {value:.6f}, {abs(value - reference[1]) / reference[1]:.1e} relative")
    finally:
        torch.set_num_threads(before)


if __name__ == "__main__":
    main()

"""Peak memory (host and device) of ``fsd.compute_stats`` against the number of images N.

    python benchmarks/bench_memory.py                         # N = 32, 96, 160 on CPU
    python benchmarks/bench_memory.py --device cuda --counts 500,2000,10000

Each N runs in a fresh process on a folder of N LSUN-sized JPEGs, so each peak is that run's own. The
statistics are fixed-size sums, so the peak should depend on the batch size, not on N. The naive
formulation (batch 10, all heads at full resolution) is measured once for comparison.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import torch


def child(folder: Path, device: str, batch_size: int, naive: bool) -> None:
    """Runs in the fresh process: compute the statistics of ``folder`` and print the peaks as JSON."""
    import fsd
    from bench_throughput import naive_pipeline

    segmenter = common.build_segmenter(device)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if naive:
        stats = naive_pipeline(folder, segmenter)
    else:
        stats = fsd.compute_stats(str(folder), segmenter=segmenter, batch_size=batch_size, progress=False)
    result = {
        "n": stats.n,
        "seconds": time.perf_counter() - start,
        "host_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "host_before_mb": before / 1024,
        "worker_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "device_peak_mb": (torch.cuda.max_memory_allocated() / 2**20) if device.startswith("cuda") else None,
    }
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None)
    parser.add_argument("--counts", default="32,96,160")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "fsd-bench")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--naive", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = str(common.pick_device(args.device))
    if args.child is not None:
        child(args.child, device, args.batch_size, args.naive)
        return

    print(common.machine_description(torch.device(device)))
    counts = [int(c) for c in args.counts.split(",")]
    runs = [(n, False) for n in counts] + [(counts[0], True)]
    print(f"\n{'run':34s} {'N':>6s} {'s':>7s} {'host peak MB':>13s} {'(peak before run)':>19s} "
          f"{'loader worker peak MB':>22s} {'device peak MB':>15s}")
    for n, naive in runs:
        folder = common.write_jpeg_folder(args.workdir / f"jpeg-{n}", n, seed=3)
        command = [sys.executable, __file__, "--child", str(folder), "--device", device,
                   "--batch-size", str(args.batch_size)] + (["--naive"] if naive else [])
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        result = json.loads(output.strip().splitlines()[-1])
        name = "naive (batch 10, paper outputs)" if naive else f"fsd.compute_stats (batch {args.batch_size})"
        device_peak = "-" if result["device_peak_mb"] is None else f"{result['device_peak_mb']:.0f}"
        print(f"{name:34s} {result['n']:6d} {result['seconds']:7.1f} {result['host_peak_mb']:13.0f} "
              f"{result['host_before_mb']:19.0f} {result['worker_peak_mb']:22.0f} {device_peak:>15s}")
    print(f"\nload average at end: {common.load_average()}")


if __name__ == "__main__":
    main()

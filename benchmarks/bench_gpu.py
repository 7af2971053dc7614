"""Everything fsd claims about GPUs, measured in one run. `benchmarks/gpu.sh` runs each section in its own
process under its own time limit and gathers the sections into one report.

    python benchmarks/bench_gpu.py --section throughput --device cuda
    python benchmarks/bench_gpu.py --section all --smoke        # CPU, tiny sizes: checks the script itself

Each section prints a Markdown section to stdout (progress goes to stderr):

- ``machine``: CPU, GPU, software versions, thread count.
- ``throughput``: images/s of ``segment`` in float32 (the default), tf32 and bfloat16 with the network on
  micro-batches of several sizes (fsd's is 32; the others are set here for the measurement only), on
  preprocessed photo-like images already on the device; each mode's labels against float32's.
- ``invariance``: float32 labels of the same images segmented at several batch sizes, all at once, in
  reversed order, and a second time; the network run on the caller's batch (no fixed micro-batch) for
  contrast; then ``fsd.compute_stats`` of those images as JPEGs at several batch sizes and loader worker
  counts, and as 3 shards merged: integer sums compared.
- ``determinism``: float32 as fsd runs it (cuDNN autotuning off, deterministic algorithms) against
  autotuning on and deterministic algorithms off (PyTorch's usual fastest): images/s and labels.
- ``decode``: the loader alone over LSUN-sized JPEGs (the default worker count), segmentation alone, and
  ``fsd.compute_stats`` end to end, so that one sees whether decoding keeps up.
- ``memory``: peak device memory and host resident-set growth of ``fsd.compute_stats`` against N.

Weights are synthetic (common.py): speed does not depend on them, and label agreement measured with random
weights is a pessimistic check of the real network's. Nothing here is asserted except that the script ran.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import common
import numpy as np
import torch

import fsd
from fsd.segmenters import upp
from fsd.segmenters.base import PAPER_PREPROCESSING
from fsd.sources import FolderSource, default_num_workers, iterate_batches

SECTIONS = ("machine", "throughput", "invariance", "determinism", "decode", "memory")


@dataclass(frozen=True)
class Sizes:
    """How much each section does: the GPU sizes, or tiny ones for ``--smoke`` on a CPU."""

    throughput_images: int
    throughput_batches: tuple[int, ...]
    invariance_images: int
    invariance_batches: tuple[int, ...]
    determinism_images: int
    determinism_batch: int
    decode_images: int
    end_to_end_images: int
    memory_counts: tuple[int, ...]
    repeats: int


# 40 invariance images: a full micro-batch of 32 and a padded one of 8. On a GPU a call of 1 image costs a
# micro-batch of 32, so the batch-1 rows are the expensive ones (40 x 32 image passes each).
GPU_SIZES = Sizes(512, (32, 64, 128), 40, (1, 5, 32), 256, 128, 2048, 2048, (256, 1024, 2048), 3)
SMOKE_SIZES = Sizes(2, (1, 2), 2, (1,), 2, 2, 8, 2, (2, 3), 1)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def table(header: list[str], rows: list[list[object]]) -> str:
    """A Markdown table; the first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def yes_no(value: bool) -> str:
    return "yes" if value else "**no**"


# -- images ------------------------------------------------------------------------------------------------
def jpeg_folder(workdir: Path, count: int, seed: int = 3) -> Path:
    """A folder of ``count`` LSUN-sized photo-like JPEGs, kept between runs (`common.write_jpeg_folder`)."""
    return common.write_jpeg_folder(workdir / f"jpeg-{seed}-{count}", count, seed=seed)


def large_folder(workdir: Path, sizes: Sizes) -> Path:
    """The JPEGs the decode and memory sections take their subsets from."""
    return jpeg_folder(workdir, max(sizes.decode_images, *sizes.memory_counts))


def fsd_micro_batch(device: torch.device) -> int:
    """The micro-batch fsd runs the network on, on ``device``."""
    return upp.MICRO_BATCH.get(device.type, upp.ACCELERATOR_MICRO_BATCH)


def subset_folder(folder: Path, count: int) -> Path:
    """A folder of links to the first ``count`` images of ``folder`` (the folder itself when it has that many)."""
    paths = FolderSource(folder).paths
    if count >= len(paths):
        return folder
    target = folder.parent / f"{folder.name}-first-{count}"
    target.mkdir(exist_ok=True)
    for old in target.iterdir():
        old.unlink()
    for i, path in enumerate(paths[:count]):
        (target / f"{i:06d}{Path(path).suffix}").symlink_to(Path(path).resolve())
    return target


def load_images(folder: Path, count: int) -> torch.Tensor:
    """The first ``count`` images of ``folder``, preprocessed (uint8, 3 x 256 x 256)."""
    source = FolderSource(folder)
    batches = iterate_batches(source, list(range(min(count, len(source)))), PAPER_PREPROCESSING, batch_size=64,
                              num_workers=0, skip_bad_images=False, skipped=[])
    return torch.cat([batch.images for batch in batches])


# -- segmentation ------------------------------------------------------------------------------------------
def segment_in_batches(segmenter, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([segmenter.segment(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def network_as_called(segmenter, images: torch.Tensor) -> torch.Tensor:
    """float32 labels with the network run on exactly the caller's batch: no fixed micro-batch, no padding."""
    with segmenter._numerics(), torch.inference_mode():
        logits = segmenter.decoder.forward_object(segmenter.encoder(segmenter.network_input(images)))
        return upp.upsample_argmax(logits.float(), segmenter.preprocessing.size,
                                   prune_classes=segmenter.device.type == "cpu")


def differences(labels: torch.Tensor, reference: torch.Tensor) -> tuple[int, float]:
    """Images with any pixel whose label differs, and the fraction of pixels that differ."""
    differ = labels != reference
    return int(differ.flatten(1).any(1).sum()), float(differ.double().mean())


def describe_difference(labels: torch.Tensor, reference: torch.Tensor) -> str:
    images, pixels = differences(labels, reference)
    return "identical" if images == 0 else f"{images} of {len(labels)} images differ ({pixels:.2e} of pixels)"


def rate(timing: common.Timing) -> str:
    return f"{timing.per_second:,.1f}"


@contextmanager
def micro_batch_set(device: torch.device, size: int) -> Iterator[None]:
    """The network on micro-batches of ``size`` images on ``device`` (benchmark only; fsd's own is fixed)."""
    saved = upp.MICRO_BATCH.get(device.type)
    upp.MICRO_BATCH[device.type] = size
    try:
        yield
    finally:
        if saved is None:
            del upp.MICRO_BATCH[device.type]
        else:
            upp.MICRO_BATCH[device.type] = saved


@contextmanager
def numerics_replaced(replacement: Callable[[], object]) -> Iterator[None]:
    """Run ``segment`` with ``replacement`` where fsd uses `upp.deterministic_algorithms` (benchmark only)."""
    original = upp.deterministic_algorithms
    upp.deterministic_algorithms = replacement
    try:
        yield
    finally:
        upp.deterministic_algorithms = original


# -- sections ----------------------------------------------------------------------------------------------
def section_machine(device: torch.device, sizes: Sizes, workdir: Path) -> None:
    print("## Machine\n")
    for line in common.machine_description(device).splitlines():
        print(f"- {line}")
    print(f"- default loader workers: {default_num_workers()}")
    print(f"- micro-batch the network runs on here: {fsd_micro_batch(device)}")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        print(f"- GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} "
              f"multiprocessors, compute capability {props.major}.{props.minor}")
    print("- weights: synthetic random weights of the exact architecture (tests/synthetic.py)")


def section_throughput(device: torch.device, sizes: Sizes, workdir: Path) -> None:
    precisions = ["float32", "tf32", "bfloat16"] if device.type == "cuda" else ["float32", "bfloat16"]
    images = common.synthetic_batch(sizes.throughput_images, seed=1).to(device)
    check = images[: min(len(images), 64)]
    rows, reference = [], None
    for precision in precisions:
        say(f"  throughput: {precision}")
        segmenter = common.build_segmenter(device, precision)
        rates = []
        for batch_size in sizes.throughput_batches:
            with micro_batch_set(device, batch_size):
                timing = common.time_it(lambda: segment_in_batches(segmenter, images, batch_size), len(images),
                                        sizes.repeats, device)
            rates.append(rate(timing))
        labels = segment_in_batches(segmenter, check, segmenter.micro_batch).cpu()  # fsd's own micro-batch
        reference = labels if reference is None else reference
        agreement = "reference" if precision == "float32" else f"{1 - differences(labels, reference)[1]:.4%}"
        rows.append([precision, *rates, agreement])
    print(f"## Throughput: `segment`, images/s ({len(images)} preprocessed images on the device, median of "
          f"{sizes.repeats}; the network on micro-batches of each size, fsd's own being "
          f"{fsd_micro_batch(device)})\n")
    print(table(["precision", *[f"micro-batch {b}" for b in sizes.throughput_batches],
                 f"pixels labelled as float32 ({len(check)} images)"], rows))


def section_invariance(device: torch.device, sizes: Sizes, workdir: Path) -> None:
    segmenter = common.build_segmenter(device)
    folder = jpeg_folder(workdir, sizes.invariance_images, seed=5)
    images = load_images(folder, sizes.invariance_images).to(device)
    n = len(images)
    say(f"  invariance: segment, {n} images")
    reference = segmenter.segment(images).cpu()
    rows = [[f"all {n} at once (the reference)", "identical"]]
    for batch_size in sizes.invariance_batches:
        rows.append([f"batch {batch_size}", describe_difference(segment_in_batches(segmenter, images, batch_size).cpu(),
                                                               reference)])
    reversed_labels = segmenter.segment(images.flip(0)).flip(0).cpu()
    rows.append(["reversed order, all at once", describe_difference(reversed_labels, reference)])
    rows.append(["all at once, a second time", describe_difference(segmenter.segment(images).cpu(), reference)])
    invariant = all(row[1] == "identical" for row in rows)
    as_called_one = torch.cat([network_as_called(segmenter, images[i : i + 1]) for i in range(n)]).cpu()
    as_called_all = network_as_called(segmenter, images).cpu()
    contrast = describe_difference(as_called_one, as_called_all)

    say("  invariance: compute_stats")
    workers = default_num_workers()
    configs = [(32, workers), (1, 0), (5, min(2, workers)), (n, 0)]
    results = {}
    for batch_size, num_workers in configs:
        results[f"batch {batch_size}, {num_workers} workers"] = fsd.compute_stats(
            str(folder), segmenter=segmenter, batch_size=batch_size, num_workers=num_workers, progress=False)
    shards = [fsd.compute_stats(str(folder), segmenter=segmenter, num_workers=workers, progress=False, shard=(i, 3))
              for i in range(3)]
    results["3 shards, merged"] = fsd.merge_stats(shards)
    first_name, first = next(iter(results.items()))
    stats_rows = []
    for name, stats in results.items():
        same = (np.array_equal(stats.count_sum, first.count_sum)
                and np.array_equal(stats.count_outer_sum, first.count_outer_sum))
        stats_rows.append([name, stats.n, yes_no(same)])
    stats_invariant = all(row[2] == "yes" for row in stats_rows)

    print("## Invariance: float32 labels and statistics however the work is split\n")
    print(f"`segment` of {n} LSUN-sized JPEGs (micro-batch {segmenter.micro_batch}), against all {n} at once:\n")
    print(table(["how", "labels"], rows))
    print(f"\nLabels independent of batch size, order and run: {yes_no(invariant)}. For contrast, the network run on "
          f"the caller's batch without the fixed micro-batch, one image at a time against all {n} at once: "
          f"{contrast}.\n")
    print(f"`fsd.compute_stats` of the same {n} JPEGs, integer sums against the first row:\n")
    print(table(["how", "images", f"sums equal to {first_name}"], stats_rows))
    print(f"\nStatistics independent of batch size, workers and shards: {yes_no(stats_invariant)}.")


def section_determinism(device: torch.device, sizes: Sizes, workdir: Path) -> None:
    segmenter = common.build_segmenter(device)
    images = common.synthetic_batch(sizes.determinism_images, seed=2).to(device)
    batch_size = sizes.determinism_batch
    say("  determinism: deterministic algorithms")
    fsd_way = common.time_it(lambda: segment_in_batches(segmenter, images, batch_size), len(images), sizes.repeats,
                             device)
    reference = segment_in_batches(segmenter, images, batch_size).cpu()
    say("  determinism: autotuned")
    with numerics_replaced(lambda: upp.algorithm_choice(autotune=True, deterministic=False)):
        fast = common.time_it(lambda: segment_in_batches(segmenter, images, batch_size), len(images), sizes.repeats,
                              device)
        fast_labels = segment_in_batches(segmenter, images, batch_size).cpu()
    note = "" if device.type == "cuda" else " (not CUDA: fsd applies these settings only on CUDA, so both rows run alike)"
    print(f"## The cost of deterministic algorithms (float32, batch {batch_size}, {len(images)} images, median of "
          f"{sizes.repeats}){note}\n")
    print(table(["settings", "images/s", "labels"], [
        ["fsd: cuDNN autotuning off, deterministic algorithms", rate(fsd_way), "reference"],
        ["autotuning on, deterministic algorithms off", rate(fast), describe_difference(fast_labels, reference)],
    ]))
    print(f"\nDeterministic mode costs {fast.per_second / fsd_way.per_second - 1:+.1%} in speed against autotuning "
          "(a positive figure: autotuning is that much faster).")


def section_decode(device: torch.device, sizes: Sizes, workdir: Path) -> None:
    folder = large_folder(workdir, sizes)
    decode_folder = subset_folder(folder, sizes.decode_images)
    workers = default_num_workers()
    source = FolderSource(decode_folder)
    indices = list(range(len(source)))

    def read_all() -> None:
        for _ in iterate_batches(source, indices, PAPER_PREPROCESSING, batch_size=32, num_workers=workers,
                                 skip_bad_images=False, skipped=[]):
            pass

    say("  decode: loader")
    decode = common.time_it(read_all, len(indices), sizes.repeats, torch.device("cpu"), warmup=False)
    segmenter = common.build_segmenter(device)
    images = load_images(decode_folder, min(len(indices), 256)).to(device)
    say("  decode: segment")
    segment = common.time_it(lambda: segment_in_batches(segmenter, images, 32), len(images), sizes.repeats, device)
    e2e_folder = subset_folder(folder, sizes.end_to_end_images)
    count = len(FolderSource(e2e_folder))
    say("  decode: end to end")
    end_to_end = common.time_it(lambda: fsd.compute_stats(str(e2e_folder), segmenter=segmenter, batch_size=32,
                                                          num_workers=workers, progress=False),
                                count, sizes.repeats, device, warmup=False)
    print(f"## Decoding against segmentation (float32, batch 32, {workers} loader workers)\n")
    print(table(["stage", "images", "images/s"], [
        ["loader alone: read, decode, resize, crop", len(indices), rate(decode)],
        ["`segment` alone, images on the device", len(images), rate(segment)],
        ["`fsd.compute_stats` end to end", count, rate(end_to_end)],
    ]))
    print(f"\nDecoding keeps up: {yes_no(decode.per_second >= segment.per_second)} (the loader is "
          f"{decode.per_second / segment.per_second:.2f}x segmentation); end to end runs at "
          f"{end_to_end.per_second / segment.per_second:.0%} of segmentation alone; 10,000 images would take "
          f"{10_000 / end_to_end.per_second:,.0f} s.")


def section_memory(device: torch.device, sizes: Sizes, workdir: Path) -> None:
    folder = large_folder(workdir, sizes)
    segmenter = common.build_segmenter(device)
    workers = default_num_workers()
    fsd.compute_stats(str(subset_folder(folder, sizes.memory_counts[0])), segmenter=segmenter,
                      num_workers=workers, progress=False)  # warm-up: kernels, workspaces, the allocator's pools
    rows = []
    for count in sizes.memory_counts:
        say(f"  memory: N = {count}")
        target = subset_folder(folder, count)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        with common.PeakGrowth() as host:
            stats = fsd.compute_stats(str(target), segmenter=segmenter, num_workers=workers, progress=False)
        seconds = time.perf_counter() - start
        device_peak = ((torch.cuda.max_memory_allocated(device) - before) / 2**20) if device.type == "cuda" else None
        rows.append([f"{stats.n:,}", f"{seconds:.1f}", "-" if device_peak is None else f"{device_peak:,.0f}",
                     f"{host.mb:,.0f}", f"{stats.rows.nbytes / 2**20:.2f}"])
    print(f"## Memory against N (`fsd.compute_stats`, batch 32, {workers} workers; after one warm-up run; "
          f"host growth measured by {common.PeakGrowth.method})\n")
    print(table(["N", "seconds", "device peak above the model, MiB", "host peak growth, MB", "rows, MiB"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", choices=(*SECTIONS, "all"), default="all")
    parser.add_argument("--device", default=None, help="default: cuda if available (cpu with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks that the script works")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fsd-gpu-bench"))
    args = parser.parse_args()
    device = torch.device(args.device) if args.device else (torch.device("cpu") if args.smoke
                                                            else common.pick_device(None))
    sizes = SMOKE_SIZES if args.smoke else GPU_SIZES
    args.workdir.mkdir(parents=True, exist_ok=True)
    functions = {name: globals()[f"section_{name}"] for name in SECTIONS}
    for name in SECTIONS if args.section == "all" else (args.section,):
        start = time.perf_counter()
        functions[name](device, sizes, args.workdir)
        print(f"\n*{name}: {time.perf_counter() - start:.1f} s*\n", flush=True)


if __name__ == "__main__":
    main()

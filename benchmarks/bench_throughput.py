"""Throughput of each stage of FSD and end to end, side by side with the naive formulation.

    python benchmarks/bench_throughput.py                 # CPU-sized defaults (about 15 min on 2 cores)
    python benchmarks/bench_throughput.py --device cuda --images 2000 --batch-sizes 32,64,128
    python benchmarks/bench_throughput.py --weights-dir DIR --folder lsun_church/   # published weights

Stages: decode + resize (the DataLoader over a folder of LSUN-sized JPEGs, by worker count), segmentation
(``UPPSegmenter.segment`` by batch size, and its parts), statistics (class counts into `Stats`), and end
to end: ``fsd.compute_stats`` on the folder against the paper's way of running the same model
(`fsd.segmenters.upp.naive_segment`: all four heads, full-resolution softmax, batch 10, no loader
workers). Every figure is a median over repeats; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import common  # noqa: F401  (puts the repository on sys.path)
import numpy as np
import torch
import torch.nn.functional as F

import fsd
from fsd.segmenters.base import PAPER_PREPROCESSING, class_counts
from fsd.segmenters.upp import naive_segment, upsample_argmax
from fsd.sources import FolderSource, default_num_workers, iterate_batches
from fsd.stats import Stats, StatsMeta

NAIVE_BATCH = 10


def parse_ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def decode_stage(folder: Path, workers: list[int], batch_size: int, repeats: int) -> None:
    source = FolderSource(folder)
    indices = list(range(len(source)))

    def read_all(num_workers: int) -> None:
        for _ in iterate_batches(source, indices, PAPER_PREPROCESSING, batch_size=batch_size,
                                 num_workers=num_workers, skip_bad_images=False, skipped=[]):
            pass

    print(f"\n## decode + resize + crop ({len(source)} JPEGs, batch {batch_size})")
    for num_workers in workers:
        timing = common.time_it(lambda: read_all(num_workers), len(source), repeats, torch.device("cpu"))
        print(f"  workers {num_workers:2d}: {timing.describe()}")


def segmentation_stage(segmenter, images: torch.Tensor, batch_sizes: list[int], repeats: int) -> None:
    device = segmenter.device
    print(f"\n## segmentation ({len(images)} preprocessed images already in memory)")

    def run(function, batch_size: int):
        def go() -> None:
            for start in range(0, len(images), batch_size):
                function(images[start : start + batch_size].to(device))
        return go

    for batch_size in batch_sizes:
        timing = common.time_it(run(segmenter.segment, batch_size), len(images), repeats, device)
        print(f"  fast   batch {batch_size:3d}: {timing.describe()}")
    timing = common.time_it(run(lambda x: naive_segment(segmenter, x), NAIVE_BATCH), len(images), repeats, device)
    print(f"  naive  batch {NAIVE_BATCH:3d}: {timing.describe()}")


def parts_stage(segmenter, images: torch.Tensor, repeats: int) -> None:
    """Where the time goes, per image, at batch 10."""
    device = segmenter.device
    x = segmenter.network_input(images[:NAIVE_BATCH])
    n = len(x)
    size = segmenter.preprocessing.size
    with torch.inference_mode():
        features = segmenter.encoder(x)
        logits = segmenter.decoder.forward_object(features)
        parts = {
            "encoder": lambda: segmenter.encoder(x),
            "decoder, object head only": lambda: segmenter.decoder.forward_object(features),
            "decoder, all four heads": lambda: segmenter.decoder(features),
            "upsample + argmax, only winnable classes": lambda: upsample_argmax(logits, size, prune_classes=True),
            "upsample + argmax, all 336 classes": lambda: upsample_argmax(logits, size, prune_classes=False),
            "upsample + softmax + argmax (naive)": lambda: F.softmax(
                F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False), dim=1
            ).argmax(1),
        }
        print(f"\n## parts of segmentation (batch {n}), ms per image")
        for name, function in parts.items():
            timing = common.time_it(function, n, repeats, device)
            print(f"  {name:42s} {1000 * timing.median / n:8.1f}")


def smooth_logits(count: int, classes: int, seed: int) -> torch.Tensor:
    """Logits shaped like a trained segmenter's: ``classes`` of the 336 own large smooth regions."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(count, 336, 64, 64, generator=gen) - 6
    for i in range(count):
        chosen = torch.randperm(336, generator=gen)[:classes]
        fields = torch.randn(1, classes, 5, 5, generator=gen) * 4
        logits[i, chosen] += 6 + F.interpolate(fields, size=(64, 64), mode="bicubic", align_corners=False)[0]
    return logits


def upsample_stage(segmenter, images: torch.Tensor, repeats: int) -> None:
    """Upsample + argmax on CPU for three kinds of logits; labels are checked identical to the full path."""
    print("\n## upsample + argmax to 256 x 256 on cpu, ms per image (labels identical in every row)")
    with torch.inference_mode():
        model = segmenter.decoder.forward_object(segmenter.encoder(segmenter.network_input(images[:4]))).cpu()
    kinds = {
        "random-weight model (all classes stay)": model.float(),
        "smooth, 12 classes per image": smooth_logits(4, 12, seed=1),
        "smooth, 40 classes per image": smooth_logits(4, 40, seed=2),
    }
    cpu = torch.device("cpu")
    for name, logits in kinds.items():
        full = common.time_it(lambda: upsample_argmax(logits, 256, prune_classes=False), 4, repeats, cpu)
        pruned = common.time_it(lambda: upsample_argmax(logits, 256, prune_classes=True), 4, repeats, cpu)
        same = torch.equal(upsample_argmax(logits, 256, prune_classes=True),
                           F.interpolate(logits, size=(256, 256), mode="bilinear", align_corners=False).argmax(1))
        print(f"  {name:40s} all classes {1000 * full.median / 4:6.1f}   winnable only "
              f"{1000 * pruned.median / 4:6.1f}   identical: {same}")


def statistics_stage(segmenter, images: torch.Tensor, repeats: int) -> None:
    labels = segmenter.segment(images[:NAIVE_BATCH]).cpu()
    meta = StatsMeta(tuple(segmenter.class_names), segmenter.name, segmenter.weights_id,
                     PAPER_PREPROCESSING.describe(), fsd.__version__)
    batches = 20

    def accumulate() -> None:
        stats = Stats(meta, pixels_per_image=256 * 256)
        for _ in range(batches):
            stats.update(class_counts(labels, segmenter.num_classes).numpy())

    timing = common.time_it(accumulate, batches * len(labels), repeats, torch.device("cpu"))
    print(f"\n## statistics (class counts + exact sums), batch {len(labels)}: {timing.describe()}")


def naive_pipeline(folder: Path, segmenter) -> Stats:
    """The paper's way: decode in the main process, batch 10, all heads, full-resolution softmax."""
    source = FolderSource(folder)
    meta = StatsMeta(tuple(segmenter.class_names), segmenter.name, segmenter.weights_id,
                     PAPER_PREPROCESSING.describe(), fsd.__version__, str(folder))
    stats = Stats(meta, pixels_per_image=256 * 256)
    for batch in iterate_batches(source, list(range(len(source))), PAPER_PREPROCESSING, batch_size=NAIVE_BATCH,
                                 num_workers=0, skip_bad_images=False, skipped=[]):
        labels = naive_segment(segmenter, batch.images.to(segmenter.device))
        stats.update(class_counts(labels, segmenter.num_classes).cpu().numpy())
    return stats


def end_to_end(folder: Path, segmenter, configs: list[tuple[int, int]], repeats: int) -> None:
    count = len(FolderSource(folder))
    device = segmenter.device
    print(f"\n## end to end, {count} JPEGs -> statistics (repeats interleaved)")
    runs: dict[str, list[float]] = {}
    results: dict[str, Stats] = {}

    def record(name: str, function) -> None:
        timing = common.time_it(function, count, 1, device, warmup=False)
        runs.setdefault(name, []).append(timing.median)

    naive_name = f"naive: batch {NAIVE_BATCH}, 0 workers"
    names = [f"fsd.compute_stats: batch {b}, {w} workers" for b, w in configs]
    for _ in range(repeats):
        record(naive_name, lambda: results.__setitem__(naive_name, naive_pipeline(folder, segmenter)))
        for (batch_size, workers), name in zip(configs, names):
            record(name, lambda: results.__setitem__(name, fsd.compute_stats(
                str(folder), segmenter=segmenter, batch_size=batch_size, num_workers=workers, progress=False)))
    naive_rate = count / float(np.median(runs[naive_name]))
    for name in [naive_name, *names]:
        timing = common.Timing(tuple(runs[name]), count)
        same = (np.array_equal(results[name].count_sum, results[naive_name].count_sum)
                and np.array_equal(results[name].count_outer_sum, results[naive_name].count_outer_sum))
        print(f"  {name:44s} {timing.describe()}  x{timing.per_second / naive_rate:.2f}"
              f"  statistics identical to naive: {same}")


def load_images(folder: Path, count: int) -> torch.Tensor:
    source = FolderSource(folder)
    batches = iterate_batches(source, list(range(min(count, len(source)))), PAPER_PREPROCESSING, batch_size=64,
                              num_workers=0, skip_bad_images=False, skipped=[])
    return torch.cat([batch.images for batch in batches])


def link_subset(folder: Path, target: Path, count: int) -> None:
    """``target`` holds symbolic links to the first ``count`` images of ``folder``."""
    target.mkdir(parents=True, exist_ok=True)
    for old in target.iterdir():
        old.unlink()
    for i, path in enumerate(FolderSource(folder).paths[:count]):
        (target / f"{i:06d}{Path(path).suffix}").symlink_to(Path(path).resolve())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--images", type=int, default=40, help="images for segmentation and end to end")
    parser.add_argument("--decode-images", type=int, default=200, help="JPEGs for the decode stage")
    parser.add_argument("--batch-sizes", type=parse_ints, default=[1, 4, 10, 32])
    parser.add_argument("--workers", type=parse_ints, default=None, help="default: 0, 1, and the default count")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stages", default="decode,segment,parts,upsample,statistics,end-to-end")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "fsd-bench")
    parser.add_argument("--weights-dir", type=Path, default=None, help="folder holding upp-resnet50-upernet/")
    parser.add_argument("--folder", type=Path, default=None,
                        help="real images for segmentation and end to end (default: synthetic JPEGs)")
    args = parser.parse_args()

    device = common.pick_device(args.device)
    stages = set(args.stages.split(","))
    print(common.machine_description(device))
    print(f"default loader workers here: {default_num_workers()}")
    workers = args.workers or sorted({0, 1, default_num_workers()})
    segmenter = common.build_segmenter(device, weights_dir=args.weights_dir)
    print("weights: " + (str(args.weights_dir) if args.weights_dir else "synthetic random weights (tests/synthetic.py)"))
    if args.folder is not None:
        images = load_images(args.folder, args.images)
    else:
        images = common.synthetic_batch(args.images, seed=1)
    if "decode" in stages:
        folder = common.write_jpeg_folder(args.workdir / f"jpeg-{args.decode_images}", args.decode_images)
        decode_stage(folder, workers, batch_size=32, repeats=args.repeats)
    if "segment" in stages:
        segmentation_stage(segmenter, images, args.batch_sizes, args.repeats)
    if "parts" in stages:
        parts_stage(segmenter, images, args.repeats)
    if "upsample" in stages:
        upsample_stage(segmenter, images, args.repeats)
    if "statistics" in stages:
        statistics_stage(segmenter, images, args.repeats)
    if "end-to-end" in stages:
        if args.folder is not None:
            folder = args.workdir / f"subset-{args.images}"
            link_subset(args.folder, folder, args.images)
        else:
            folder = common.write_jpeg_folder(args.workdir / f"jpeg-{args.images}", args.images, seed=2)
        configs = [(32, default_num_workers())] + ([(32, 0)] if default_num_workers() else [])
        end_to_end(folder, segmenter, configs, args.repeats)
    print(f"\nload average at end: {common.load_average()}")


if __name__ == "__main__":
    main()

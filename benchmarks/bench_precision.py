"""Speed and deviation of every fast mode against the float32 reference.

    python benchmarks/bench_precision.py                            # CPU: float32, bfloat16, two variants
    python benchmarks/bench_precision.py --device cuda --images 512 --set-size 2000
    python benchmarks/bench_precision.py --weights-dir DIR --folders real/ fake/   # the published weights

Modes: the library's ``precision`` values that exist on the device (float32, tf32, bfloat16, float16), and
two float32 variants measured to decide whether to adopt them (channels-last memory format, and
``torch.compile``, opt-in with ``--compile``). For each: images/s of ``segment`` (median of interleaved
repeats), the fraction of pixels whose label equals float32's, and FSD between two image sets computed in
that mode against FSD computed in float32.

Without ``--weights-dir`` the model has random weights, which amplify any rounding about a hundredfold (the
script measures this: the logit change caused by 0.1% input noise), so label agreement and FSD deviation
are then far worse than with the trained network: a numerical sanity check, not the real figures.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import common
import numpy as np
import torch

import fsd
from fsd.frechet import frechet_distance
from fsd.segmenters.base import class_counts
from fsd.segmenters.upp import UPPSegmenter, float32_math, upsample_argmax
from fsd.sources import FolderSource, iterate_batches
from fsd.stats import Stats, StatsMeta

Segment = Callable[[torch.Tensor], torch.Tensor]


def build(device: torch.device, precision: str, weights_dir: Path | None) -> UPPSegmenter:
    return common.build_segmenter(device, precision, weights_dir=weights_dir)


def variant(segmenter: UPPSegmenter, channels_last: bool, compile_model: bool) -> Segment:
    """float32 ``segment`` with the network in channels-last format and/or compiled (benchmark only)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    encoder = segmenter.encoder.to(memory_format=fmt)
    decoder = segmenter.decoder.to(memory_format=fmt)

    def network(x: torch.Tensor) -> torch.Tensor:
        return decoder.forward_object(encoder(x))

    run = torch.compile(network) if compile_model else network

    def segment(images: torch.Tensor) -> torch.Tensor:
        with float32_math(allow_tf32=False), torch.inference_mode():
            x = segmenter.network_input(images).contiguous(memory_format=fmt)
            logits = run(x).float()
            return upsample_argmax(logits, 256, prune_classes=segmenter.device.type == "cpu")

    return segment


def modes(device: torch.device, weights_dir: Path | None, compile_model: bool) -> dict[str, Segment]:
    reference = build(device, "float32", weights_dir)
    found: dict[str, Segment] = {"float32 (default)": reference.segment}
    if device.type == "cuda":
        found["tf32"] = build(device, "tf32", weights_dir).segment
    found["bfloat16"] = build(device, "bfloat16", weights_dir).segment
    if device.type != "cpu":
        found["float16"] = build(device, "float16", weights_dir).segment
    found["float32, channels-last (not adopted)"] = variant(build(device, "float32", weights_dir), True, False)
    if compile_model:
        found["float32, torch.compile (not adopted)"] = variant(build(device, "float32", weights_dir), False, True)
    return found


def segment_all(segment: Segment, images: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    return torch.cat([segment(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)])


def stats_of(labels: torch.Tensor, num_classes: int) -> Stats:
    meta = StatsMeta(tuple(str(i) for i in range(num_classes)), "bench", "bench", "bench", fsd.__version__)
    stats = Stats(meta, pixels_per_image=labels.shape[-1] * labels.shape[-2])
    stats.update(class_counts(labels, num_classes).numpy())
    return stats


def load_folder(folder: Path, count: int) -> torch.Tensor:
    source = FolderSource(folder)
    batches = iterate_batches(source, list(range(min(count, len(source)))), UPPSegmenter.preprocessing,
                              batch_size=64, num_workers=0, skip_bad_images=False, skipped=[])
    return torch.cat([batch.images for batch in batches])


def sensitivity(segmenter: UPPSegmenter, images: torch.Tensor) -> tuple[float, float]:
    """Relative logit change from 0.1% input noise in float32, and from bfloat16 autocast."""
    x = segmenter.network_input(images.to(segmenter.device))
    with torch.inference_mode():
        reference = segmenter.decoder.forward_object(segmenter.encoder(x)).float()
        noisy_input = x + 1e-3 * x.std() * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(x)
        noisy = segmenter.decoder.forward_object(segmenter.encoder(noisy_input)).float()
        with torch.autocast(segmenter.device.type, dtype=torch.bfloat16):
            low = segmenter.decoder.forward_object(segmenter.encoder(x)).float()
    norm = float(reference.norm())
    return float((noisy - reference).norm()) / norm, float((low - reference).norm()) / norm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None)
    parser.add_argument("--images", type=int, default=16, help="images timed per mode and repeat")
    parser.add_argument("--set-size", type=int, default=48, help="images per set for the FSD comparison")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--weights-dir", type=Path, default=None, help="folder holding upp-resnet50-upernet/")
    parser.add_argument("--folders", type=Path, nargs=2, default=None, help="two image folders for FSD")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (minutes to compile)")
    args = parser.parse_args()

    device = common.pick_device(args.device)
    print(common.machine_description(device))
    print("weights: " + (str(args.weights_dir) if args.weights_dir else "synthetic random weights (tests/synthetic.py)"))
    found = modes(device, args.weights_dir, args.compile)

    timed = common.synthetic_batch(args.images, seed=1)
    seconds: dict[str, list[float]] = {name: [] for name in found}
    warmup: dict[str, float] = {}
    for name, segment in found.items():  # warm-up (and compilation)
        warmup[name] = common.time_it(lambda: segment(timed[: args.batch_size].to(device)), 1, 1, device,
                                      warmup=False).median
    for _ in range(args.repeats):
        for name, segment in found.items():
            timing = common.time_it(lambda: segment_all(segment, timed, args.batch_size, device), len(timed), 1,
                                    device, warmup=False)
            seconds[name].append(timing.median)

    if args.folders:
        sets = [load_folder(folder, args.set_size) for folder in args.folders]
        described = f"{args.folders[0]} vs {args.folders[1]}"
    else:
        # Two different synthetic distributions: photo-like images, and the same darkened and shifted.
        first = common.synthetic_batch(args.set_size, seed=2)
        second = (common.synthetic_batch(args.set_size, seed=3).float() * 0.6 + 30).to(torch.uint8)
        sets = [first, second]
        described = f"{args.set_size} photo-like vs {args.set_size} darkened photo-like synthetic images"
    labels = {name: [segment_all(segment, s, args.batch_size, device) for s in sets] for name, segment in found.items()}
    num_classes = 336
    reference_name = next(iter(found))
    reference_stats = [stats_of(lab, num_classes) for lab in labels[reference_name]]
    reference_fsd = frechet_distance(reference_stats[0].mu, reference_stats[0].sigma,
                                     reference_stats[1].mu, reference_stats[1].sigma).value
    reference_rate = len(timed) / float(np.median(seconds[reference_name]))

    print(f"\nbatch {args.batch_size}, {len(timed)} images per timing, median of {args.repeats} interleaved repeats")
    print(f"FSD sets: {described}; float32 FSD = {reference_fsd:.3f}\n")
    print(f"{'mode':38s} {'img/s':>8s} {'speed-up':>9s} {'same labels':>12s} {'FSD':>9s} {'FSD - fp32':>11s}"
          f" {'FSD(fp32 stats, mode stats) same set':>37s} {'first call s':>13s}")
    for name in found:
        rate = len(timed) / float(np.median(seconds[name]))
        same = float(np.mean([common.identical_fraction(a, b) for a, b in zip(labels[name], labels[reference_name])]))
        mode_stats = [stats_of(lab, num_classes) for lab in labels[name]]
        value = frechet_distance(mode_stats[0].mu, mode_stats[0].sigma, mode_stats[1].mu, mode_stats[1].sigma).value
        self_distance = frechet_distance(reference_stats[0].mu, reference_stats[0].sigma,
                                         mode_stats[0].mu, mode_stats[0].sigma).value
        print(f"{name:38s} {rate:8.2f} {rate / reference_rate:8.2f}x {100 * same:11.3f}% {value:9.3f}"
              f" {value - reference_fsd:+11.4f} {self_distance:37.4f} {warmup[name]:13.1f}")

    reference_segmenter = build(device, "float32", args.weights_dir)
    noise, bfloat16 = sensitivity(reference_segmenter, timed[:4])
    print(f"\nrelative logit change: 0.1% input noise in float32 {noise:.3f}; bfloat16 autocast {bfloat16:.3f}")
    print(f"load average at end: {common.load_average()}")


if __name__ == "__main__":
    main()

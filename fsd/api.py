"""compute(), compute_stats() and friends: the one path every entry point takes.

source -> batches of uint8 images (sources.py) -> segmenter labels -> per-image class pixel counts
-> exact statistics (stats.py) -> Fréchet distance (frechet.py).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from . import __version__
from .errors import InputError
from .frechet import FrechetDistance, frechet_distance
from .segmenters.base import Segmenter, class_counts
from .sources import (
    Batch,
    MapSource,
    default_num_workers,
    iterate_batches,
    open_source,
    select_indices,
)
from .stats import Stats, StatsMeta

@dataclass(frozen=True)
class RunOptions:
    """How to run a segmenter over a source. Every public function takes these as keyword arguments."""

    device: str | torch.device | None = None
    batch_size: int = 32
    num_workers: int | None = None
    num_samples: int | None = None
    seed: int = 1
    weights_dir: str | os.PathLike | None = None
    progress: bool = True
    skip_bad_images: bool = False


@dataclass(frozen=True)
class FSDResult:
    """The score, its two terms, and the statistics of each side."""

    fsd: float
    mean_term: float
    covariance_term: float
    real: Stats
    fake: Stats

    def to_dict(self) -> dict:
        return {
            "fsd": self.fsd,
            "mean_term": self.mean_term,
            "covariance_term": self.covariance_term,
            "real": {"n": self.real.n, "source": self.real.meta.source},
            "fake": {"n": self.fake.n, "source": self.fake.meta.source},
            "segmenter": self.real.meta.segmenter,
            "weights": self.real.meta.weights,
        }

    def __float__(self) -> float:
        return self.fsd


@dataclass(frozen=True)
class PerImage:
    """Per-image class pixel percentages (N, C) float64, with each row's image identity."""

    percentages: np.ndarray
    ids: list[str]
    class_names: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = field(default=())


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def load_segmenter(
    segmenter: Segmenter | str | None = None,
    *,
    device: str | torch.device | None = None,
    weights_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Segmenter:
    """The paper's UPP segmenter (``None`` or ``"upp"``), or a user's object following the protocol."""
    if segmenter is None or segmenter == "upp":
        from .segmenters.upp import UPPSegmenter

        return UPPSegmenter.from_pretrained(weights_dir=weights_dir, device=device, progress=progress)
    if isinstance(segmenter, str):
        raise InputError(f"unknown segmenter {segmenter!r}; use 'upp' or pass a Segmenter object")
    missing = [a for a in ("class_names", "name", "weights_id", "preprocessing", "segment") if not hasattr(segmenter, a)]
    if missing:
        raise InputError(f"segmenter {segmenter!r} lacks {', '.join(missing)} (see fsd.segmenters.base.Segmenter)")
    return segmenter


def _meta_for(segmenter: Segmenter, source_description: str) -> StatsMeta:
    return StatsMeta(
        class_names=tuple(segmenter.class_names),
        segmenter=segmenter.name,
        weights=segmenter.weights_id,
        preprocessing=segmenter.preprocessing.describe(),
        version=__version__,
        source=source_description,
    )


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=not enabled, leave=False)


def _segment_counts(
    source: MapSource, segmenter: Segmenter, options: RunOptions, skipped: list[tuple[str, str]]
) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Per-image class pixel counts (B, C) int64 of the chosen images, batch by batch."""
    indices = select_indices(len(source), options.num_samples, options.seed)
    num_workers = default_num_workers() if options.num_workers is None else options.num_workers
    device = segmenter.device
    with _progress_bar(len(indices), source.description or "images", options.progress) as bar:
        for batch in iterate_batches(
            source,
            indices,
            segmenter.preprocessing,
            batch_size=options.batch_size,
            num_workers=num_workers,
            skip_bad_images=options.skip_bad_images,
            skipped=skipped,
            pin_memory=device.type == "cuda",
        ):
            labels = _segment(segmenter, batch, device)
            yield class_counts(labels, len(segmenter.class_names)).cpu().numpy(), batch.ids
            bar.update(len(batch.ids))
        bar.update(len(indices) - bar.n)


def _segment(segmenter: Segmenter, batch: Batch, device: torch.device) -> torch.Tensor:
    images = batch.images.to(device, non_blocking=True)
    try:
        return segmenter.segment(images)
    except InputError as exc:
        for k, ident in enumerate(batch.ids):  # name the image at fault
            try:
                segmenter.segment(images[k : k + 1])
            except InputError as single:
                raise InputError(f"{ident}: {single}") from exc
        raise


def _resolve(source, segmenter: Segmenter | None, options: RunOptions):
    opened = open_source(source)
    if isinstance(opened, Stats):
        return opened, segmenter
    if segmenter is None or isinstance(segmenter, str):
        segmenter = load_segmenter(segmenter, device=options.device, weights_dir=options.weights_dir,
                                   progress=options.progress)
    return opened, segmenter


def _stats_of(source: MapSource, segmenter: Segmenter, options: RunOptions) -> Stats:
    h = w = segmenter.preprocessing.size
    stats = Stats(_meta_for(segmenter, source.description), pixels_per_image=h * w)
    skipped: list[tuple[str, str]] = []
    for counts, _ in _segment_counts(source, segmenter, options, skipped):
        stats.update(counts)
    stats.skipped = tuple(skipped)
    if skipped:
        listing = "\n".join(f"  {ident}: {reason}" for ident, reason in skipped)
        warnings.warn(f"skipped {len(skipped)} unreadable image(s) in {source.description}:\n{listing}",
                      stacklevel=3)
    if stats.n == 0:
        raise InputError(f"no readable images in {source.description}")
    return stats


def compute_stats(
    source,
    *,
    segmenter: Segmenter | str | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    num_samples: int | None = None,
    seed: int = 1,
    weights_dir: str | os.PathLike | None = None,
    progress: bool = True,
    skip_bad_images: bool = False,
) -> Stats:
    """Statistics of one source: a folder of images, a saved ``.npz`` (returned as loaded), a source.

    ``num_samples`` picks a subset by the paper's rule (``random.Random(seed).shuffle``); asking for
    more images than exist is an error.
    """
    options = RunOptions(device, batch_size, num_workers, num_samples, seed, weights_dir, progress, skip_bad_images)
    opened, segmenter = _resolve(source, segmenter, options)
    if isinstance(opened, Stats):
        return opened
    return _stats_of(opened, segmenter, options)


def compute(
    real,
    fake,
    *,
    segmenter: Segmenter | str | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    num_samples: int | None = None,
    seed: int = 1,
    weights_dir: str | os.PathLike | None = None,
    progress: bool = True,
    skip_bad_images: bool = False,
) -> FSDResult:
    """FSD between two sources (folders, saved ``.npz`` statistics, `Stats`, or sources).

    >>> result = fsd.compute("real_images/", "generated/")  # doctest: +SKIP
    >>> result.fsd, result.mean_term, result.covariance_term  # doctest: +SKIP
    """
    options = RunOptions(device, batch_size, num_workers, num_samples, seed, weights_dir, progress, skip_bad_images)
    opened_real, segmenter = _resolve(real, segmenter, options)
    opened_fake, segmenter = _resolve(fake, segmenter, options)
    sides = []
    for opened in (opened_real, opened_fake):
        sides.append(opened if isinstance(opened, Stats) else _stats_of(opened, segmenter, options))
    return distance(*sides)


def distance(real: Stats, fake: Stats) -> FSDResult:
    """FSD between two sets of statistics, after checking they were made the same way."""
    real.meta.check_comparable(fake.meta)
    for name, stats in (("real", real), ("fake", fake)):
        observed = stats.observed_classes()
        if stats.n <= observed:
            warnings.warn(
                f"the {name} set has {stats.n} images but {observed} classes occur: its covariance is "
                "rank-deficient and FSD is a noisy estimate; use more images (the paper uses 10,000)",
                stacklevel=3,
            )
    d: FrechetDistance = frechet_distance(real.mu, real.sigma, fake.mu, fake.sigma)
    return FSDResult(d.value, d.mean_term, d.covariance_term, real, fake)


def class_percentages_of(
    source,
    *,
    segmenter: Segmenter | str | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    num_samples: int | None = None,
    seed: int = 1,
    weights_dir: str | os.PathLike | None = None,
    progress: bool = True,
    skip_bad_images: bool = False,
) -> PerImage:
    """Per-image class pixel percentages of a source, rows in the order the images were chosen."""
    options = RunOptions(device, batch_size, num_workers, num_samples, seed, weights_dir, progress, skip_bad_images)
    opened, segmenter = _resolve(source, segmenter, options)
    if isinstance(opened, Stats):
        raise InputError("saved statistics hold no per-image values; pass the images themselves")
    size = segmenter.preprocessing.size
    rows, ids, skipped = [], [], []
    for counts, batch_ids in _segment_counts(opened, segmenter, options, skipped):
        rows.append(counts)
        ids.extend(batch_ids)
    counts = np.concatenate(rows) if rows else np.zeros((0, len(segmenter.class_names)), np.int64)
    return PerImage(counts * (100.0 / (size * size)), ids, tuple(segmenter.class_names), tuple(skipped))

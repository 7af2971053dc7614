"""compute(), compute_stats() and friends: the one path every entry point takes.

source -> batches of uint8 images (sources.py, or generators.py for a generator) -> segmenter labels
-> per-image class pixel counts -> exact statistics (stats.py) -> Fréchet distance (frechet.py).

A source is a folder or any other kind `fsd.sources.open_source` reads, saved ``.npz`` statistics, a
`Stats`, a `fsd.generators.GeneratorSource`, or a published baseline name (``"lsun_church"``,
``"lsun_bedroom"``; an existing path of that name wins, see `fsd.baselines`).

Under ``torch.distributed`` (``torchrun``, or a training loop that initialized the default group),
`compute` and `compute_stats` shard every source across the ranks and all-reduce the exact integer sums,
so every rank gets the single-process result, bit for bit (see `fsd.distributed`). Call them on every rank,
or pass ``distributed=False`` on a rank that computes alone.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from . import __version__
from .baselines import baseline_name, load_baseline
from .distributed import SINGLE, World, current_world, local_device, reduce_stats, run_on_all_ranks
from .errors import InputError
from .frechet import FrechetDistance, frechet_distance
from .generators import DEFAULT_VALUE_RANGE, GeneratorSource, ValueRange, ZSampler, as_generator_source
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
    distributed: bool | None = None
    checkpoint: str | os.PathLike | None = None
    checkpoint_every: int = 1000


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


def load_segmenter(
    segmenter: Segmenter | str | None = None,
    *,
    device: str | torch.device | None = None,
    weights_dir: str | os.PathLike | None = None,
    progress: bool = True,
    precision: str = "float32",
) -> Segmenter:
    """The paper's UPP segmenter (``None`` or ``"upp"``), or a user's object following the protocol.

    ``precision``: ``"float32"`` (default, the paper's labels), or the opt-in speed modes ``"tf32"``,
    ``"bfloat16"``, ``"float16"`` (see `fsd.segmenters.upp`; their statistics are marked and never
    compared with float32 ones). Pass the result as ``segmenter=`` to `compute`.
    """
    if segmenter is None or segmenter == "upp":
        from .segmenters.upp import UPPSegmenter

        return UPPSegmenter.from_pretrained(weights_dir=weights_dir, device=device, progress=progress,
                                            precision=precision)
    if precision != "float32":
        raise InputError("precision= applies to the UPP segmenter only")
    if isinstance(segmenter, str):
        raise InputError(f"unknown segmenter {segmenter!r}; use 'upp' or pass a Segmenter object")
    missing = [a for a in ("class_names", "name", "weights_id", "preprocessing", "device", "segment")
               if not hasattr(segmenter, a)]
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


# -- sources ---------------------------------------------------------------------------------------------
Opened = MapSource | GeneratorSource | Stats


def _open(source, options: RunOptions) -> Opened:
    """Any accepted source -> a `MapSource`, a `GeneratorSource`, or `Stats`."""
    if isinstance(source, GeneratorSource):
        return source
    name = baseline_name(source)
    if name is not None:
        return load_baseline(name, weights_dir=options.weights_dir, progress=options.progress)
    if isinstance(source, torch.nn.Module):
        raise InputError(
            f"got a {type(source).__name__} module as a source: to sample a generator pass generator=G (with "
            "z_dim= and num_samples=) or wrap it in fsd.GeneratorSource"
        )
    return open_source(source)


def _generator_side(
    source,
    generator: Callable[..., object] | GeneratorSource | None,
    z_dim: int | None,
    z_sampler: ZSampler | None,
    value_range: ValueRange,
    output_hook: Callable[[object], torch.Tensor] | None,
    argument: str,
):
    """``source``, or the `GeneratorSource` that ``generator=`` and its options describe."""
    if generator is None:
        given = [n for n, v in (("z_dim", z_dim), ("z_sampler", z_sampler), ("output_hook", output_hook))
                 if v is not None]
        if value_range != DEFAULT_VALUE_RANGE:
            given.append("value_range")
        if given:
            raise InputError(f"{', '.join(given)} apply to generator=; pass the generator too")
        if source is None:
            raise InputError(f"no {argument} given: pass {argument} (a folder, a .npz file, ...) or generator=")
        return source
    if source is not None:
        raise InputError(f"pass {argument} or generator=, not both")
    return as_generator_source(generator, z_dim=z_dim, z_sampler=z_sampler, value_range=value_range,
                               output_hook=output_hook)


def _run_segmenter(segmenter: Segmenter | str | None, options: RunOptions, world: World) -> Segmenter:
    device = local_device(options.device, world)
    return load_segmenter(segmenter, device=device, weights_dir=options.weights_dir,
                          progress=options.progress and world.is_main)


def _open_all(sources: list, segmenter: Segmenter | str | None, options: RunOptions,
              world: World) -> tuple[list[Opened], Segmenter | None]:
    """Open every source, and load the segmenter if one of them has images. Runs as one step on all ranks."""

    def step():
        opened = [_open(s, options) for s in sources]
        needs_segmenter = any(not isinstance(o, Stats) for o in opened)
        seg = _run_segmenter(segmenter, options, world) if needs_segmenter else None
        return opened, seg

    return run_on_all_ranks(world, step)


# -- segmenting ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Plan:
    """Which images of a source this rank segments, in order."""

    source: MapSource | GeneratorSource
    indices: list[int]
    description: str
    seed: int

    def identities(self) -> list[str]:
        if isinstance(self.source, GeneratorSource):
            return [f"generator[{k}]" for k in self.indices]
        return [self.source.identity(i) for i in self.indices]


def _plan(source: MapSource | GeneratorSource, options: RunOptions, world: World) -> _Plan:
    if isinstance(source, GeneratorSource):
        count = source.sample_count(options.num_samples)
        seed = source.sample_seed(options.seed)
        return _Plan(source, world.shard(range(count)), source.description(count, seed), seed)
    chosen = select_indices(len(source), options.num_samples, options.seed)
    return _Plan(source, world.shard(chosen), source.description, options.seed)


def _batches(plan: _Plan, indices: list[int], segmenter: Segmenter, options: RunOptions,
             skipped: list[tuple[str, str]]) -> Iterator[Batch]:
    """Preprocessed batches of ``plan.source[indices]``."""
    if isinstance(plan.source, GeneratorSource):
        return plan.source.batches(indices, segmenter.preprocessing, batch_size=options.batch_size, seed=plan.seed)
    num_workers = default_num_workers() if options.num_workers is None else options.num_workers
    return iterate_batches(
        plan.source,
        indices,
        segmenter.preprocessing,
        batch_size=options.batch_size,
        num_workers=num_workers,
        skip_bad_images=options.skip_bad_images,
        skipped=skipped,
        pin_memory=segmenter.device.type == "cuda",
    )


def _segment_counts(
    plan: _Plan, segmenter: Segmenter, options: RunOptions, world: World, skipped: list[tuple[str, str]],
    start: int = 0,
) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Per-image class pixel counts (B, C) int64 of ``plan.indices[start:]``, batch by batch."""
    device = segmenter.device
    total = len(plan.indices)
    with _progress_bar(total, plan.description or "images", options.progress and world.is_main) as bar:
        bar.update(start)
        for batch in _batches(plan, plan.indices[start:], segmenter, options, skipped):
            labels = _segment(segmenter, batch, device)
            yield class_counts(labels, len(segmenter.class_names)).cpu().numpy(), batch.ids
            bar.update(len(batch.ids))
        bar.update(total - bar.n)


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


class _Checkpoint:
    """Partial statistics of a long run, saved atomically every ``every`` images, for resuming.

    The file holds the exact integer sums so far, how many of the chosen images were consumed, the
    images skipped so far, and a fingerprint of the run (segmenter, preprocessing, the chosen images'
    identities in order, the skip setting): a checkpoint of a different run is refused, never mixed in.
    """

    def __init__(self, path: str | os.PathLike, plan: _Plan, meta: StatsMeta, options: RunOptions,
                 every: int):
        import hashlib
        import json

        self.path, self.every = os.fspath(path), every
        digest = hashlib.sha256()
        digest.update(json.dumps([meta.segmenter, meta.weights, meta.preprocessing, list(meta.class_names),
                                  options.skip_bad_images]).encode())
        for identity in plan.identities():
            digest.update(identity.encode("utf-8", "surrogateescape") + b"\0")
        self.fingerprint = digest.hexdigest()

    def load(self, stats: Stats) -> tuple[int, list[tuple[str, str]]]:
        """Restore into the empty ``stats``; returns (images consumed, images skipped)."""
        if not os.path.exists(self.path):
            return 0, []
        extra = Stats.read_extra(self.path)
        if extra.get("fingerprint") != self.fingerprint:
            raise InputError(
                f"checkpoint {self.path} belongs to a different run (other images, subset, segmenter or "
                "options); delete it to start over, or rerun with the options it was made with"
            )
        saved = Stats.load(self.path)
        stats.merge(saved)
        consumed = int(extra["consumed"])
        warnings.warn(f"resuming from checkpoint {self.path}: {consumed} images already done", stacklevel=4)
        return consumed, list(saved.skipped)

    def save(self, stats: Stats, consumed: int, skipped: list[tuple[str, str]]) -> None:
        stats.skipped = tuple(skipped)
        stats.save(self.path, extra={"fingerprint": self.fingerprint, "consumed": str(consumed)})

    def remove(self) -> None:
        if os.path.exists(self.path):
            os.remove(self.path)


def _stats_of(source: MapSource | GeneratorSource, segmenter: Segmenter, options: RunOptions,
              world: World) -> Stats:
    """Statistics of the whole source: each rank segments its share, the sums are all-reduced."""
    h = w = segmenter.preprocessing.size
    skipped: list[tuple[str, str]] = []

    def local() -> Stats:
        plan = _plan(source, options, world)
        stats = Stats(_meta_for(segmenter, plan.description), pixels_per_image=h * w)
        checkpoint, start = None, 0
        if options.checkpoint is not None:
            if world.size > 1:
                raise InputError("checkpoint= (resuming) works in a single process, not under torch.distributed")
            checkpoint = _Checkpoint(options.checkpoint, plan, stats.meta, options, options.checkpoint_every)
            start, restored = checkpoint.load(stats)
            skipped.extend(restored)
        consumed, last_saved = start, start
        for batch_counts, _ in _segment_counts(plan, segmenter, options, world, skipped, start):
            stats.update(batch_counts)
            consumed = stats.n + len(skipped)  # images done so far, restored ones included
            if checkpoint is not None and consumed - last_saved >= checkpoint.every:
                checkpoint.save(stats, consumed, skipped)
                last_saved = consumed
        stats.skipped = tuple(skipped)
        if checkpoint is not None:
            checkpoint.remove()
        return stats

    stats = reduce_stats(run_on_all_ranks(world, local), world)
    if stats.skipped and world.is_main:
        listing = "\n".join(f"  {ident}: {reason}" for ident, reason in stats.skipped)
        warnings.warn(f"skipped {len(stats.skipped)} unreadable image(s) in {stats.meta.source}:\n{listing}",
                      stacklevel=3)
    if stats.n == 0:
        raise InputError(f"no readable images in {stats.meta.source}")
    return stats


# -- the public functions --------------------------------------------------------------------------------
def compute_stats(
    source=None,
    *,
    generator: Callable[..., object] | GeneratorSource | None = None,
    z_dim: int | None = None,
    z_sampler: ZSampler | None = None,
    value_range: ValueRange = DEFAULT_VALUE_RANGE,
    output_hook: Callable[[object], torch.Tensor] | None = None,
    segmenter: Segmenter | str | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    num_samples: int | None = None,
    seed: int = 1,
    weights_dir: str | os.PathLike | None = None,
    progress: bool = True,
    skip_bad_images: bool = False,
    distributed: bool | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1000,
) -> Stats:
    """Statistics of one source: a folder of images, a saved ``.npz`` or baseline name (returned as
    loaded), a `GeneratorSource`, or ``generator=G`` (see `fsd.generators` for ``z_dim``, ``z_sampler``,
    ``value_range`` and ``output_hook``).

    ``num_samples`` picks a subset of a file source by the paper's rule (``random.Random(seed).shuffle``;
    asking for more images than exist is an error), or is the number of samples of a generator, whose
    latents are seeded by ``seed``. ``distributed``: see `fsd.distributed.current_world`.

    ``checkpoint``: a file where the exact partial sums are saved (atomically) every
    ``checkpoint_every`` images. If the run is interrupted, the same call resumes from it; it is removed
    when the run completes. A checkpoint of a different run (other images, subset, segmenter or options)
    is refused with an error, never mixed in. Single process only.

    >>> stats = fsd.compute_stats(generator=G, z_dim=512, num_samples=10_000)  # doctest: +SKIP
    """
    if checkpoint_every < 1:
        raise InputError(f"checkpoint_every must be at least 1, got {checkpoint_every}")
    options = RunOptions(device, batch_size, num_workers, num_samples, seed, weights_dir, progress,
                         skip_bad_images, distributed, checkpoint, checkpoint_every)
    source = _generator_side(source, generator, z_dim, z_sampler, value_range, output_hook, "source")
    world = current_world(distributed)
    (opened,), seg = _open_all([source], segmenter, options, world)
    if isinstance(opened, Stats):
        return opened
    return _stats_of(opened, seg, options, world)


def compute(
    real,
    fake=None,
    *,
    generator: Callable[..., object] | GeneratorSource | None = None,
    z_dim: int | None = None,
    z_sampler: ZSampler | None = None,
    value_range: ValueRange = DEFAULT_VALUE_RANGE,
    output_hook: Callable[[object], torch.Tensor] | None = None,
    segmenter: Segmenter | str | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    num_samples: int | None = None,
    seed: int = 1,
    weights_dir: str | os.PathLike | None = None,
    progress: bool = True,
    skip_bad_images: bool = False,
    distributed: bool | None = None,
) -> FSDResult:
    """FSD between two sources (folders, saved ``.npz`` statistics, `Stats`, baseline names, generators).

    The fake side is ``fake`` or ``generator=G`` (sampled ``num_samples`` times; see `fsd.generators`).
    ``num_samples`` picks the paper's random subset of each file source; when the fake side is a
    generator it is the generator's sample count only, and the real side is used whole, exactly as
    comparing ``real`` with a folder of the generator's samples (subset the real side with
    ``compute_stats(real, num_samples=...)`` and pass the `Stats`).

    >>> result = fsd.compute("real_images/", "generated/")  # doctest: +SKIP
    >>> result.fsd, result.mean_term, result.covariance_term  # doctest: +SKIP
    >>> fsd.compute("lsun_church", generator=G, z_dim=512, num_samples=10_000)  # doctest: +SKIP
    """
    options = RunOptions(device, batch_size, num_workers, num_samples, seed, weights_dir, progress,
                         skip_bad_images, distributed)
    fake = _generator_side(fake, generator, z_dim, z_sampler, value_range, output_hook, "fake")
    world = current_world(distributed)
    opened, seg = _open_all([real, fake], segmenter, options, world)
    real_options = replace(options, num_samples=None) if isinstance(opened[1], GeneratorSource) else options
    sides = [o if isinstance(o, Stats) else _stats_of(o, seg, side_options, world)
             for o, side_options in zip(opened, (real_options, options))]
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
    """Per-image class pixel percentages of a source (a `GeneratorSource` too), rows in the order the images
    were chosen. It runs in this process alone, also under ``torch.distributed``."""
    options = RunOptions(device, batch_size, num_workers, num_samples, seed, weights_dir, progress,
                         skip_bad_images, distributed=False)
    (opened,), segmenter = _open_all([source], segmenter, options, SINGLE)
    if isinstance(opened, Stats):
        raise InputError("saved statistics hold no per-image values; pass the images themselves")
    size = segmenter.preprocessing.size
    rows, ids, skipped = [], [], []
    for counts, batch_ids in _segment_counts(_plan(opened, options, SINGLE), segmenter, options, SINGLE, skipped):
        rows.append(counts)
        ids.extend(batch_ids)
    counts = np.concatenate(rows) if rows else np.zeros((0, len(segmenter.class_names)), np.int64)
    return PerImage(counts * (100.0 / (size * size)), ids, tuple(segmenter.class_names), tuple(skipped))

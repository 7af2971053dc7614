"""compute(), compute_stats() and friends: the one path every entry point takes.

source -> batches of uint8 images (fsd/sources/, or generators.py for a generator) -> segmenter labels
-> per-image class pixel counts -> exact statistics (stats.py) -> Fréchet distance (frechet.py).

A source is a folder or any other kind `fsd.sources.open_source` reads, saved ``.npz`` statistics, a
`Stats`, a `fsd.generators.GeneratorSource`, or a published baseline name (``"lsun_church"``,
``"lsun_bedroom"``; an existing path of that name wins, see `fsd.baselines`).

Under ``torch.distributed`` (``torchrun``, or a training loop that initialized the default group),
`compute` and `compute_stats` shard every source across the ranks and all-reduce the exact integer sums,
so every rank gets the single-process result, bit for bit at equal CPU thread counts (see
`fsd.distributed`). Call them on every rank, or pass ``distributed=False`` on a rank that computes alone.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from . import __version__, shards
from ._text import plural, warn
from .baselines import baseline_name, load_baseline
from .devices import describe_run, resolve_device
from .distributed import SINGLE, World, current_world, local_device, reduce_stats, run_on_all_ranks
from .errors import InputError
from .frechet import FrechetDistance
from .generators import DEFAULT_VALUE_RANGE, GeneratorSource, ValueRange, ZSampler, as_generator_source
from .report import ClassReport, VerdictRule, class_report
from .segmenters.base import Segmenter, class_counts
from .sources import (
    Batch,
    MapSource,
    default_num_workers,
    iterate_batches,
    open_source,
    select_indices,
)
from .stats import NO_ROWS_ON_PURPOSE, RECOMPUTE_HINT, ShardInfo, Stats, StatsMeta, merge_environments
from .uncertainty import (
    DEFAULT_LEVEL,
    DEFAULT_METHOD,
    DEFAULT_SAMPLES,
    DEFAULT_SEED,
    BootstrapSettings,
    Extrapolation,
    extrapolate,
    inf_interval,
    interval,
    replicates,
    small_sample_note,
    stats_distance,
)


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
    keep_rows: bool = True
    shard: tuple[int, int] | None = None


Interval = tuple[float, float]


@dataclass(frozen=True)
class FSDResult:
    """The score, its two terms, the statistics of each side, and how sure the score is.

    ``fsd_ci``, ``mean_term_ci``, ``covariance_term_ci``: ``(low, high)`` bootstrap intervals at
    ``ci_level`` for the population values (see `fsd.uncertainty`), ``None`` without per-image rows or
    with ``bootstrap=0``; ``bootstrap`` says how they were made; ``ci_note`` says why there is no
    interval, or why it means little ("" otherwise). ``fsd_inf``, ``fsd_inf_se``: the bias-corrected FSD
    and the standard error of its least-squares fit, when asked for (``fsd_inf=True``); ``fsd_inf_ci``: its
    interval, from that error and the bootstrap spread of FSD together (the fit's error alone understates
    the uncertainty: see `fsd.uncertainty.inf_interval`), when there are bootstrap replicates.
    """

    fsd: float
    mean_term: float
    covariance_term: float
    real: Stats
    fake: Stats
    fsd_ci: Interval | None = None
    mean_term_ci: Interval | None = None
    covariance_term_ci: Interval | None = None
    ci_level: float | None = None
    bootstrap: BootstrapSettings | None = None
    ci_note: str = ""
    fsd_inf: float | None = None
    fsd_inf_se: float | None = None
    fsd_inf_ci: Interval | None = None
    extrapolation: Extrapolation | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        def pair(ci: Interval | None) -> list[float] | None:
            return None if ci is None else [ci[0], ci[1]]

        out = {
            "fsd": self.fsd,
            "mean_term": self.mean_term,
            "covariance_term": self.covariance_term,
            "fsd_ci": pair(self.fsd_ci),
            "mean_term_ci": pair(self.mean_term_ci),
            "covariance_term_ci": pair(self.covariance_term_ci),
            "ci_level": self.ci_level,
            "bootstrap": None if self.bootstrap is None else self.bootstrap.to_dict(),
            "ci_note": self.ci_note or None,
            "real": {"n": self.real.n, "source": self.real.meta.source, "rows": self.real.has_rows,
                     "environment": list(self.real.environment)},
            "fake": {"n": self.fake.n, "source": self.fake.meta.source, "rows": self.fake.has_rows,
                     "environment": list(self.fake.environment)},
            "segmenter": self.real.meta.segmenter,
            "weights": self.real.meta.weights,
        }
        if self.extrapolation is not None:
            out["fsd_inf"] = self.fsd_inf
            out["fsd_inf_se"] = self.fsd_inf_se
            out["fsd_inf_ci"] = pair(self.fsd_inf_ci)
            out["fsd_inf_points"] = self.extrapolation.to_dict()["points"]
        return out

    def summary(self) -> str:
        """One line: ``FSD: 28.4100  (95% CI 27.3000 to 29.6200; mean term 6.0200, covariance term 22.3900)``."""
        if self.fsd_ci is not None:
            interval = f"{self.ci_level * 100:g}% CI {self.fsd_ci[0]:.4f} to {self.fsd_ci[1]:.4f}"
            if self.fsd > self.fsd_ci[1]:  # the interval is for the population value; the estimate is biased up
                interval += (", below the estimate: the interval is for the population value, and FSD from "
                             f"{min(self.real.n, self.fake.n):,} images is biased upward")
            if self.ci_note:
                interval += f", {self.ci_note}"
            interval += "; "
        elif self.ci_note:
            interval = f"{self.ci_note}; "
        else:
            interval = ""
        line = (f"FSD: {self.fsd:.4f}  ({interval}mean term {self.mean_term:.4f}, "
                f"covariance term {self.covariance_term:.4f})")
        if self.fsd_inf is not None:
            spread = (f"{self.ci_level * 100:g}% CI {self.fsd_inf_ci[0]:.4f} to {self.fsd_inf_ci[1]:.4f}; "
                      if self.fsd_inf_ci is not None else "")
            line += (f"\nFSD_inf: {self.fsd_inf:.4f}  ({spread}fit standard error {self.fsd_inf_se:.4f}; FSD "
                     "extrapolated to infinitely many images)")
        return line

    def __float__(self) -> float:
        return self.fsd


@dataclass(frozen=True)
class PerImage:
    """Per-image class pixel percentages (N, C) float64, with each row's image identity.

    ``np.asarray(per_image)`` is the (N, C) percentages; ``len(per_image)`` is N.
    """

    percentages: np.ndarray
    ids: list[str]
    class_names: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = field(default=())

    def __array__(self, dtype=None, copy=None):
        array = self.percentages if dtype is None else self.percentages.astype(dtype, copy=False)
        return array.copy() if copy else array

    def __len__(self) -> int:
        return len(self.percentages)


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

        return UPPSegmenter.from_pretrained(weights_dir=weights_dir, device=resolve_device(device),
                                            progress=progress, precision=precision)
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
    prompts=None,
    pipeline_kwargs=None,
):
    """``source``, or the `GeneratorSource` that ``generator=`` and its options describe."""
    if generator is None:
        given = [n for n, v in (("z_dim", z_dim), ("z_sampler", z_sampler), ("output_hook", output_hook),
                                ("prompts", prompts), ("pipeline_kwargs", pipeline_kwargs)) if v is not None]
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
                               output_hook=output_hook, prompts=prompts, pipeline_kwargs=pipeline_kwargs)


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
    shard: ShardInfo | None = None

    def identities(self) -> list[str]:
        if isinstance(self.source, GeneratorSource):
            return [f"generator[{k}]" for k in self.indices]
        return [self.source.identity(i) for i in self.indices]


def _plan(source: MapSource | GeneratorSource, options: RunOptions, world: World) -> _Plan:
    """The chosen images (the subset rule, then this shard of them, then this rank's share)."""
    if isinstance(source, GeneratorSource):
        count = source.sample_count(options.num_samples)
        seed = source.sample_seed(options.seed)
        chosen, description = list(range(count)), source.description(count, seed)
        identities = lambda: ()  # noqa: E731  (a generator's description names its samples: count and seed)
    else:
        chosen = select_indices(len(source), options.num_samples, options.seed)
        description, seed = source.description, options.seed
        identities = lambda: (source.identity(i) for i in chosen)  # noqa: E731
    info = None
    if options.shard is not None:
        i, k = options.shard
        info = ShardInfo(i, k, description, shards.fingerprint(identities(), description), len(chosen),
                         options.num_samples, options.seed)
    mine = world.shard(shards.split(chosen, options.shard))
    return _Plan(source, mine, description, seed, info)


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
) -> Iterator[tuple[np.ndarray, list[str], list[int]]]:
    """Per-image class pixel counts (B, C) int64 of ``plan.indices[start:]``, batch by batch, with the
    images' identities and source indices."""
    device = segmenter.device
    total = len(plan.indices)
    with _progress_bar(total, plan.description or "images", options.progress and world.is_main) as bar:
        bar.update(start)
        for batch in _batches(plan, plan.indices[start:], segmenter, options, skipped):
            labels = _segment(segmenter, batch, device)
            yield class_counts(labels, len(segmenter.class_names)).cpu().numpy(), batch.ids, batch.indices
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
                                  options.skip_bad_images, options.keep_rows]).encode())
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
        warn(f"resuming from checkpoint {self.path}: {plural(consumed, 'image')} already done")
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

    plan = _plan(source, options, world)

    def local() -> Stats:
        stats = Stats(_meta_for(segmenter, plan.description), pixels_per_image=h * w, keep_rows=options.keep_rows)
        checkpoint, start = None, 0
        if options.checkpoint is not None:
            if world.size > 1:
                raise InputError("checkpoint= (resuming) works in a single process, not under torch.distributed")
            checkpoint = _Checkpoint(options.checkpoint, plan, stats.meta, options, options.checkpoint_every)
            start, restored = checkpoint.load(stats)
            skipped.extend(restored)
        consumed, last_saved = start, start
        for batch_counts, ids, indices in _segment_counts(plan, segmenter, options, world, skipped, start):
            stats.update(batch_counts, ids=ids, index=indices)
            consumed = stats.n + len(skipped)  # images done so far, restored ones included
            if checkpoint is not None and consumed - last_saved >= checkpoint.every:
                checkpoint.save(stats, consumed, skipped)
                last_saved = consumed
        stats.skipped = tuple(skipped)
        run = describe_run(segmenter.device, str(getattr(segmenter, "precision", "float32")))
        stats.environment = merge_environments(stats.environment, (run,))  # a resumed run may add one
        if checkpoint is not None:
            checkpoint.remove()
        return stats

    stats = reduce_stats(run_on_all_ranks(world, local), world)
    if stats.skipped and world.is_main:
        listing = "\n".join(f"  {ident}: {reason}" for ident, reason in stats.skipped)
        warn(f"skipped {plural(len(stats.skipped), 'unreadable image')} in {stats.meta.source}:\n{listing}")
    if stats.n == 0 and plan.shard is None:
        raise InputError(f"no readable images in {stats.meta.source}")
    stats.shard = plan.shard
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
    prompts: list[str] | None = None,
    pipeline_kwargs: dict | None = None,
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
    keep_rows: bool = True,
    shard: tuple[int, int] | None = None,
) -> Stats:
    """Statistics of one source: a folder of images, a saved ``.npz`` or baseline name (returned as
    loaded), a `GeneratorSource`, or ``generator=G`` (see `fsd.generators` for ``z_dim``, ``z_sampler``,
    ``value_range`` and ``output_hook``; a diffusers pipeline takes ``prompts`` and ``pipeline_kwargs``
    instead, see `fsd.diffusers`).

    ``num_samples`` picks a subset of a file source by the paper's rule (``random.Random(seed).shuffle``;
    asking for more images than exist is an error), or is the number of samples of a generator, whose
    latents are seeded by ``seed``. ``distributed``: see `fsd.distributed.current_world`.

    ``keep_rows``: keep each image's class counts and identity next to the sums (see `fsd.rows`), which
    intervals, prevalence and example images need; ``False`` keeps the sums only.

    ``checkpoint``: a file where the exact partial sums are saved (atomically) every
    ``checkpoint_every`` images. If the run is interrupted, the same call resumes from it; it is removed
    when the run completes. A checkpoint of a different run (other images, subset, segmenter or options)
    is refused with an error, never mixed in. Single process only.

    ``shard=(i, k)``: only shard ``i`` of ``k`` of the chosen images (``0 <= i < k``), for array jobs;
    `fsd.merge_stats` joins the ``k`` shards into exactly the statistics of one run (see `fsd.shards`).

    >>> stats = fsd.compute_stats(generator=G, z_dim=512, num_samples=10_000)  # doctest: +SKIP
    """
    if checkpoint_every < 1:
        raise InputError(f"checkpoint_every must be at least 1, got {checkpoint_every}")
    options = RunOptions(device, batch_size, num_workers, num_samples, seed, weights_dir, progress,
                         skip_bad_images, distributed, checkpoint, checkpoint_every, keep_rows,
                         shards.check_shard(shard))
    source = _generator_side(source, generator, z_dim, z_sampler, value_range, output_hook, "source", prompts,
                             pipeline_kwargs)
    world = current_world(distributed)
    (opened,), seg = _open_all([source], segmenter, options, world)
    _check_subset(options, [opened])
    if isinstance(opened, Stats):
        if shard is not None:
            raise InputError(f"shard= splits images, but {opened.meta.source or 'the source'} is saved statistics: "
                             "give the images themselves")
        return opened
    return _stats_of(opened, seg, options, world)


def _check_subset(options: RunOptions, opened: list[Opened]) -> None:
    """num_samples chooses images: saved statistics have none left to choose from."""
    if options.num_samples is None or any(isinstance(o, GeneratorSource) for o in opened):
        return  # with a generator, num_samples is its number of samples
    saved = next((o for o in opened if isinstance(o, Stats)), None)
    if saved is not None:
        raise InputError(f"num_samples= chooses images, but one source is saved statistics ({saved.meta.source or 'Stats'}, "
                         f"{plural(saved.n, 'image')} chosen when they were saved): leave num_samples out, or pass the "
                         "images themselves")


def compute(
    real,
    fake=None,
    *,
    generator: Callable[..., object] | GeneratorSource | None = None,
    z_dim: int | None = None,
    z_sampler: ZSampler | None = None,
    value_range: ValueRange = DEFAULT_VALUE_RANGE,
    output_hook: Callable[[object], torch.Tensor] | None = None,
    prompts: list[str] | None = None,
    pipeline_kwargs: dict | None = None,
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
    keep_rows: bool = True,
    bootstrap: int | None = None,
    ci_level: float = DEFAULT_LEVEL,
    bootstrap_seed: int = DEFAULT_SEED,
    ci_method: str = DEFAULT_METHOD,
    fsd_inf: bool = False,
) -> FSDResult:
    """FSD between two sources (folders, saved ``.npz`` statistics, `Stats`, baseline names, generators).

    The fake side is ``fake`` or ``generator=G`` (sampled ``num_samples`` times; see `fsd.generators`; a
    diffusers pipeline, with ``prompts=`` for a text-to-image one and ``pipeline_kwargs=``: `fsd.diffusers`).
    ``num_samples`` picks the paper's random subset of each file source; when the fake side is a
    generator it is the generator's sample count only, and the real side is used whole, exactly as
    comparing ``real`` with a folder of the generator's samples (subset the real side with
    ``compute_stats(real, num_samples=...)`` and pass the `Stats`).

    How sure the number is (see `distance`): ``bootstrap`` replicates for the intervals (default 1000
    when both sides have per-image rows, 0: none), ``ci_level``, ``bootstrap_seed``, ``ci_method``, and
    ``fsd_inf=True`` for the bias-corrected FSD. ``keep_rows=False`` keeps only the sums (no intervals).

    >>> result = fsd.compute("real_images/", "generated/")  # doctest: +SKIP
    >>> result.fsd, result.fsd_ci, result.mean_term, result.covariance_term  # doctest: +SKIP
    >>> fsd.compute("lsun_church", generator=G, z_dim=512, num_samples=10_000)  # doctest: +SKIP
    """
    settings = _bootstrap_settings(bootstrap, ci_level, bootstrap_seed, ci_method)
    options = RunOptions(device, batch_size, num_workers, num_samples, seed, weights_dir, progress,
                         skip_bad_images, distributed, keep_rows=keep_rows)
    fake = _generator_side(fake, generator, z_dim, z_sampler, value_range, output_hook, "fake", prompts,
                           pipeline_kwargs)
    world = current_world(distributed)
    opened, seg = _open_all([real, fake], segmenter, options, world)
    _check_subset(options, opened)
    real_options = replace(options, num_samples=None) if isinstance(opened[1], GeneratorSource) else options
    sides = [o if isinstance(o, Stats) else _stats_of(o, seg, side_options, world)
             for o, side_options in zip(opened, (real_options, options))]
    return _distance(*sides, settings=settings, explicit=bootstrap is not None, fsd_inf=fsd_inf)


def _bootstrap_settings(bootstrap: int | None, ci_level: float, seed: int, method: str) -> BootstrapSettings:
    samples = DEFAULT_SAMPLES if bootstrap is None else bootstrap
    return BootstrapSettings(samples, ci_level, seed, method)


def distance(
    real: Stats,
    fake: Stats,
    *,
    bootstrap: int | None = None,
    ci_level: float = DEFAULT_LEVEL,
    bootstrap_seed: int = DEFAULT_SEED,
    ci_method: str = DEFAULT_METHOD,
    fsd_inf: bool = False,
) -> FSDResult:
    """FSD between two sets of statistics, after checking they were made the same way, with its intervals.

    The intervals (``fsd_ci``, ``mean_term_ci``, ``covariance_term_ci``) come from ``bootstrap``
    replicates of both sets, resampled from their per-image rows (`fsd.uncertainty`); by default 1000 when
    both sides have rows, and none (with ``ci_note`` saying why) when one has not. Asking for
    ``bootstrap=B > 0`` or ``fsd_inf=True`` on statistics without rows is an `InputError` saying how to
    recompute them.
    """
    settings = _bootstrap_settings(bootstrap, ci_level, bootstrap_seed, ci_method)
    return _distance(real, fake, settings=settings, explicit=bootstrap is not None, fsd_inf=fsd_inf)


def _check_sides(real: Stats, fake: Stats) -> None:
    real.meta.check_comparable(fake.meta)
    if real.pixels_per_image != fake.pixels_per_image:
        raise InputError(f"cannot compare statistics over {real.pixels_per_image} and {fake.pixels_per_image} "
                         "pixels per image; recompute one side with the other's segmenter settings")
    for name, stats in (("real", real), ("fake", fake)):
        if stats.n < 2:
            raise InputError(f"the {name} set has {plural(stats.n, 'image')}; FSD needs at least 2 per set "
                             "(the paper uses 10,000)")
        observed = stats.observed_classes()
        if stats.n <= observed:
            warn(f"the {name} set has {plural(stats.n, 'image')} but {plural(observed, 'class', 'classes')} occur: "
                 "its covariance is rank-deficient and FSD is a noisy estimate; use more images (the paper uses "
                 "10,000)")


def _missing_rows(sides: list[tuple[str, Stats]]) -> str:
    for name, stats in sides:
        if stats.rows is None:
            label = stats.meta.source or f"the {name} statistics"
            return f"no interval: {label} has no per-image rows"
    return ""


def _distance(real: Stats, fake: Stats, *, settings: BootstrapSettings, explicit: bool, fsd_inf: bool,
              warn_missing: bool = True) -> FSDResult:
    _check_sides(real, fake)
    d: FrechetDistance = stats_distance(real, fake)
    missing = _missing_rows([("real", real), ("fake", fake)])
    if missing and (explicit and settings.samples > 0 or fsd_inf):
        side = real if real.rows is None else fake
        side.require_rows("a bootstrap interval" if not fsd_inf else "the bias-corrected FSD (fsd_inf)")
    values = None
    if settings.samples > 0 and not missing:
        values = replicates(real, [fake], settings.samples, settings.seed)[:, 0]
    elif missing and warn_missing and not any(NO_ROWS_ON_PURPOSE in s.rows_note for s in (real, fake)
                                              if s.rows is None):
        warn(f"{missing}; {RECOMPUTE_HINT}")
    return _result(d, real, fake, values, missing, settings, fsd_inf)


def _result(d: FrechetDistance, real: Stats, fake: Stats, values: np.ndarray | None, missing: str,
            settings: BootstrapSettings, fsd_inf: bool) -> FSDResult:
    """An `FSDResult` from the distance, its bootstrap replicates ``(B, 3)`` (or None) and FSD_inf if asked."""
    fields: dict = {}
    if values is not None:
        cis = [interval(estimate, values[:, k], settings.level, settings.method)
               for k, estimate in enumerate((d.value, d.mean_term, d.covariance_term))]
        fields.update(fsd_ci=cis[0], mean_term_ci=cis[1], covariance_term_ci=cis[2], ci_level=settings.level,
                      bootstrap=settings, ci_note=small_sample_note([("real", real), ("generated", fake)]))
    elif missing:
        fields["ci_note"] = missing
    if fsd_inf:
        ext = extrapolate(real, fake, settings.seed)
        fields.update(fsd_inf=ext.value, fsd_inf_se=ext.se, extrapolation=ext)
        if values is not None:
            fields["fsd_inf_ci"] = inf_interval(ext, values[:, 0], settings.level)
    return FSDResult(d.value, d.mean_term, d.covariance_term, real, fake, **fields)


@dataclass(frozen=True)
class PairComparison:
    """Two models against the same real set: ``difference = fsd(a) - fsd(b)`` with its paired-bootstrap
    interval, ``support`` (the share of replicates in which ``a`` is closer to the real set), and the
    per-class report of ``b`` against ``a`` (its verdicts: the classes in which the two differ)."""

    a: int
    b: int
    difference: float
    difference_ci: Interval | None
    support: float | None
    classes: ClassReport

    def to_dict(self, models: tuple[FSDResult, ...]) -> dict:
        too_few, too_many = self.classes.notable_changes()
        return {
            "a": models[self.a].fake.meta.source,
            "b": models[self.b].fake.meta.source,
            "difference": self.difference,
            "difference_ci": None if self.difference_ci is None else list(self.difference_ci),
            "support": self.support,
            "b_fewer": [r.name for r in too_few],
            "b_more": [r.name for r in too_many],
        }


@dataclass(frozen=True)
class Comparison:
    """Several generated sets against one real set (`compare`)."""

    models: tuple[FSDResult, ...]
    pairs: tuple[PairComparison, ...]
    names: tuple[str, ...]

    def to_dict(self) -> dict:
        models = [{"source": m.fake.meta.source, "name": name, "n": m.fake.n, "fsd": m.fsd,
                   "fsd_ci": None if m.fsd_ci is None else list(m.fsd_ci), "mean_term": m.mean_term,
                   "covariance_term": m.covariance_term}
                  for m, name in zip(self.models, self.names)]
        first = self.models[0]
        return {
            "real": {"n": first.real.n, "source": first.real.meta.source},
            "ci_level": first.ci_level,
            "bootstrap": None if first.bootstrap is None else first.bootstrap.to_dict(),
            "ci_note": first.ci_note or None,
            "models": models,
            "pairs": [p.to_dict(self.models) for p in self.pairs],
        }

    def format(self) -> str:
        """The models' scores, then one line per pair."""
        lines = []
        for name, m in zip(self.names, self.models):
            lines.append(f"{name}: {m.summary()}")
        for p in self.pairs:
            a, b = self.names[p.a], self.names[p.b]
            if p.difference_ci is not None:
                level = self.models[0].ci_level * 100
                evidence = (f"{level:g}% CI {p.difference_ci[0]:+.4f} to {p.difference_ci[1]:+.4f}; {a} closer in "
                            f"{p.support * 100:.1f}% of bootstrap replicates")
            else:
                evidence = "no interval"
            lines.append(f"{a} - {b}: {p.difference:+.4f}  ({evidence})")
            too_few, too_many = p.classes.notable_changes()
            if too_few or too_many:
                lines.append(f"  {b} against {a}: {p.classes.summary()}")
            else:
                lines.append(f"  no class differs significantly between {a} and {b}")
        return "\n".join(lines)


def compare(
    real,
    fakes: list,
    *,
    names: list[str] | None = None,
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
    bootstrap: int | None = None,
    ci_level: float = DEFAULT_LEVEL,
    bootstrap_seed: int = DEFAULT_SEED,
    ci_method: str = DEFAULT_METHOD,
    fsd_inf: bool = False,
    rule: VerdictRule = VerdictRule(),
) -> Comparison:
    """Several models (generated sets) against one real set: each FSD with its interval, and for every
    pair the difference of their FSDs with a paired-bootstrap interval (each replicate resamples the real
    set once for all models), the share of replicates in which the first is closer, and the classes in
    which the two differ significantly. Each source is segmented once.

    >>> c = fsd.compare("real/", ["model_a/", "model_b/"])  # doctest: +SKIP
    >>> c.pairs[0].difference, c.pairs[0].difference_ci, c.pairs[0].support  # doctest: +SKIP
    """
    fakes = list(fakes)
    if len(fakes) < 2:
        raise InputError(f"compare needs at least two generated sets, got {len(fakes)}; for one, use fsd.compute")
    if names is not None and len(names) != len(fakes):
        raise InputError(f"got {len(names)} names for {len(fakes)} generated sets")
    settings = _bootstrap_settings(bootstrap, ci_level, bootstrap_seed, ci_method)
    options = RunOptions(device, batch_size, num_workers, num_samples, seed, weights_dir, progress,
                         skip_bad_images, distributed)
    world = current_world(distributed)
    opened, seg = _open_all([real, *fakes], segmenter, options, world)
    _check_subset(options, opened)
    sides = [o if isinstance(o, Stats) else _stats_of(o, seg, options, world) for o in opened]
    real_stats, fake_stats = sides[0], sides[1:]
    for f in fake_stats:
        _check_sides(real_stats, f)
    missing = _missing_rows([("real", real_stats)] + [(f"model {j + 1}", f) for j, f in enumerate(fake_stats)])
    if missing and (bootstrap is not None and settings.samples > 0 or fsd_inf):
        for s in sides:
            s.require_rows("a paired bootstrap" if not fsd_inf else "the bias-corrected FSD (fsd_inf)")
    values = None
    if settings.samples > 0 and not missing:
        values = replicates(real_stats, fake_stats, settings.samples, settings.seed, "a paired bootstrap")
    models = []
    for j, f in enumerate(fake_stats):
        models.append(_result(stats_distance(real_stats, f), real_stats, f,
                              None if values is None else values[:, j], missing, settings, fsd_inf))
    labels = tuple(names) if names is not None else tuple(f.meta.source or f"model {j + 1}"
                                                         for j, f in enumerate(fake_stats))
    pairs = []
    for a in range(len(models)):
        for b in range(a + 1, len(models)):
            difference = models[a].fsd - models[b].fsd
            ci = support = None
            if values is not None:
                deltas = values[:, a, 0] - values[:, b, 0]
                ci = interval(difference, deltas, settings.level, settings.method, non_negative=False)
                support = float(np.mean(values[:, a, 0] < values[:, b, 0]))
            report = class_report(fake_stats[a], fake_stats[b], rule=rule, level=settings.level,
                                  labels=(labels[a], labels[b]))
            pairs.append(PairComparison(a, b, difference, ci, support, report))
    return Comparison(tuple(models), tuple(pairs), labels)


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
    for counts, batch_ids, _ in _segment_counts(_plan(opened, options, SINGLE), segmenter, options, SINGLE, skipped):
        rows.append(counts)
        ids.extend(batch_ids)
    counts = np.concatenate(rows) if rows else np.zeros((0, len(segmenter.class_names)), np.int64)
    return PerImage(counts * (100.0 / (size * size)), ids, tuple(segmenter.class_names), tuple(skipped))

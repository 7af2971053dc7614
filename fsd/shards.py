"""Statistics of one source computed in K pieces (a cluster array job), and their exact merge.

``compute_stats(source, shard=(i, k))`` (CLI: ``--save-stats SOURCE OUT.npz --shard I/K``) segments
shard ``i`` of ``k`` (``0 <= i < k``): the images the subset rule chooses (all of them without
``num_samples``), in the paper's order, split as torch.distributed splits them, ``chosen[i::k]``. Each
shard's statistics record a `fsd.stats.ShardInfo`: which shard of how many, the subset (``num_samples``, ``seed``),
the number of images chosen, and a fingerprint of the source (a SHA-256 of the identities of every
chosen image in order, or of a generator's description and seed). The segmenter, its weights and its
preprocessing (which carries the precision) are in the statistics' metadata, as always.

`merge_stats` adds the shards' exact integer sums and joins their per-image rows (ordered by source
index, as a single run orders them), so K shards plus one merge give the very file a single run gives:
the same sums, mean, covariance and rows, bit for bit. It refuses, naming the file: a missing shard, a
shard given twice, shards of different sources, subsets or shard counts, and statistics made with a
different segmenter. Statistics of different sources (growing a reference set with new images) merge
only with ``different_sources=True`` (CLI ``--different-sources``); their rows are then renumbered to
follow one another, in the order given.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np

from ._text import plural
from .errors import IncompatibleStatsError, InputError
from .stats import Stats


def check_shard(shard: tuple[int, int] | None) -> tuple[int, int] | None:
    """``(i, k)`` with ``0 <= i < k``, or an `InputError` saying what is wrong."""
    if shard is None:
        return None
    try:
        i, k = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise InputError(f"shard= takes (index, count), got {shard!r}") from None
    if k < 1 or not 0 <= i < k:
        raise InputError(f"shard {i}/{k} does not exist: the index counts from 0 and must be below the count "
                         f"(0/{max(k, 1)} to {max(k, 1) - 1}/{max(k, 1)})")
    return i, k


def parse_shard(text: str) -> tuple[int, int]:
    """``"3/10"`` -> ``(3, 10)``: shard 3 of 10, counted from 0 (``$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``)."""
    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise InputError(f"--shard takes I/K (shard I of K, I counted from 0), got {text!r}")
    return check_shard((int(parts[0]), int(parts[1])))  # type: ignore[return-value]


def fingerprint(identities: Iterable[str], description: str) -> str:
    """A SHA-256 of a source's description and the identities of its chosen images, in order."""
    digest = hashlib.sha256(description.encode("utf-8", "surrogateescape") + b"\0\0")
    for identity in identities:
        digest.update(identity.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()


def split(indices: Sequence[int], shard: tuple[int, int] | None) -> list[int]:
    """Shard ``i`` of ``k`` of ``indices``: ``indices[i::k]``, the split torch.distributed uses."""
    if shard is None:
        return list(indices)
    i, k = shard
    return list(indices[i::k])


def _name(item: Stats | str | os.PathLike, position: int) -> str:
    return os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"statistics #{position}"


def merge_stats(parts: Sequence[Stats | str | os.PathLike], *, different_sources: bool = False) -> Stats:
    """Merge statistics exactly: the K shards of one source (see the module doc), or, with
    ``different_sources=True``, statistics of different sources. Files are given by path."""
    if len(parts) < 2:
        raise InputError(f"merging needs at least 2 statistics files, got {len(parts)}")
    loaded = [(_name(p, k), p if isinstance(p, Stats) else Stats.load(p)) for k, p in enumerate(parts)]
    first_name, first = loaded[0]
    for name, stats in loaded[1:]:
        try:
            first.meta.check_comparable(stats.meta, (first_name, name))
        except IncompatibleStatsError as exc:
            raise IncompatibleStatsError(f"cannot merge {name} with {first_name}: {exc}") from None
        if stats.pixels_per_image != first.pixels_per_image:
            raise IncompatibleStatsError(f"cannot merge {name} with {first_name}: {stats.pixels_per_image} vs "
                                         f"{first.pixels_per_image} pixels per image")
    if different_sources:
        return _concatenate(loaded)
    return _merge_shards(loaded)


def _merge_shards(loaded: list[tuple[str, Stats]]) -> Stats:
    for name, stats in loaded:
        if stats.shard is None:
            raise InputError(
                f"{name} is not a shard (it was not made with --shard / shard=): merging it with others would "
                "add different images, or the same ones twice; to grow a set from different sources on purpose, "
                "pass --different-sources (different_sources=True)")
    first_name, first = loaded[0]
    ref = first.shard
    seen: dict[int, str] = {}
    for name, stats in loaded:
        info = stats.shard
        for field, what in (("fingerprint", "sources"), ("num_samples", "subsets (--num-samples)"),
                            ("seed", "subsets (--seed)"), ("count", "shard counts")):
            if getattr(info, field) != getattr(ref, field):
                raise InputError(
                    f"{name} ({info.label} of {info.source}) and {first_name} ({ref.label} of {ref.source}) have "
                    f"different {what}: shards of one run share them; to merge different sources on purpose, "
                    "pass --different-sources")
        if info.index in seen:
            raise InputError(f"{name} and {seen[info.index]} are both {info.label}: give each shard once")
        seen[info.index] = name
    missing = sorted(set(range(ref.count)) - set(seen))
    if missing:
        listed = ", ".join(f"{i}/{ref.count}" for i in missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise InputError(f"{plural(len(missing), 'shard')} of {ref.source} missing ({listed}): merge all "
                         f"{ref.count} shards (rerun the missing ones with --shard I/{ref.count})")
    ordered = [stats for _, stats in sorted(loaded, key=lambda item: item[1].shard.index)]
    merged = _sum(ordered, first)
    if merged.n + len(merged.skipped) != ref.images:
        raise InputError(f"the shards of {ref.source} hold {merged.n + len(merged.skipped)} images, but "
                         f"{ref.images} were chosen: a shard file is damaged; recompute it")
    return merged


def _concatenate(loaded: list[tuple[str, Stats]]) -> Stats:
    offset, renumbered = 0, []
    for _, stats in loaded:
        rows = stats.rows
        if rows is not None:  # source indices of different sources collide: number them one after another
            rows = replace(rows, index=np.arange(len(rows), dtype=np.int64) + offset)
        renumbered.append(Stats.from_sums(stats.meta, stats.pixels_per_image, stats.n, stats.count_sum,
                                          stats.count_outer_sum, rows=rows, rows_note=stats.rows_note,
                                          skipped=stats.skipped, environment=stats.environment))
        offset += stats.n
    merged = _sum(renumbered, loaded[0][1])
    sources = list(dict.fromkeys(s.meta.source for _, s in loaded))
    merged.meta = replace(merged.meta, source=" + ".join(sources))
    return merged


def _sum(parts: list[Stats], template: Stats) -> Stats:
    """A new `Stats` holding the exact sum of ``parts`` (`Stats.merge`: rows joined when every part has them)."""
    total = Stats(template.meta, template.pixels_per_image)
    for part in parts:
        total.merge(part)
    return total

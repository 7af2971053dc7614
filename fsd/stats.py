"""Streaming sufficient statistics of per-image class percentages, and their files.

Every per-image sample is ``count * 100 / P``: integer pixel counts per class over ``P`` pixels. So
the statistics are kept as *exact integer sums* of the counts and of their outer products. Integer
addition is associative, which makes the result bit-for-bit independent of batch size, worker count,
input order and sharding across processes (floating-point accumulation, pytorch-fid's or a Chan-style
merge, is only equal up to rounding). Mean and covariance (divisor N - 1) are formed once, in float64,
with the centering done exactly in integers. int64 sums hold up to 2**31 - 1 images of 65536 pixels
(`max_images` for the pixel count in use); more raise an `InputError` instead of wrapping around, in
`Stats.update`, `Stats.merge`, and for sums that arrive from other processes or from a file.

Next to the sums, statistics keep each image's own counts and identity (`fsd.rows.Rows`, sparse) unless
made with ``keep_rows=False``: the bootstrap intervals, the prevalence of each class and the example
images of a report are computed from them. A file's rows must reproduce its sums exactly, or it is
refused as damaged. Files of format ``fsd-stats-1`` (before rows existed) still load, without rows.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from ._io import atomic_write
from .errors import IncompatibleStatsError, InputError
from .rows import Rows, exact_outer_sum

FORMAT = "fsd-stats-2"
READABLE_FORMATS = ("fsd-stats-1", FORMAT)
INT64_MAX = np.iinfo(np.int64).max

NO_ROWS_ON_PURPOSE = "made with keep_rows=False (--no-rows)"
RECOMPUTE_HINT = "recompute them with per-image rows: `python -m fsd --save-stats SOURCE OUT.npz` (without --no-rows)"


def max_images(pixels_per_image: int) -> int:
    """The most images whose outer-product sums of counts fit int64 exactly (2**31 - 1 for 65536 pixels)."""
    return INT64_MAX // (pixels_per_image * pixels_per_image)


def _centered(n: int, count_sum: np.ndarray, count_outer_sum: np.ndarray) -> np.ndarray:
    """``n * S2 - S1 S1^T`` exactly, in int64 when no entry can overflow, else in Python integers.

    Both ways give the same integers, so the float64 covariance formed from them is the same to the bit.
    """
    s1_max = int(np.abs(count_sum).max(initial=0))
    s2_max = int(np.abs(count_outer_sum).max(initial=0))
    if n * s2_max + s1_max * s1_max < INT64_MAX:
        return count_outer_sum * n - np.outer(count_sum, count_sum)
    s1 = count_sum.astype(object)
    return count_outer_sum.astype(object) * n - np.outer(s1, s1)


def covariance_from_sums(n: int, count_sum: np.ndarray, count_outer_sum: np.ndarray, scale: float) -> np.ndarray:
    """The unbiased covariance (divisor n - 1) of percentages ``count * scale`` from exact sums, float64."""
    return _centered(n, count_sum, count_outer_sum).astype(np.float64) / (n * (n - 1)) * scale**2


def merge_environments(*parts: tuple[str, ...]) -> tuple[str, ...]:
    """The distinct run descriptions of ``parts``, in order of first appearance."""
    return tuple(dict.fromkeys(e for part in parts for e in part))


@dataclass(frozen=True)
class StatsMeta:
    """What made a set of statistics. Two sets are comparable only if all but `source` agree."""

    class_names: tuple[str, ...]
    segmenter: str
    weights: str
    preprocessing: str
    version: str
    source: str = ""

    def check_comparable(self, other: StatsMeta, names: tuple[str, str] = ("real", "fake")) -> None:
        for field in ("segmenter", "weights", "preprocessing"):
            mine, theirs = getattr(self, field), getattr(other, field)
            if mine != theirs:
                raise IncompatibleStatsError(
                    f"cannot compare statistics made with different {field}: "
                    f"{names[0]} has {mine!r}, {names[1]} has {theirs!r}; recompute one side so both use the same"
                )
        if self.class_names != other.class_names:
            diff = next(
                (i for i, (a, b) in enumerate(zip(self.class_names, other.class_names)) if a != b),
                min(len(self.class_names), len(other.class_names)),
            )
            raise IncompatibleStatsError(
                f"cannot compare statistics with different class names: they first differ at class {diff} "
                f"({len(self.class_names)} vs {len(other.class_names)} classes)"
            )


@dataclass(frozen=True)
class ShardInfo:
    """Which part of which source a set of statistics holds (see `fsd.shards`)."""

    index: int
    count: int
    source: str
    fingerprint: str
    images: int  # images chosen from the source in all, over every shard
    num_samples: int | None
    seed: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ShardInfo:
        data = json.loads(text)
        return cls(**{k: data[k] for k in ("index", "count", "source", "fingerprint", "images", "num_samples",
                                           "seed")})

    @property
    def label(self) -> str:
        return f"shard {self.index}/{self.count}"


class Stats:
    """Exact streaming statistics of per-image class pixel counts.

    >>> import numpy as np
    >>> meta = StatsMeta(("a", "b"), "demo", "none", "none", "0")
    >>> s = Stats(meta, pixels_per_image=4)
    >>> s.update(np.array([[4, 0], [2, 2], [1, 3]]))
    >>> s.n, s.mu.tolist()
    (3, [58.333333333333336, 41.66666666666667])
    >>> s.rows.ids, s.rows.dense().tolist()
    (('#0', '#1', '#2'), [[4, 0], [2, 2], [1, 3]])

    ``keep_rows=False`` keeps the sums only (``rows`` is then ``None``): for runs where memory matters;
    intervals, prevalence and example images need the rows.
    """

    def __init__(self, meta: StatsMeta, pixels_per_image: int, *, keep_rows: bool = True):
        if pixels_per_image <= 0:
            raise ValueError("pixels_per_image must be positive")
        c = len(meta.class_names)
        self.meta = meta
        self.pixels_per_image = int(pixels_per_image)
        self.n = 0
        self.count_sum = np.zeros(c, dtype=np.int64)
        self.count_outer_sum = np.zeros((c, c), dtype=np.int64)
        self.skipped: tuple[tuple[str, str], ...] = ()  # (identity, reason) of images skipped as unreadable
        # Rows arrive batch by batch; they are joined (and sorted by source index) when first read.
        self._row_parts: list[Rows] | None = [] if keep_rows else None
        self.rows_note = "" if keep_rows else NO_ROWS_ON_PURPOSE  # why there are no rows, when there are none
        self.shard = None  # a `ShardInfo` when these are one shard of a source (see fsd.shards)
        # How the numbers were made (torch version, device, threads, precision; see fsd.devices.describe_run),
        # one entry per distinct setting of the runs merged in. Shown, never compared.
        self.environment: tuple[str, ...] = ()

    @classmethod
    def from_sums(cls, meta: StatsMeta, pixels_per_image: int, n: int, count_sum: np.ndarray,
                  count_outer_sum: np.ndarray, rows: Rows | None = None, rows_note: str = "",
                  skipped: tuple[tuple[str, str], ...] = (), environment: tuple[str, ...] = ()) -> Stats:
        """Statistics from exact sums (from a collective or a metric's states), with the rows if kept."""
        stats = cls(meta, pixels_per_image, keep_rows=rows is not None)
        # A sum over processes past the capacity has wrapped around in int64; only n shows it.
        stats._check_capacity(int(n), "these sums count")
        stats.n = int(n)
        stats.count_sum = np.asarray(count_sum, dtype=np.int64).copy()
        stats.count_outer_sum = np.asarray(count_outer_sum, dtype=np.int64).copy()
        stats.skipped = tuple(skipped)
        stats.environment = tuple(environment)
        if rows is not None:
            if len(rows) != stats.n:
                raise ValueError(f"{len(rows)} rows for {stats.n} images")
            stats._row_parts = [rows.sorted()]
        elif rows_note:
            stats.rows_note = rows_note
        return stats

    @property
    def has_rows(self) -> bool:
        return self._row_parts is not None

    @property
    def rows(self) -> Rows | None:
        """Every image's counts and identity, ordered by source index (None when not kept)."""
        if self._row_parts is None:
            return None
        if len(self._row_parts) != 1:  # every part is sorted on arrival, so one part needs nothing
            self._row_parts = [Rows.concatenate(self._row_parts, self.num_classes).sorted()]
        return self._row_parts[0]

    def drop_rows(self, note: str = NO_ROWS_ON_PURPOSE) -> None:
        """Forget the per-image rows, keeping the sums."""
        self._row_parts, self.rows_note = None, note

    def require_rows(self, what: str, name: str = "") -> Rows:
        """The rows, or an `InputError` saying that ``what`` needs them and how to get them."""
        rows = self.rows
        if rows is None:
            label = name or self.meta.source or "these statistics"
            why = f" ({self.rows_note})" if self.rows_note else ""
            raise InputError(f"{what} needs per-image rows, and {label} has none{why}; {RECOMPUTE_HINT}")
        return rows

    # -- accumulation -------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.meta.class_names)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.meta.class_names

    def update(self, counts, ids=None, index=None) -> None:
        """Add images given as integer pixel counts per class, shape (N, C), rows summing to P.

        ``ids``: their identities (default ``#<position>``); ``index``: their indices in the source
        (default: the order of arrival). Both are kept with the rows.
        """
        counts = np.asarray(counts)
        if counts.ndim != 2 or counts.shape[1] != self.num_classes:
            raise ValueError(f"counts must have shape (N, {self.num_classes}), got {counts.shape}")
        if counts.shape[0] == 0:
            return
        if not np.issubdtype(counts.dtype, np.integer):
            raise TypeError(f"counts must be integers, got {counts.dtype}")
        counts = counts.astype(np.int64, copy=False)
        if (counts.sum(axis=1) != self.pixels_per_image).any() or (counts < 0).any():
            raise ValueError(f"each row of counts must be non-negative and sum to {self.pixels_per_image}")
        n = counts.shape[0]
        self._check_capacity(self.n + n, "adding these images would make")
        if self._row_parts is not None:
            index = np.arange(self.n, self.n + n) if index is None else index
            ids = [f"#{k}" for k in range(self.n, self.n + n)] if ids is None else ids
            self._row_parts.append(Rows.from_dense(counts, index, ids).sorted())
        present = np.flatnonzero(counts.any(axis=0))  # images hold few classes: work on those only
        outer = exact_outer_sum(counts[:, present])  # exact in float64 blocks, summed in int64
        self.n += n
        self.count_sum += counts.sum(axis=0)
        self.count_outer_sum[np.ix_(present, present)] += outer

    def _check_capacity(self, n: int, what: str) -> None:
        limit = max_images(self.pixels_per_image)
        if n > limit:
            raise InputError(
                f"{what} {n:,} images, more than the {limit:,} of {self.pixels_per_image} pixels whose "
                "sums stay exact in int64; split the set and compare the parts"
            )

    def update_percentages(self, percentages, ids=None, index=None) -> None:
        """Add images given as percentages that are exact multiples of 100 / P (e.g. from a tally)."""
        pct = np.asarray(percentages, dtype=np.float64)
        counts = np.rint(pct * (self.pixels_per_image / 100.0))
        err = np.abs(counts * (100.0 / self.pixels_per_image) - pct).max(initial=0.0)
        if err > 1e-6:
            raise ValueError(
                f"percentages are not whole pixel counts out of {self.pixels_per_image} (off by up to {err:.3g})"
            )
        self.update(counts.astype(np.int64), ids=ids, index=index)

    def merge(self, other: Stats) -> Stats:
        """Add another shard's statistics into this one (exact; order does not matter)."""
        self.meta.check_comparable(other.meta, ("this", "other"))
        if other.pixels_per_image != self.pixels_per_image:
            raise IncompatibleStatsError(
                f"cannot merge statistics over {self.pixels_per_image} and {other.pixels_per_image} pixels per image"
            )
        self._check_capacity(self.n + other.n, "merging these statistics would make")
        if self._row_parts is not None:
            if other.rows is None:
                self.drop_rows(other.rows_note or "merged with statistics that have no rows")
            else:
                self._row_parts.append(other.rows)
        self.n += other.n
        self.count_sum += other.count_sum
        self.count_outer_sum += other.count_outer_sum
        self.skipped = self.skipped + other.skipped
        self.environment = merge_environments(self.environment, other.environment)
        return self

    # -- the Gaussian -------------------------------------------------------------------------
    @property
    def scale(self) -> float:
        return 100.0 / self.pixels_per_image

    @property
    def mu(self) -> np.ndarray:
        """Mean per-class pixel percentage, (C,) float64."""
        if self.n == 0:
            raise InputError("no images were added to these statistics")
        return self.count_sum / self.n * self.scale

    @property
    def sigma(self) -> np.ndarray:
        """Unbiased covariance (divisor N - 1) of the per-image percentages, (C, C) float64."""
        if self.n < 2:
            raise InputError(f"a covariance needs at least 2 images, these statistics have {self.n}")
        # N * S2 - S1 S1^T exactly in integers, then one rounding to float64.
        return covariance_from_sums(self.n, self.count_sum, self.count_outer_sum, self.scale)

    def observed_classes(self) -> int:
        """Number of classes present in at least one image."""
        return int(np.count_nonzero(self.count_sum))

    # -- files ----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, extra: dict[str, str] | None = None) -> None:
        """Write an ``.npz`` with pytorch-fid's ``mu``/``sigma`` plus ``n``, exact sums and metadata.

        Written to a temporary file next to the target and renamed, so an interrupted save never
        leaves a partial file. ``extra`` strings are stored as ``extra_<key>`` (see `read_extra`).
        """
        path = Path(path)
        arrays = {
            "format": np.array(FORMAT),
            "mu": self.mu if self.n >= 1 else np.zeros(self.num_classes),
            "sigma": self.sigma if self.n >= 2 else np.zeros((self.num_classes, self.num_classes)),
            "n": np.array(self.n, dtype=np.int64),
            "pixels_per_image": np.array(self.pixels_per_image, dtype=np.int64),
            "count_sum": self.count_sum,
            "count_outer_sum": self.count_outer_sum,
            "class_names": np.array(self.meta.class_names, dtype=str),
            "skipped": np.array(json.dumps([list(item) for item in self.skipped])),
            "rows_note": np.array(self.rows_note, dtype=str),
        }
        if self.rows is not None:
            arrays.update(self.rows.to_arrays())
        if self.shard is not None:
            arrays["shard"] = np.array(self.shard.to_json())
        if self.environment:
            arrays["environment"] = np.array(json.dumps(list(self.environment)))
        for f in fields(StatsMeta):
            if f.name != "class_names":
                arrays[f.name] = np.array(getattr(self.meta, f.name), dtype=str)
        for key, value in (extra or {}).items():
            arrays[f"extra_{key}"] = np.array(value, dtype=str)
        atomic_write(path, lambda handle: np.savez(handle, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Stats:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                keys = set(data.files)
                if "format" not in keys:
                    what = "pytorch-fid style mu/sigma without metadata" if {"mu", "sigma"} <= keys else (
                        f"keys {sorted(keys)[:5]}")
                    raise InputError(
                        f"{path} is not an FSD statistics file ({what}); "
                        "make one with `python -m fsd --save-stats SOURCE OUT.npz`"
                    )
                version = str(data["format"])
                if version not in READABLE_FORMATS:
                    raise InputError(f"{path} has statistics format {version!r}; this fsd reads "
                                     f"{', '.join(map(repr, READABLE_FORMATS))}: update pytorch-fsd")
                meta = StatsMeta(
                    class_names=tuple(str(x) for x in data["class_names"]),
                    **{f.name: str(data[f.name]) for f in fields(StatsMeta) if f.name != "class_names"},
                )
                stats = cls(meta, int(data["pixels_per_image"]))
                stats._check_capacity(int(data["n"]), f"statistics file {path} counts")
                stats.n = int(data["n"])
                stats.count_sum = data["count_sum"].astype(np.int64)
                stats.count_outer_sum = data["count_outer_sum"].astype(np.int64)
                if "skipped" in keys:
                    stats.skipped = tuple((str(a), str(b)) for a, b in json.loads(str(data["skipped"])))
                if "environment" in keys:
                    try:
                        stats.environment = tuple(str(e) for e in json.loads(str(data["environment"])))
                    except (ValueError, TypeError) as exc:
                        raise InputError(f"statistics file {path} is damaged: its environment record is "
                                         f"unreadable ({exc}); {RECOMPUTE_HINT}") from None
                if "shard" in keys:
                    try:
                        stats.shard = ShardInfo.from_json(str(data["shard"]))
                    except (ValueError, KeyError, TypeError) as exc:
                        raise InputError(f"statistics file {path} is damaged: its shard record is unreadable "
                                         f"({exc}); {RECOMPUTE_HINT}") from None
                c = stats.num_classes
                if stats.count_sum.shape != (c,) or stats.count_outer_sum.shape != (c, c):
                    raise InputError(f"statistics file {path} is inconsistent: array shapes do not match {c} classes")
                if "rows_indptr" in keys:
                    try:
                        rows = Rows.from_arrays(data, c)
                    except (ValueError, KeyError) as exc:
                        raise InputError(f"statistics file {path} is damaged: its per-image rows are unreadable "
                                         f"({exc}); {RECOMPUTE_HINT}") from None
                    stats._check_rows(rows, path)
                    stats._row_parts = [rows.sorted()]
                else:
                    note = str(data["rows_note"]) if "rows_note" in keys else ""
                    stats.drop_rows(note or f"saved in format {version!r}, before per-image rows existed")
        except (OSError, ValueError, KeyError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"cannot read statistics file {path}: {exc}") from exc
        return stats

    def _check_rows(self, rows: Rows, path) -> None:
        """Refuse rows that do not reproduce the stored sums exactly."""
        problem = ""
        if len(rows) != self.n:
            problem = f"{len(rows)} rows for {self.n} images"
        elif len(rows) and np.any(rows.pixel_totals() != self.pixels_per_image):
            problem = f"a row does not sum to {self.pixels_per_image} pixels"
        else:
            count_sum, outer = rows.sums()
            if not np.array_equal(count_sum, self.count_sum) or not np.array_equal(outer, self.count_outer_sum):
                problem = "the rows do not add up to the stored sums"
        if problem:
            raise InputError(f"statistics file {path} is damaged: {problem}; {RECOMPUTE_HINT}")

    @staticmethod
    def read_extra(path: str | os.PathLike) -> dict[str, str]:
        """The ``extra`` strings a file was saved with."""
        with np.load(Path(path), allow_pickle=False) as data:
            return {k[len("extra_"):]: str(data[k]) for k in data.files if k.startswith("extra_")}

    def __repr__(self) -> str:
        rows = "rows" if self.has_rows else "no rows"
        return (f"Stats(n={self.n}, classes={self.num_classes}, segmenter={self.meta.segmenter!r}, "
                f"source={self.meta.source!r}, {rows})")

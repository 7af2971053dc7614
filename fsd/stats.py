"""Streaming sufficient statistics of per-image class percentages, and their files.

Every per-image sample is ``count * 100 / P``: integer pixel counts per class over ``P`` pixels. So
the statistics are kept as *exact integer sums* of the counts and of their outer products. Integer
addition is associative, which makes the result bit-for-bit independent of batch size, worker count,
input order and sharding across processes (floating-point accumulation, pytorch-fid's or a Chan-style
merge, is only equal up to rounding). Mean and covariance (divisor N - 1) are formed once, in float64,
with the centering done exactly in integers. int64 sums hold up to 2**31 images of 65536 pixels.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ._io import atomic_write
from .errors import IncompatibleStatsError, InputError

FORMAT = "fsd-stats-1"


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


class Stats:
    """Exact streaming statistics of per-image class pixel counts.

    >>> import numpy as np
    >>> meta = StatsMeta(("a", "b"), "demo", "none", "none", "0")
    >>> s = Stats(meta, pixels_per_image=4)
    >>> s.update(np.array([[4, 0], [2, 2], [1, 3]]))
    >>> s.n, s.mu.tolist()
    (3, [58.333333333333336, 41.66666666666667])
    """

    def __init__(self, meta: StatsMeta, pixels_per_image: int):
        if pixels_per_image <= 0:
            raise ValueError("pixels_per_image must be positive")
        c = len(meta.class_names)
        self.meta = meta
        self.pixels_per_image = int(pixels_per_image)
        self.n = 0
        self.count_sum = np.zeros(c, dtype=np.int64)
        self.count_outer_sum = np.zeros((c, c), dtype=np.int64)
        self.skipped: tuple[tuple[str, str], ...] = ()  # (identity, reason) of images skipped as unreadable

    # -- accumulation -------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.meta.class_names)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.meta.class_names

    def update(self, counts) -> None:
        """Add images given as integer pixel counts per class, shape (N, C), rows summing to P."""
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
        present = np.flatnonzero(counts.any(axis=0))  # images hold few classes: work on those only
        sub = counts[:, present]
        # float64 products and sums of integers are exact below 2**53: fine for any one batch.
        outer = (sub.T.astype(np.float64) @ sub.astype(np.float64)).astype(np.int64)
        self.n += counts.shape[0]
        self.count_sum += counts.sum(axis=0)
        self.count_outer_sum[np.ix_(present, present)] += outer

    def update_percentages(self, percentages) -> None:
        """Add images given as percentages that are exact multiples of 100 / P (e.g. from a tally)."""
        pct = np.asarray(percentages, dtype=np.float64)
        counts = np.rint(pct * (self.pixels_per_image / 100.0))
        err = np.abs(counts * (100.0 / self.pixels_per_image) - pct).max(initial=0.0)
        if err > 1e-6:
            raise ValueError(
                f"percentages are not whole pixel counts out of {self.pixels_per_image} (off by up to {err:.3g})"
            )
        self.update(counts.astype(np.int64))

    def merge(self, other: Stats) -> Stats:
        """Add another shard's statistics into this one (exact; order does not matter)."""
        self.meta.check_comparable(other.meta, ("this", "other"))
        if other.pixels_per_image != self.pixels_per_image:
            raise IncompatibleStatsError(
                f"cannot merge statistics over {self.pixels_per_image} and {other.pixels_per_image} pixels per image"
            )
        self.n += other.n
        self.count_sum += other.count_sum
        self.count_outer_sum += other.count_outer_sum
        self.skipped = self.skipped + other.skipped
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
        # N * S2 - S1 S1^T exactly in Python integers, then one rounding to float64.
        s1 = self.count_sum.astype(object)
        centered = self.count_outer_sum.astype(object) * self.n - np.outer(s1, s1)
        return centered.astype(np.float64) / (self.n * (self.n - 1)) * self.scale**2

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
        }
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
                if str(data["format"]) != FORMAT:
                    raise InputError(f"{path} has statistics format {str(data['format'])!r}; this fsd reads {FORMAT!r}")
                meta = StatsMeta(
                    class_names=tuple(str(x) for x in data["class_names"]),
                    **{f.name: str(data[f.name]) for f in fields(StatsMeta) if f.name != "class_names"},
                )
                stats = cls(meta, int(data["pixels_per_image"]))
                stats.n = int(data["n"])
                stats.count_sum = data["count_sum"].astype(np.int64)
                stats.count_outer_sum = data["count_outer_sum"].astype(np.int64)
                if "skipped" in keys:
                    stats.skipped = tuple((str(a), str(b)) for a, b in json.loads(str(data["skipped"])))
        except (OSError, ValueError, KeyError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"cannot read statistics file {path}: {exc}") from exc
        c = stats.num_classes
        if stats.count_sum.shape != (c,) or stats.count_outer_sum.shape != (c, c):
            raise InputError(f"statistics file {path} is inconsistent: array shapes do not match {c} classes")
        return stats

    @staticmethod
    def read_extra(path: str | os.PathLike) -> dict[str, str]:
        """The ``extra`` strings a file was saved with."""
        with np.load(Path(path), allow_pickle=False) as data:
            return {k[len("extra_"):]: str(data[k]) for k in data.files if k.startswith("extra_")}

    def __repr__(self) -> str:
        return (f"Stats(n={self.n}, classes={self.num_classes}, segmenter={self.meta.segmenter!r}, "
                f"source={self.meta.source!r})")

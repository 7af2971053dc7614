"""Per-image rows: each image's exact class pixel counts, kept sparse, with its identity.

The sums in `fsd.stats.Stats` are all FSD itself needs; the rows are what its *evidence* needs: bootstrap
intervals (`fsd.uncertainty`), prevalence (the share of images holding a class at all), and the example
images of a report. A trained segmenter puts a few dozen of its 336 classes in one image, so a row is
stored as the classes present and their pixel counts (compressed sparse rows):

- ``indptr`` (N + 1) int64: row ``i`` holds entries ``indptr[i]:indptr[i + 1]``;
- ``classes`` int32 and ``counts`` int64: the classes present in the image (ascending) and their counts;
- ``index`` int64: the image's index in its source (``fsd.sources`` order; sample ``k`` of a generator);
- ``ids``: the image's identity (its path, ``archive.zip!member``, ``generator[12]``, ...).

Rows are kept sorted by ``index`` (`Rows.sorted`), so one run, a run resumed from a checkpoint, and the
same run sharded over processes store identical rows. About 12 bytes per class present per image plus
the identity: 10,000 images of 30 classes each take about 4 MB with their paths.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

# float64 products and sums of whole numbers are exact while every partial sum stays at most 2**53.
EXACT_FLOAT_LIMIT = 2**53
# `Rows.sums` makes this many rows dense at a time (8192 x 336 classes: 22 MB), not all N of them.
SUMS_BLOCK = 8192


def exact_block_weight(largest: int) -> int:
    """How many rows (or how much bootstrap weight) one float64 block may hold when no entry exceeds
    ``largest``: each outer-product entry then sums at most ``weight * largest**2`` <= `EXACT_FLOAT_LIMIT`.
    2**21 rows for counts of at most 65536 pixels (256 x 256), 2**17 for 512 x 512."""
    return max(1, EXACT_FLOAT_LIMIT // max(1, int(largest)) ** 2)


def exact_outer_sum(dense: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """``sum_i w_i x_i x_i^T`` of non-negative integer rows ``dense`` (N, K), exactly, as int64 (K, K).

    float64 matrix products are fast and exact while every partial sum is an integer of at most 2**53, so
    the rows are taken in blocks small enough for that (`exact_block_weight` of the largest entry, by
    length or, with non-negative integer ``weights`` such as bootstrap counts, by weight sum), and the
    blocks are summed in int64. The caller keeps the int64 total in range (`fsd.stats.max_images`).
    """
    n, k = dense.shape
    total = np.zeros((k, k), dtype=np.int64)
    if n == 0:
        return total
    block_weight = exact_block_weight(int(dense.max(initial=0)))
    if weights is not None:
        weights = np.asarray(weights)
    start = 0
    while start < n:
        stop = min(n, start + block_weight)
        if weights is not None:
            # Shrink the block until its weights sum to at most block_weight.
            cumulative = np.cumsum(weights[start:stop], dtype=np.int64)
            if cumulative[-1] > block_weight:
                stop = start + max(1, int(np.searchsorted(cumulative, block_weight, side="right")))
        if weights is not None and stop == start + 1 and weights[start] > block_weight:
            row = dense[start].astype(np.int64)  # one image weighing more than a block: in integers
            total += int(weights[start]) * np.outer(row, row)
            start = stop
            continue
        block = dense[start:stop].astype(np.float64, copy=False)  # read only: a float64 input is not copied
        if weights is None:
            product = block.T @ block
        else:
            product = (block * weights[start:stop, None].astype(np.float64)).T @ block
        total += product.astype(np.int64)
        start = stop
    return total


def exact_weighted_sum(dense: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``sum_i w_i x_i`` of non-negative integer rows ``dense`` (N, K) with non-negative integer ``weights``,
    exactly, as int64 (K,).

    One float64 (BLAS) product when the total, and so every partial sum, is at most 2**53; NumPy's int64
    product, which has no BLAS (9x slower for 63,000 x 149 counts), only past that.
    """
    weights = np.asarray(weights)
    n, k = dense.shape
    if n == 0:
        return np.zeros(k, dtype=np.int64)
    if int(weights.sum()) * int(dense.max(initial=0)) <= EXACT_FLOAT_LIMIT:
        return (weights.astype(np.float64) @ dense.astype(np.float64, copy=False)).astype(np.int64)
    return weights.astype(np.int64) @ dense.astype(np.int64, copy=False)


@dataclass(frozen=True)
class Rows:
    """Sparse per-image class pixel counts of ``len(self)`` images over ``num_classes`` classes."""

    indptr: np.ndarray
    classes: np.ndarray
    counts: np.ndarray
    index: np.ndarray
    ids: tuple[str, ...]
    num_classes: int

    # -- building ----------------------------------------------------------------------------------
    @classmethod
    def empty(cls, num_classes: int) -> Rows:
        return cls(np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int64),
                   (), num_classes)

    @classmethod
    def from_dense(cls, counts: np.ndarray, index: Sequence[int], ids: Sequence[str]) -> Rows:
        """Rows of a dense ``(N, C)`` integer array (one batch of images)."""
        counts = np.asarray(counts)
        n, c = counts.shape
        if len(index) != n or len(ids) != n:
            raise ValueError(f"{n} rows need {n} indices and identities, got {len(index)} and {len(ids)}")
        image, klass = np.nonzero(counts)  # row-major: classes ascending within each image
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(image, minlength=n), out=indptr[1:])
        return cls(indptr, klass.astype(np.int32), counts[image, klass].astype(np.int64),
                   np.asarray(index, dtype=np.int64).reshape(n), tuple(str(i) for i in ids), c)

    @classmethod
    def concatenate(cls, parts: Iterable[Rows], num_classes: int) -> Rows:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty(num_classes)
        for p in parts:
            if p.num_classes != num_classes:
                raise ValueError(f"rows over {p.num_classes} classes cannot join rows over {num_classes}")
        offsets = np.cumsum([0] + [p.nnz for p in parts[:-1]])
        indptr = np.concatenate([[0]] + [p.indptr[1:] + off for p, off in zip(parts, offsets)]).astype(np.int64)
        return cls(indptr, np.concatenate([p.classes for p in parts]), np.concatenate([p.counts for p in parts]),
                   np.concatenate([p.index for p in parts]), tuple(i for p in parts for i in p.ids), num_classes)

    # -- views -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays and the identities (approximate for the strings)."""
        arrays = sum(a.nbytes for a in (self.indptr, self.classes, self.counts, self.index))
        return arrays + sum(len(i) + 49 for i in self.ids) + 8 * len(self.ids)

    def image_of_entry(self) -> np.ndarray:
        """For each stored entry, the row it belongs to."""
        return np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self.indptr))

    def dense(self, classes: np.ndarray | None = None, dtype=np.int64) -> np.ndarray:
        """``(N, K)`` counts of ``classes`` (all classes by default), zeros where absent."""
        if classes is None:
            out = np.zeros((len(self), self.num_classes), dtype=dtype)
            out[self.image_of_entry(), self.classes] = self.counts
            return out
        classes = np.asarray(classes, dtype=np.int64)
        column = np.full(self.num_classes, -1, dtype=np.int64)
        column[classes] = np.arange(len(classes))
        keep = column[self.classes] >= 0
        out = np.zeros((len(self), len(classes)), dtype=dtype)
        out[self.image_of_entry()[keep], column[self.classes[keep]]] = self.counts[keep]
        return out

    def present_classes(self) -> np.ndarray:
        """Classes with a pixel in at least one image, ascending."""
        return np.unique(self.classes).astype(np.int64)

    def images_containing(self) -> np.ndarray:
        """(C,) int64: in how many images each class has at least one pixel."""
        return np.bincount(self.classes, minlength=self.num_classes).astype(np.int64)

    def take(self, rows: np.ndarray) -> Rows:
        """The rows at positions ``rows``, in that order (repeats allowed)."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = np.diff(self.indptr)[rows]
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        starts = self.indptr[:-1][rows]
        entries = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
        return Rows(indptr, self.classes[entries], self.counts[entries], self.index[rows],
                    tuple(self.ids[r] for r in rows), self.num_classes)

    def sorted(self) -> Rows:
        """The same rows ordered by source index (stable), the order every `Stats` keeps."""
        if len(self) < 2 or bool(np.all(self.index[1:] >= self.index[:-1])):
            return self
        return self.take(np.argsort(self.index, kind="stable"))

    def content_order(self) -> np.ndarray:
        """A permutation that sorts the rows by their content (their counts), ties kept in place.

        The bootstrap draws images in this order, so its result depends on the multiset of images only,
        not on their order, identities or how the work was split.
        """
        if len(self) < 2:
            return np.arange(len(self))
        dense = np.ascontiguousarray(self.dense(self.present_classes(), dtype=">i8"))
        if dense.shape[1] == 0:
            return np.arange(len(self))
        keys = dense.view(np.dtype((np.void, dense.dtype.itemsize * dense.shape[1]))).ravel()
        return np.argsort(keys, kind="stable")

    # -- the sums they must reproduce ---------------------------------------------------------------
    def sums(self) -> tuple[np.ndarray, np.ndarray]:
        """Exact ``(count_sum (C,), count_outer_sum (C, C))`` as int64."""
        c = self.num_classes
        count_sum = np.zeros(c, dtype=np.int64)
        np.add.at(count_sum, self.classes, self.counts)
        outer = np.zeros((c, c), dtype=np.int64)
        present = self.present_classes()
        if not len(present):
            return count_sum, outer
        column = np.full(c, -1, dtype=np.int64)
        column[present] = np.arange(len(present))
        total = np.zeros((len(present), len(present)), dtype=np.int64)
        for start in range(0, len(self), SUMS_BLOCK):  # a few rows at a time made dense: memory stays small
            stop = min(len(self), start + SUMS_BLOCK)
            lo, hi = self.indptr[start], self.indptr[stop]
            block = np.zeros((stop - start, len(present)), dtype=np.float64)  # holds every count exactly
            image = np.repeat(np.arange(stop - start), np.diff(self.indptr[start:stop + 1]))
            block[image, column[self.classes[lo:hi]]] = self.counts[lo:hi]
            total += exact_outer_sum(block)
        outer[np.ix_(present, present)] = total
        return count_sum, outer

    def pixel_totals(self) -> np.ndarray:
        """Each image's total pixel count."""
        totals = np.zeros(len(self), dtype=np.int64)
        np.add.at(totals, self.image_of_entry(), self.counts)
        return totals

    # -- files -------------------------------------------------------------------------------------
    def to_arrays(self, prefix: str = "rows_") -> dict[str, np.ndarray]:
        """Arrays for an ``.npz``: identities as one UTF-8 blob (surrogate escapes kept) plus offsets."""
        encoded = [i.encode("utf-8", "surrogateescape") for i in self.ids]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        return {
            f"{prefix}indptr": self.indptr,
            f"{prefix}classes": self.classes,
            f"{prefix}counts": self.counts,
            f"{prefix}index": self.index,
            f"{prefix}id_offsets": offsets,
            f"{prefix}id_bytes": np.frombuffer(b"".join(encoded), dtype=np.uint8),
        }

    @classmethod
    def from_arrays(cls, data, num_classes: int, prefix: str = "rows_") -> Rows:
        """The inverse of `to_arrays`; raises ValueError on arrays that do not fit together."""
        indptr = np.asarray(data[f"{prefix}indptr"], dtype=np.int64)
        classes = np.asarray(data[f"{prefix}classes"])
        counts = np.asarray(data[f"{prefix}counts"])
        index = np.asarray(data[f"{prefix}index"], dtype=np.int64)
        offsets = np.asarray(data[f"{prefix}id_offsets"], dtype=np.int64)
        blob = np.asarray(data[f"{prefix}id_bytes"], dtype=np.uint8).tobytes()
        n = len(index)
        if indptr.shape != (n + 1,) or offsets.shape != (n + 1,):
            raise ValueError(f"row arrays disagree on the number of images ({n} indices, {len(indptr) - 1} rows, "
                             f"{len(offsets) - 1} identities)")
        if indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != len(classes) or len(classes) != len(counts):
            raise ValueError("row offsets do not match the stored entries")
        if offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] != len(blob):
            raise ValueError("identity offsets do not match the stored identities")
        if len(classes) and (classes.min() < 0 or classes.max() >= num_classes):
            raise ValueError(f"row entries name classes outside 0..{num_classes - 1}")
        if not (np.issubdtype(classes.dtype, np.integer) and np.issubdtype(counts.dtype, np.integer)):
            raise ValueError("row entries are not integers")
        if len(counts) and counts.min() <= 0:
            raise ValueError("row entries hold counts that are not positive")
        step = np.diff(classes.astype(np.int64))
        first_of_row = np.zeros(len(classes), dtype=bool)
        first_of_row[indptr[:-1][np.diff(indptr) > 0]] = True
        if np.any((step <= 0) & ~first_of_row[1:]):
            raise ValueError("a row lists a class twice or out of order")
        ids = tuple(blob[a:b].decode("utf-8", "surrogateescape") for a, b in zip(offsets[:-1], offsets[1:]))
        return cls(indptr, classes.astype(np.int32), counts.astype(np.int64), index, ids, num_classes)

"""Example images of a class: which images to show, reading them again, and drawing the class on them.

The set report (`fsd.set_page`) shows, for each class the generator draws too little or too much of,
the real and the generated images that hold the most of it. Everything here works from the per-image
rows of the statistics, so only the chosen images are read and segmented again, however large the set:

- `top_images`: the rows of the ``m`` images with the most pixels of a class (only images that hold
  it), ties broken by position in the source, then identity: deterministic, whatever order or split
  the statistics were computed in.
- `reopen`: the source recorded in saved statistics (a folder, ``.zip``, ``.tar`` shards, ``.npz``,
  LMDB, a ``save_to_disk`` folder), opened again.
- `read_examples`: the chosen images, preprocessed as the segmenter saw them, and segmented again;
  images that vanished or changed are reported, never a crash.
- `outline` / `overlay`: a class's pixels tinted and their boundary drawn, on the image the segmenter saw.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import FSDError, InputError
from .generators import GeneratorSource
from .palette import colorize
from .rows import Rows
from .segmenters.base import class_counts

__all__ = ["top_images", "outline", "overlay", "reopen", "Example", "read_examples", "display_image"]

HIGHLIGHT = (255, 0, 255)  # the outline of the class shown: magenta, rare in photos
TINT = 0.45  # share of the class colour in tinted pixels


def top_images(rows: Rows, class_index: int, m: int) -> list[int]:
    """Positions (in ``rows``) of the ``m`` images with the most pixels of ``class_index``, most first.

    Images without the class are never chosen, so fewer than ``m`` come back when fewer hold it. Ties
    are broken by the image's index in its source, then by its position in ``rows``. Vectorized: one
    sort of the images holding the class, however many there are.

    >>> r = Rows.from_dense(np.array([[0, 4], [3, 1], [0, 4], [4, 0]]), [10, 11, 12, 13], "abcd")
    >>> top_images(r, 1, 2), top_images(r, 0, 5)
    ([0, 2], [3, 1])
    """
    if m < 0:
        raise InputError(f"the number of examples must be >= 0, got {m}")
    if not 0 <= class_index < rows.num_classes:
        raise InputError(f"class index {class_index} is out of range [0, {rows.num_classes})")
    entries = np.flatnonzero(rows.classes == class_index)
    if m == 0 or len(entries) == 0:
        return []
    images = rows.image_of_entry()[entries]
    order = np.lexsort((images, rows.index[images], -rows.counts[entries]))  # last key sorts first
    return [int(i) for i in images[order[:m]]]


def outline(mask: np.ndarray) -> np.ndarray:
    """The boundary of a boolean ``(H, W)`` mask: its pixels with a 4-neighbour outside it (the border
    of the picture counts as outside).

    >>> m = np.zeros((5, 5), bool); m[1:4, 1:4] = True
    >>> outline(m).astype(int)[1:4, 1:4].tolist()
    [[1, 1, 1], [1, 0, 1], [1, 1, 1]]
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"a mask must have shape (H, W), got {mask.shape}")
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def overlay(image: np.ndarray, mask: np.ndarray, color: Sequence[int], outline_color: Sequence[int] = HIGHLIGHT,
            tint: float = TINT) -> np.ndarray:
    """``image`` (H, W, 3) uint8 with the pixels of ``mask`` tinted towards ``color`` and the mask's
    `outline` drawn in ``outline_color``; every other pixel unchanged."""
    image = np.asarray(image)
    mask = np.asarray(mask, dtype=bool)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} and image {image.shape[:2]} differ in size")
    out = image.copy()
    blended = np.rint((1 - tint) * image[mask].astype(np.float64) + tint * np.asarray(color, np.float64))
    out[mask] = blended.astype(np.uint8)
    out[outline(mask)] = np.asarray(outline_color, dtype=np.uint8)
    return out


def display_image(preprocessed: np.ndarray, num_classes: int) -> np.ndarray:
    """What to show of an image as the segmenter saw it: RGB (3, S, S) as (S, S, 3); a label map
    (1, S, S) (the ``labelmap`` segmenter's input) in the class colours."""
    preprocessed = np.asarray(preprocessed)
    if preprocessed.shape[0] == 3 and preprocessed.dtype == np.uint8:
        return np.ascontiguousarray(preprocessed.transpose(1, 2, 0))
    return colorize(preprocessed[0].astype(np.int64), num_classes)


# -- reading the chosen images again -------------------------------------------------------------------
_COUNT_SUFFIX = re.compile(r"^(?P<path>.+?) \((?:[^()]*)\)$")
_KEYED = re.compile(r"^(?P<path>.+)\['(?P<key>[^']*)'\]$")


def reopen(description: str, **options):
    """The source a statistics file recorded (its ``meta.source``), opened again with `open_source`.

    Raises `InputError` saying why when that is impossible: a generator or an in-memory array was
    recorded (nothing on disk to read), or the path no longer exists.
    """
    from .sources import open_source

    from .sources import is_shard_list

    if not description:
        raise InputError("the statistics do not record their source")
    path = description[len("lmdb:"):] if description.startswith("lmdb:") else description
    match = _COUNT_SUFFIX.match(description)  # "train-{000..009}.tar (10 shards)"
    for candidate in (path, match["path"] if match else None):
        if candidate and "{" in candidate and is_shard_list(candidate):
            return open_source(candidate, **options)  # a missing shard is named by the reader
    if not Path(path).exists():
        # "file.npz (100 images)", "<folder> (column 'image', ...)"
        keyed = _KEYED.match(match["path"]) if match else None  # "file.npz['arr_0'] (100 images)"
        if match and Path(match["path"]).exists():
            path = match["path"]
        elif keyed and Path(keyed["path"]).is_file():
            path = keyed["path"]
            options = {**options, "key": keyed["key"]}
        elif match or description.startswith(("array", "generator", "dataset", "images")):
            raise InputError(f"the recorded source {description!r} is not a file or folder (a generator or "
                             "images in memory): there is nothing to read again")
        else:
            raise InputError(f"the recorded source {path} does not exist any more")
    return open_source(path, **options)


@dataclass(frozen=True)
class Example:
    """One image read again: what the segmenter saw (``image``, (S, S, 3) uint8 for display), its labels
    (S, S), and whether its class counts equal those in the statistics (``matches``)."""

    row: int
    identity: str
    image: np.ndarray
    labels: np.ndarray
    matches: bool


def _relative(identity: str, root: str) -> str:
    """``identity`` without the source's own location (``root/a/b.png`` -> ``a/b.png``), so that the
    images of a moved folder or archive are found by the rest of their name."""
    for prefix in (root, root.split(" (", 1)[0]):
        if prefix and identity.startswith(prefix) and len(identity) > len(prefix):
            return identity[len(prefix):].lstrip("/\\!")
    return identity


def _locate(source, rows: Rows, positions: Sequence[int], recorded: str = "") -> tuple[dict[int, int], list[str]]:
    """Source index of each row position: by its recorded index when the identity still sits there, else
    by identity, else (a moved source) by the identity relative to the recorded source; and the
    identities not found."""
    found, missing, by_identity = {}, [], None
    size = len(source)
    for r in positions:
        index, identity = int(rows.index[r]), rows.ids[r]
        if 0 <= index < size and source.identity(index) == identity:
            found[r] = index
            continue
        if by_identity is None:
            by_identity = {}
            for i in range(size):
                name = source.identity(i)
                by_identity.setdefault(name, i)
                by_identity.setdefault(("relative", _relative(name, source.description)), i)
        key = identity if identity in by_identity else ("relative", _relative(identity, recorded))
        if recorded and key in by_identity:
            found[r] = by_identity[key]
        elif identity in by_identity:
            found[r] = by_identity[identity]
        else:
            missing.append(identity)
    return found, missing


def read_examples(source, rows: Rows, positions: Sequence[int], segmenter, *, seed: int = 1,
                  batch_size: int = 16, recorded: str = "") -> tuple[dict[int, Example], list[str]]:
    """Read the images at ``positions`` of ``rows`` from ``source`` (a `MapSource`, or the
    `GeneratorSource` whose samples they are: sample k is made again from the run's ``seed`` and k),
    preprocess and segment them again. Returns the examples by row position, and one line per image that
    could not be read (its identity and why). ``recorded``: the source the statistics recorded, when
    ``source`` is the same images moved elsewhere (they are then found by their names within it)."""
    positions = sorted(set(int(p) for p in positions))
    problems: list[str] = []
    prepared: dict[int, np.ndarray] = {}
    preprocessing = segmenter.preprocessing
    if isinstance(source, GeneratorSource):
        wanted = {int(rows.index[r]): r for r in positions}
        for r in positions:
            if rows.ids[r] != f"generator[{int(rows.index[r])}]":
                problems.append(f"{rows.ids[r]}: not a sample of a generator")
        indices = sorted(k for k, r in wanted.items() if rows.ids[r] == f"generator[{k}]")
        for batch in source.batches(indices, preprocessing, batch_size=batch_size, seed=source.sample_seed(seed)):
            for k, image in zip(batch.indices, batch.images):
                prepared[wanted[k]] = image.numpy()
    else:
        located, missing = _locate(source, rows, positions, recorded)
        problems += [f"{identity}: no longer in {source.description or 'the source'}" for identity in missing]
        for r, index in located.items():
            try:
                prepared[r] = source.read(index, preprocessing)
            except FSDError as exc:
                problems.append(f"{rows.ids[r]}: {exc}")
    examples: dict[int, Example] = {}
    order = sorted(prepared)
    num_classes = len(segmenter.class_names)
    expected = rows.take(np.array(order, dtype=np.int64)).dense() if order else None
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        images = torch.from_numpy(np.stack([prepared[r] for r in chunk]))
        with torch.no_grad():
            labels = segmenter.segment(images.to(segmenter.device)).cpu()
        counts = class_counts(labels, num_classes).numpy()
        for j, r in enumerate(chunk):
            examples[r] = Example(r, rows.ids[r], display_image(prepared[r], num_classes),
                                  labels[j].numpy().astype(np.int64),
                                  bool(np.array_equal(counts[j], expected[start + j])))
    return examples, problems

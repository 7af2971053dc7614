"""Where images come from: everything becomes a `Source` of uint8 images with a stable identity.

A `MapSource` holds images addressable by index (folders; archives and arrays build on it). Images are
decoded and resized in DataLoader workers; a worker never raises: it hands its error back with the
image's identity, so the main process can name the file or skip it and report it.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import ImageReadError, InputError
from .preprocess import prepare
from .segmenters.base import Preprocessing
from .stats import Stats

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


class MapSource:
    """Images addressable by index. Subclasses implement `__len__`, `identity` and `open`."""

    description: str = ""

    def __len__(self) -> int:
        raise NotImplementedError

    def identity(self, index: int) -> str:
        """A stable name of one image (its path, or ``archive!member``, or ``array[3]``)."""
        raise NotImplementedError

    def open(self, index: int) -> Image.Image:
        """The decoded image (fully loaded)."""
        raise NotImplementedError

    def read(self, index: int, preprocessing: Preprocessing) -> np.ndarray:
        """The preprocessed image; any failure becomes an `ImageReadError` naming it."""
        try:
            return prepare(self.open(index), preprocessing)
        except ImageReadError:
            raise
        except (InputError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise ImageReadError(self.identity(index), _reason(exc)) from exc


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "..."


def list_images(root: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
    """Image files under ``root``, recursively, in the paper's order.

    Directories in string order of their full path; within each directory its files in string order
    of their names. So a folder's own files come before its subfolders' files. Symbolic links to
    directories are followed once (a link back up the tree is not walked again).
    """
    root = os.fspath(root)
    exts = tuple(e.lower() for e in extensions)
    directories: list[str] = []
    seen: set[str] = set()
    stack = [root]
    while stack:
        directory = stack.pop()
        real = os.path.realpath(directory)
        if real in seen:
            continue
        seen.add(real)
        directories.append(directory)
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            raise InputError(f"cannot list folder {directory}: {exc.strerror or exc}") from exc
        stack.extend(e.path for e in entries if _is_dir(e))
    files: list[str] = []
    for directory in sorted(directories):
        names = sorted(
            e.name for e in os.scandir(directory)
            if e.name.lower().endswith(exts) and not _is_dir(e)
        )
        files.extend(os.path.join(directory, name) for name in names)
    return files


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


class FolderSource(MapSource):
    """Every image under a folder, recursively (extensions case-insensitive), in the paper's order."""

    def __init__(self, root: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"{self.root} is not a folder")
        self.paths = list_images(self.root, extensions)
        if not self.paths:
            raise InputError(
                f"no images found under {self.root} (looked recursively for {', '.join(extensions)})"
            )
        self.description = str(self.root)

    def __len__(self) -> int:
        return len(self.paths)

    def identity(self, index: int) -> str:
        return self.paths[index]

    def open(self, index: int) -> Image.Image:
        with Image.open(self.paths[index]) as image:
            image.load()
            return image


def select_indices(total: int, num_samples: int | None, seed: int) -> list[int]:
    """The paper's subset rule: shuffle ``range(total)`` with ``random.Random(seed)``, take the first k."""
    if num_samples is None:
        return list(range(total))
    if num_samples < 1:
        raise InputError(f"num_samples must be at least 1, got {num_samples}")
    if num_samples > total:
        raise InputError(
            f"asked for {num_samples} images but the source has only {total}; "
            "lower num_samples / --num-samples or add images"
        )
    indices = list(range(total))
    random.Random(seed).shuffle(indices)
    return indices[:num_samples]


@dataclass
class Batch:
    images: torch.Tensor  # (B, C, S, S): uint8 RGB, or int32 labels
    ids: list[str]


class _Reader(torch.utils.data.Dataset):
    def __init__(self, source: MapSource, indices: Sequence[int], preprocessing: Preprocessing):
        self.source, self.indices, self.preprocessing = source, indices, preprocessing

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        index = self.indices[k]
        try:
            return self.source.read(index, self.preprocessing), index, None
        except ImageReadError as exc:
            return None, index, exc.reason
        except Exception as exc:  # never let a worker die without naming the image
            return None, index, f"{type(exc).__name__}: {_reason(exc)}"


def _collate(items):
    good = [(torch.from_numpy(a), i) for a, i, err in items if err is None]
    bad = [(i, err) for a, i, err in items if err is not None]
    images = torch.stack([a for a, _ in good]) if good else None
    return images, [i for _, i in good], bad


def default_num_workers() -> int:
    """Loader workers: up to 8 on Linux (fork is cheap and safe); 0 elsewhere, where workers are
    spawned processes that re-import the caller's script (pass num_workers to opt in)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(0, min(8, cpus))


def iterate_batches(
    source: MapSource,
    indices: Sequence[int],
    preprocessing: Preprocessing,
    *,
    batch_size: int,
    num_workers: int,
    skip_bad_images: bool,
    skipped: list[tuple[str, str]],
    pin_memory: bool = False,
) -> Iterator[Batch]:
    """Decoded, preprocessed batches of ``source[indices]``, in order.

    A bad image raises `ImageReadError`, or with ``skip_bad_images`` is appended to ``skipped`` as
    ``(identity, reason)``.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    if num_workers < 0:
        raise InputError(f"num_workers must be >= 0, got {num_workers}")
    loader = torch.utils.data.DataLoader(
        _Reader(source, indices, preprocessing),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=pin_memory,
        prefetch_factor=4 if num_workers > 0 else None,
        persistent_workers=False,
    )
    for images, good, bad in loader:
        for index, reason in bad:
            if not skip_bad_images:
                raise ImageReadError(source.identity(index), reason)
            skipped.append((source.identity(index), reason))
        if images is not None:
            yield Batch(images, [source.identity(i) for i in good])


def open_source(source) -> MapSource | Stats:
    """A path (folder or saved statistics), a `MapSource`, or `Stats` -> a source or statistics."""
    if isinstance(source, (Stats, MapSource)):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            return FolderSource(path)
        if path.is_file():
            if path.suffix.lower() == ".npz":
                return Stats.load(path)
            raise InputError(f"{path} is a file but not saved statistics (.npz); pass a folder of images")
        raise InputError(f"{path}: no such file or folder")
    raise InputError(f"cannot use {type(source).__name__} as an image source; pass a folder or a .npz file")

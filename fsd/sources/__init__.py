"""Where images come from: every input becomes a `MapSource` of images with a stable identity.

`open_source` turns what a user has into a source (or into saved `Stats`):

=========================================  =====================  ==================================
input                                      source                 identity of one image
=========================================  =====================  ==================================
folder of image files (recursive)          `FolderSource`         ``path/to/img.png``
``.zip`` archive (recursive inside)        `ZipSource`            ``archive.zip!dir/img.png``
``.npz`` (``arr_0``, ADM batches) / .npy   `ArrayFileSource`      ``file.npz[12]``
LSUN LMDB (folder with ``data.mdb``)       `LmdbSource`           ``lmdb:<path>!<key>``
uint8 array / tensor, (N,H,W,C) (N,C,H,W)  `ArraySource`          ``array[12]``
Dataset, list of PIL images / paths,       `SequenceSource`       the path, or ``dataset[12]``
iterable (read into memory once)
=========================================  =====================  ==================================

``.npz`` files holding saved statistics (a ``format`` key, or pytorch-fid's ``mu``/``sigma``) open as
`Stats`. Float images need a declared range: ``ArraySource(x, value_range=(-1, 1))``; they become
uint8 by `fsd.preprocess.quantize`, the one rule for every float input.

Images are decoded in DataLoader workers; a worker never raises: it hands its error back with the
image's identity, so the main process can name the file or skip it and report it. A worker that dies
(a decoder crash, the out-of-memory killer) is named by the image it was reading.

Hostile files (docs/inputs.md has the full table). Folders and archives take every file whose name ends
in an image extension, so nothing is silently dropped: a zero-byte file, a non-image with an image
extension, a truncated or corrupt file, a dangling symbolic link, a link loop, a FIFO or device, an
unreadable file each give an `ImageReadError` naming it, or with ``skip_bad_images`` are skipped and
reported. Images with more pixels than PIL's decompression-bomb limit (2 x ``PIL.Image.MAX_IMAGE_PIXELS``,
about 179 megapixels) are refused; the environment variable ``FSD_MAX_IMAGE_PIXELS`` sets another limit
(0: none). EXIF orientation is ignored by default, as in the paper (``exif_transpose=True`` applies it).
Colour modes and 16-bit images: `fsd.preprocess`.

Where each kind lives (one module per family; a new kind is one new module and one line in `open_source`):

- `fsd.sources.base`: `MapSource`, decoding one image and the reasons it can fail
- `fsd.sources.folders`: folders of image files
- `fsd.sources.archives`: ``.zip`` archives, LMDB databases
- `fsd.sources.arrays`: arrays and tensors, ``.npy`` / ``.npz`` files
- `fsd.sources.datasets`: Datasets, lists, iterables
- `fsd.sources.loader`: the subset rule and the DataLoader that reads batches in worker processes
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from ..stats import Stats
from .archives import MAX_MEMBER_BYTES, LmdbSource, ZipSource
from .arrays import ArrayFileSource, ArraySource, Layout, is_saved_stats, npz_keys
from .base import IMAGE_EXTENSIONS, MAX_PIXELS_ENV, MapSource, SourceFormatError, decode_image, max_image_pixels
from .datasets import SequenceSource, materialize
from .folders import FolderSource, list_images
from .loader import Batch, default_num_workers, iterate_batches, select_indices

__all__ = [
    "open_source", "MapSource", "FolderSource", "ZipSource", "LmdbSource", "ArraySource", "ArrayFileSource",
    "SequenceSource", "SourceFormatError", "Batch", "Layout", "iterate_batches", "select_indices",
    "default_num_workers", "list_images", "materialize", "decode_image", "max_image_pixels", "npz_keys",
    "is_saved_stats", "IMAGE_EXTENSIONS", "MAX_PIXELS_ENV", "MAX_MEMBER_BYTES",
]


# -- turning what the user has into a source --------------------------------------------------------

def _open_path(path: Path) -> MapSource | Stats:
    if path.is_dir():
        if (path / "data.mdb").is_file():
            return LmdbSource(path)
        return FolderSource(path)
    if not path.is_file():
        if path.is_symlink():
            raise InputError(f"{path} is a dangling symbolic link")
        if path.exists():
            raise InputError(f"{path} is not a regular file or folder")
        raise InputError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return Stats.load(path) if is_saved_stats(path) else ArrayFileSource(path)
    if suffix == ".npy":
        return ArrayFileSource(path)
    if suffix == ".zip":
        return ZipSource(path)
    if suffix == ".mdb":
        return LmdbSource(path)
    if suffix in IMAGE_EXTENSIONS:
        return SequenceSource([path], name="image")
    raise InputError(
        f"{path} is not saved statistics (.npz) nor an image source fsd reads; pass a folder of images, "
        "a .zip archive, an .npz/.npy image array, an LMDB database (folder with data.mdb) or an image file"
    )


def open_source(source: object) -> MapSource | Stats:
    """Whatever the user has -> a `MapSource` (or `Stats` for saved statistics).

    Paths: folder, folder with ``data.mdb`` (LMDB), ``.zip``, ``.npz`` (statistics or an image array,
    told apart by their keys), ``.npy``, ``data.mdb``, a single image file. Objects: `Stats`,
    `MapSource`, uint8 arrays/tensors (N, H, W, C) or (N, C, H, W), PIL images, lists of images or paths,
    Datasets, iterables (read into memory once). Float arrays need ``ArraySource(x, value_range=...)``.
    """
    if isinstance(source, (Stats, MapSource)):
        return source
    if isinstance(source, (str, os.PathLike)):
        return _open_path(Path(source))
    if isinstance(source, Image.Image):
        return SequenceSource([source], name="image")
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return ArraySource(source)
    if isinstance(source, (bytes, bytearray)):
        raise InputError("cannot use bytes as an image source; pass a path, or a list of encoded images")
    if isinstance(source, Mapping) or (hasattr(source, "files") and hasattr(source, "zip")):
        raise InputError(f"cannot use a {type(source).__name__} as an image source; pass its path, or the "
                         "array that holds the images")
    if isinstance(source, torch.utils.data.IterableDataset):
        return materialize(source, name="dataset")
    if hasattr(source, "__len__") and hasattr(source, "__getitem__"):
        name = "images" if isinstance(source, (list, tuple)) else "dataset"
        return SequenceSource(source, name=name)
    if isinstance(source, Iterable):
        return materialize(source)
    raise InputError(
        f"cannot use {type(source).__name__} as an image source; pass a folder, archive, array file, "
        "LMDB database or saved statistics, or images in memory (arrays, tensors, PIL images, a Dataset)"
    )

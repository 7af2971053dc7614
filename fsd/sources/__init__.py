"""Where images come from: every input becomes a `MapSource` of images with a stable identity.

`open_source` turns what a user has into a source (or into saved `Stats`):

=========================================  =====================  ==================================
input                                      source                 identity of one image
=========================================  =====================  ==================================
folder of image files (recursive)          `FolderSource`         ``path/to/img.png``
``.zip`` archive (recursive inside)        `ZipSource`            ``archive.zip!dir/img.png``
``.tar`` shards, ``train-{000..099}.tar``  `TarSource`            ``train-007.tar/<key>``
``.npz`` (``arr_0``, ADM batches) / .npy   `ArrayFileSource`      ``file.npz[12]``
LSUN LMDB (folder with ``data.mdb``)       `LmdbSource`           ``lmdb:<path>!<key>``
uint8 array / tensor, (N,H,W,C) (N,C,H,W)  `ArraySource`          ``array[12]``
Hugging Face ``datasets.Dataset``, or      `HFDatasetSource`      ``dataset[12]``, ``<folder>[12]``
a folder written by ``save_to_disk``
Dataset, list of PIL images / paths,       `SequenceSource`       the path, or ``dataset[12]``
iterable (read into memory once)
=========================================  =====================  ==================================

``.npz`` files holding saved statistics (a ``format`` key, or pytorch-fid's ``mu``/``sigma``) open as
`Stats`. Float images need a declared range: ``ArraySource(x, value_range=(-1, 1))``; they become
uint8 by `fsd.preprocess.quantize`, the one rule for every float input.

Images are decoded in DataLoader workers; a worker never raises: it hands its error back with the
image's identity, so the main process can name the file or skip it and report it. A worker that dies
(a decoder crash, the out-of-memory killer) is named by the image it was reading.

Folders and archives read the paper's files by default: ``.jpg``, ``.jpeg``, ``.png``, links to folders
not followed (``extensions=`` and ``follow_links=True`` read more); image files left out are counted in
a warning that says how to include them.

Hostile files (docs/inputs.md has the full table). Folders and archives take every file whose name ends
in one of the extensions read, so nothing is silently dropped: a zero-byte file, a non-image with an image
extension, a truncated or corrupt file, a dangling symbolic link, a link loop, a FIFO or device, an
unreadable file each give an `ImageReadError` naming it, or with ``skip_bad_images`` are skipped and
reported. Images with more pixels than PIL's decompression-bomb limit (2 x ``PIL.Image.MAX_IMAGE_PIXELS``,
about 179 megapixels) are refused; the environment variable ``FSD_MAX_IMAGE_PIXELS`` sets another limit
(0: none). EXIF orientation is ignored by default, as in the paper (``exif_transpose=True`` applies it).
Colour modes and 16-bit images: `fsd.preprocess`.

Where each kind lives (one module per family; a new kind is one new module and one line in `open_source`):

- `fsd.sources.base`: `MapSource`, decoding one image and the reasons it can fail
- `fsd.sources.folders`: folders of image files
- `fsd.sources.archives`: ``.zip`` archives, ``.tar`` shards (WebDataset), LMDB databases
- `fsd.sources.arrays`: arrays and tensors, ``.npy`` / ``.npz`` files
- `fsd.sources.datasets`: Datasets, lists, iterables, Hugging Face datasets
- `fsd.sources.loader`: the subset rule and the DataLoader that reads batches in worker processes
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .._hints import option
from ..errors import InputError
from ..stats import Stats
from .archives import MAX_MEMBER_BYTES, LmdbSource, TarSource, ZipSource, expand_braces, is_shard_list
from .arrays import ArrayFileSource, ArraySource, Layout, is_saved_stats, npz_keys
from .base import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS_ENV,
    OTHER_IMAGE_EXTENSIONS,
    MapSource,
    SourceFormatError,
    decode_image,
    image_extensions,
    max_image_pixels,
)
from .datasets import HFDatasetSource, SequenceSource, is_hf_dataset, is_saved_hf_dataset, materialize
from .folders import FolderSource, list_images
from .loader import Batch, default_num_workers, iterate_batches, select_indices

__all__ = [
    "open_source", "OptionDoesNotApply", "MapSource", "FolderSource", "ZipSource", "TarSource", "expand_braces", "HFDatasetSource", "LmdbSource", "ArraySource", "ArrayFileSource",
    "SequenceSource", "SourceFormatError", "Batch", "Layout", "iterate_batches", "select_indices",
    "default_num_workers", "list_images", "materialize", "decode_image", "max_image_pixels", "npz_keys",
    "is_saved_stats", "image_extensions", "IMAGE_EXTENSIONS", "OTHER_IMAGE_EXTENSIONS", "MAX_PIXELS_ENV", "MAX_MEMBER_BYTES",
]


# -- turning what the user has into a source --------------------------------------------------------

# Options of `open_source`, each with its command-line spelling, and the kinds they apply to.
_OPTIONS = {"extensions": "--extensions", "follow_links": "--follow-links", "exif_transpose": "--exif-transpose",
            "value_range": "--value-range", "layout": "--layout", "key": "--key", "image_column": "--image-column"}
_DECODED = {"exif_transpose"}  # every kind that decodes image files
_ARRAYS = {"value_range", "layout"}


class OptionDoesNotApply(InputError):
    """An option of `open_source` given for a kind of source it does not apply to. ``options`` names them."""

    def __init__(self, message: str, options: list[str]):
        super().__init__(message)
        self.options = options


def _check_applies(given: dict[str, object], accepted: set[str], what: str) -> None:
    """An option that does not apply to the kind of source is refused, never silently ignored."""
    unused = [name for name in given if name not in accepted]
    if unused:
        names = [option(f"{n}=", _OPTIONS[n]) for n in unused]
        takers = {"extensions": "folders and archives", "follow_links": "folders",
                  "exif_transpose": "image files (folders, archives, LMDB, datasets)",
                  "value_range": "image arrays (.npz, .npy, arrays, datasets of arrays)",
                  "layout": "image arrays (.npz, .npy, arrays, batches of an iterable)", "key": ".npz image arrays",
                  "image_column": "Hugging Face datasets"}
        raise OptionDoesNotApply(
            f"{', '.join(names)} {'does' if len(names) == 1 else 'do'} not apply to {what}: "
            + "; ".join(f"{option(f'{n}=', _OPTIONS[n])} applies to {takers[n]}" for n in unused), unused)


def _split_npz_key(path: Path) -> tuple[Path, str | None]:
    """``file.npz:key`` -> (``file.npz``, ``key``) when no file of the whole name exists."""
    text = os.fspath(path)
    if not path.exists() and ":" in text:
        head, key = text.rsplit(":", 1)
        if head.lower().endswith(".npz") and key and Path(head).is_file():
            return Path(head), key
    return path, None


def _open_path(path: Path, given: dict[str, object]) -> MapSource | Stats:
    if is_shard_list(path):
        _check_applies(given, _DECODED | {"extensions"}, f"the tar shards {path}")
        return TarSource(path, **given)
    path, key_in_path = _split_npz_key(path)
    if key_in_path is not None:
        if given.get("key", key_in_path) != key_in_path:
            raise InputError(f"{path}:{key_in_path} names the array {key_in_path!r} and "
                             f"{option('key=', '--key')} {given['key']!r} another; give one")
        given = {**given, "key": key_in_path}
    if path.is_dir():
        if is_saved_hf_dataset(path):
            _check_applies(given, _DECODED | {"image_column"}, f"the saved Hugging Face dataset {path}")
            return HFDatasetSource(path, **given)
        if (path / "data.mdb").is_file():
            _check_applies(given, _DECODED, f"the LMDB database {path}")
            return LmdbSource(path, **given)
        _check_applies(given, _DECODED | {"extensions", "follow_links"}, f"the folder {path}")
        return FolderSource(path, **given)
    if not path.is_file():
        if path.is_symlink():
            raise InputError(f"{path} is a dangling symbolic link")
        if path.exists():
            raise InputError(f"{path} is not a regular file or folder")
        raise InputError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        if is_saved_stats(path):
            _check_applies(given, set(), f"{path}, which holds saved statistics (no images)")
            return Stats.load(path)
        _check_applies(given, _ARRAYS | {"key"}, f"the image array {path}")
        return ArrayFileSource(path, **given)
    if suffix == ".npy":
        _check_applies(given, _ARRAYS, f"the image array {path}")
        return ArrayFileSource(path, **given)
    if suffix == ".zip":
        _check_applies(given, _DECODED | {"extensions"}, f"the zip archive {path}")
        return ZipSource(path, **given)
    if suffix == ".mdb":
        _check_applies(given, _DECODED, f"the LMDB database {path}")
        return LmdbSource(path, **given)
    if suffix in IMAGE_EXTENSIONS + OTHER_IMAGE_EXTENSIONS:
        _check_applies(given, _DECODED, f"the image file {path}")
        return SequenceSource([path], name="image", **given)
    raise InputError(
        f"{path} is not saved statistics (.npz) nor an image source fsd reads; pass a folder of images, "
        "a .zip archive, .tar shards, an .npz/.npy image array, an LMDB database (folder with data.mdb) or an "
        "image file"
    )


def open_source(
    source: object,
    *,
    extensions: str | Sequence[str] | None = None,
    follow_links: bool = False,
    exif_transpose: bool = False,
    value_range: tuple[float, float] | None = None,
    layout: Layout | None = None,
    key: str | None = None,
    image_column: str | None = None,
) -> MapSource | Stats:
    """Whatever the user has -> a `MapSource` (or `Stats` for saved statistics).

    Paths: folder, folder with ``data.mdb`` (LMDB), ``.zip``, ``.tar`` shards (one file, a brace pattern
    ``train-{000000..000099}.tar``, or a list of ``.tar`` paths), ``.npz`` (statistics or an image array,
    told apart by their keys; ``file.npz:key`` names the array), ``.npy``, ``data.mdb``, a single image
    file, a folder written by a Hugging Face dataset's ``save_to_disk``. Objects: `Stats`, `MapSource`,
    a Hugging Face ``datasets.Dataset``, uint8 arrays/tensors (N, H, W, C) or (N, C, H, W), PIL images,
    lists of images or paths, Datasets, iterables (read into memory once).

    Options, each refused where it does not apply: ``extensions`` and ``follow_links`` (folders,
    archives: which files are images; default the paper's ``.jpg .jpeg .png``, links to folders not
    followed), ``exif_transpose`` (decoded image files), ``value_range`` (float images, e.g. ``(-1, 1)``),
    ``layout`` (``"NHWC"`` / ``"NCHW"`` where an array's shape fits both), ``key`` (the array of an ``.npz``),
    ``image_column`` (of a Hugging Face dataset; default its first ``datasets.Image`` column).
    """
    given = {name: value for name, value, default in (
        ("extensions", extensions, None), ("follow_links", follow_links, False),
        ("exif_transpose", exif_transpose, False), ("value_range", value_range, None),
        ("layout", layout, None), ("key", key, None), ("image_column", image_column, None)) if value != default}
    if isinstance(source, (Stats, MapSource)):
        _check_applies(given, set(), f"a {type(source).__name__}, which is already open")
        return source
    if isinstance(source, (str, os.PathLike)):
        return _open_path(Path(source), given)
    if is_shard_list(source):
        _check_applies(given, _DECODED | {"extensions"}, "tar shards")
        return TarSource(source, **given)
    if is_hf_dataset(source):
        _check_applies(given, _DECODED | {"image_column"}, f"a Hugging Face {type(source).__name__}")
        return HFDatasetSource(source, **given)
    if isinstance(source, Image.Image):
        _check_applies(given, _DECODED, "a PIL image")
        return SequenceSource([source], name="image", **given)
    if isinstance(source, (np.ndarray, torch.Tensor)):
        _check_applies(given, _ARRAYS, f"an {type(source).__name__}")
        return ArraySource(source, **given)
    if isinstance(source, (bytes, bytearray)):
        raise InputError("cannot use bytes as an image source; pass a path, or a list of encoded images")
    if isinstance(source, Mapping) or (hasattr(source, "files") and hasattr(source, "zip")):
        raise InputError(f"cannot use a {type(source).__name__} as an image source; pass its path, or the "
                         "array that holds the images")
    if isinstance(source, torch.utils.data.IterableDataset):
        _check_applies(given, {"value_range", "layout"}, f"a {type(source).__name__}")
        return materialize(source, name="dataset", **given)
    if hasattr(source, "__len__") and hasattr(source, "__getitem__"):
        _check_applies(given, _DECODED | {"value_range"}, f"a {type(source).__name__}")
        name = "images" if isinstance(source, (list, tuple)) else "dataset"
        return SequenceSource(source, name=name, **given)
    if isinstance(source, Iterable):
        _check_applies(given, {"value_range", "layout"}, f"a {type(source).__name__}")
        return materialize(source, **given)
    raise InputError(
        f"cannot use {type(source).__name__} as an image source; pass a folder, archive, array file, "
        "LMDB database or saved statistics, or images in memory (arrays, tensors, PIL images, a Dataset)"
    )

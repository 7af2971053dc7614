"""Datasets, lists of images or paths, iterables read into memory once, and Hugging Face datasets."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .._hints import option
from .._text import plural
from ..errors import InputError
from .arrays import Layout, _channel_axis, _check_dtype, _to_numpy, _to_uint8
from .base import MapSource, SourceFormatError, _read_bytes, _read_file, _Unreadable


def _first_of_pair(item):
    """torchvision-style ``(image, target)`` -> image; Hugging Face-style ``{"image": ...}`` -> image."""
    if isinstance(item, tuple) and item:
        return item[0]
    if isinstance(item, Mapping):
        for key in ("image", "img", "pixel_values"):
            if key in item:
                return item[key]
        raise SourceFormatError(f"dataset items are mappings without an 'image' key (keys: {list(item)[:8]})")
    return item


def _single_array_image(value, value_range, what: str) -> np.ndarray:
    """One in-memory image -> uint8 (H, W, 3) or (H, W). Tensors are taken as (C, H, W) when the first
    axis has 1 or 3 entries (torch's convention), numpy arrays as (H, W, C) (PIL's convention)."""
    is_tensor = isinstance(value, torch.Tensor)
    array = _to_numpy(value)
    _check_dtype(array.dtype, value_range, what, "fsd.sources.SequenceSource(dataset, {})")
    if array.ndim == 3:
        chw, hwc = array.shape[0] in (1, 3), array.shape[2] in (1, 3)
        if chw and (is_tensor or not hwc):
            array = array.transpose(1, 2, 0)
        elif not hwc:
            raise SourceFormatError(f"{what} has shape {array.shape}; expected (H, W, 3), (3, H, W) or (H, W)")
        if array.shape[2] == 1:
            array = array[:, :, 0]
    elif array.ndim != 2:
        raise SourceFormatError(f"{what} has shape {array.shape}; expected (H, W, 3), (3, H, W) or (H, W)")
    return _to_uint8(array, value_range)


class SequenceSource(MapSource):
    """Anything indexable with a length: a ``torch.utils.data.Dataset``, a list of PIL images, of file
    paths, of encoded bytes, or of single-image arrays/tensors. Items may be ``(image, target)`` pairs or
    mappings with an ``"image"`` key. Float items need ``value_range`` (quantized by the one rule)."""

    def __init__(self, items, value_range: tuple[float, float] | None = None, *, name: str = "dataset",
                 exif_transpose: bool = False):
        if not (hasattr(items, "__len__") and hasattr(items, "__getitem__")):
            raise SourceFormatError(
                f"SequenceSource needs an indexable object with a length, got {type(items).__name__}")
        if len(items) == 0:
            raise InputError(f"{name} ({type(items).__name__}) holds no images")
        self.items = items
        self.value_range = value_range
        self.name = name
        self.exif_transpose = exif_transpose
        self.description = f"{name} ({type(items).__name__}, {plural(len(items), 'image')})"
        if isinstance(items, (list, tuple)):
            for item in items:  # decode lazily opened files now: forked workers must not share their handles
                if isinstance(item, Image.Image):
                    item.load()

    def __len__(self) -> int:
        return len(self.items)

    def identity(self, index: int) -> str:
        if isinstance(self.items, (list, tuple)):
            item = self.items[index]
            if isinstance(item, (str, os.PathLike)):
                return os.fspath(item)
            if isinstance(item, Image.Image) and getattr(item, "filename", ""):
                return os.fspath(item.filename)  # opened from a file: named by it
        return f"{self.name}[{index}]"

    def open(self, index: int) -> Image.Image:
        item = _first_of_pair(self.items[index])
        if isinstance(item, Image.Image):
            item.load()
            return ImageOps.exif_transpose(item) if self.exif_transpose else item
        if isinstance(item, (str, os.PathLike)):
            return _read_file(os.fspath(item), self.exif_transpose)
        if isinstance(item, (bytes, bytearray, memoryview)):
            return _read_bytes(bytes(item), self.exif_transpose)
        if isinstance(item, (np.ndarray, torch.Tensor)):
            try:
                image = _single_array_image(item, self.value_range, f"{self.identity(index)} ({type(item).__name__})")
            except InputError as exc:
                raise SourceFormatError(str(exc)) from None
            return Image.fromarray(np.ascontiguousarray(image))
        raise SourceFormatError(f"{self.identity(index)} is of type {type(item).__name__}, not an image "
                                "(expected a PIL image, path, bytes, array or tensor)")


def materialize(iterable: Iterable, value_range: tuple[float, float] | None = None, *,
                name: str | None = None, layout: Layout | None = None) -> SequenceSource:
    """Read an iterable without a length (a generator, an ``IterableDataset``, a ``DataLoader``) into
    memory once. Batches, 4-D arrays/tensors or ``(images, targets)`` pairs of them, are split into
    images; PIL images are decoded now. For streams too large for memory, write them to a folder first.
    ``name`` (default: the iterable's type, e.g. ``DataLoader``) names the images: ``DataLoader[12]``;
    ``layout`` (``"NHWC"`` / ``"NCHW"``) settles batches whose shape fits both."""
    name = name or type(iterable).__name__
    items: list = []
    for element in iterable:
        first = element[0] if isinstance(element, (tuple, list)) and element else element
        if isinstance(first, (np.ndarray, torch.Tensor)) and first.ndim == 4:
            array = _to_numpy(first)
            axis = _channel_axis(array.shape, layout, f"a batch from {name}", "fsd.sources.materialize(iterable, {})")
            images = list(np.moveaxis(array, axis, -1))
        elif isinstance(element, list):
            images = element  # a batch given as a list of images
        else:
            images = [first]  # an image, or an (image, target) pair
        for image in images:
            if isinstance(image, Image.Image):
                image.load()
            items.append(_to_numpy(image))
    if not items:
        raise InputError(f"{name} ({type(iterable).__name__}) yielded no images")
    source = SequenceSource(items, value_range, name=name)
    kind = "" if name == type(iterable).__name__ else f"{type(iterable).__name__}, "
    source.description = f"{name} ({kind}{plural(len(items), 'image')} read into memory)"
    return source



# -- Hugging Face datasets -------------------------------------------------------------------------------

def _import_datasets():
    try:
        import datasets
    except ImportError as exc:
        raise ImportError(
            "reading Hugging Face datasets needs the datasets package: pip install datasets  "
            "(or pip install 'pytorch-fsd[datasets]')"
        ) from exc
    return datasets


def is_hf_dataset(source: object) -> bool:
    """A Hugging Face dataset (or dict of splits, or streaming dataset); the package is not imported
    here: a caller holding one has imported it."""
    package = sys.modules.get("datasets")
    kinds = tuple(k for k in (getattr(package, n, None) for n in ("Dataset", "DatasetDict", "IterableDataset",
                                                                  "IterableDatasetDict")) if isinstance(k, type))
    return bool(kinds) and isinstance(source, kinds)


def is_saved_hf_dataset(path: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` (or ``DatasetDict.save_to_disk``)."""
    return path.is_dir() and ((path / "state.json").is_file() and (path / "dataset_info.json").is_file()
                              or (path / "dataset_dict.json").is_file())


class HFDatasetSource(MapSource):
    """The images of a Hugging Face `datasets.Dataset`, or of a folder its ``save_to_disk`` wrote.

    ``image_column``: the column holding the images, by default the first of type ``datasets.Image``.
    The encoded bytes are decoded here, as image files are (same checks, same errors), so a dataset
    built from files gives the statistics of the files. Identity: ``name[12]``, the row index (``name``
    is the folder, or ``dataset``). Needs the optional ``datasets`` package.
    """

    def __init__(self, dataset, image_column: str | None = None, *, exif_transpose: bool = False,
                 name: str | None = None):
        datasets = _import_datasets()
        self.exif_transpose = exif_transpose
        if isinstance(dataset, (str, os.PathLike)):
            folder = Path(dataset)
            if (folder / "dataset_dict.json").is_file():
                splits = sorted(p.name for p in folder.iterdir() if (p / "state.json").is_file())
                raise InputError(f"{folder} holds a DatasetDict with splits {', '.join(splits)}; pass one "
                                 f"split's folder, e.g. {folder / (splits[0] if splits else 'train')}")
            try:
                dataset = datasets.load_from_disk(os.fspath(folder))
            except Exception as exc:
                raise InputError(f"cannot load the saved dataset {folder}: {exc}") from exc
            name = name or os.fspath(folder)
        if isinstance(dataset, datasets.DatasetDict):
            splits = list(dataset)
            raise InputError(f"a DatasetDict with splits {', '.join(splits)}: pass one split, e.g. "
                             f"dataset[{(splits[0] if splits else 'train')!r}]")
        if not isinstance(dataset, datasets.Dataset):
            raise InputError(f"a {type(dataset).__name__} is not a datasets.Dataset; streaming datasets cannot be "
                             "read at random: load it without streaming=True, or save_to_disk first")
        features = dataset.features
        images = [column for column, feature in features.items() if isinstance(feature, datasets.Image)]
        if image_column is None:
            if not images:
                raise InputError(f"the dataset has no image column (of type datasets.Image) among its columns "
                                 f"{', '.join(features)}; name one with "
                                 + option("image_column=...", "--image-column NAME")
                                 + " after casting it with dataset.cast_column(NAME, datasets.Image())")
            image_column = images[0]
        elif image_column not in features:
            raise InputError(f"the dataset has no column {image_column!r}; its columns: {', '.join(features)}")
        elif image_column not in images:
            raise InputError(f"column {image_column!r} is of type {features[image_column]}, not datasets.Image"
                             + (f"; its image columns: {', '.join(images)}" if images else ""))
        self.image_column = image_column
        # The encoded bytes, not PIL images: decoded here with fsd's checks and reasons.
        self.rows = dataset.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
        self.rows = self.rows.with_format(None)
        if len(self.rows) == 0:
            raise InputError(f"{name or 'the dataset'} has no rows")
        self.name = name or "dataset"
        self.description = f"{self.name} (column {image_column!r}, {plural(len(self.rows), 'image')})"

    def __len__(self) -> int:
        return len(self.rows)

    def identity(self, index: int) -> str:
        return f"{self.name}[{index}]"

    def open(self, index: int) -> Image.Image:
        value = self.rows[index][self.image_column]
        if value is None:
            raise _Unreadable(f"no image in column {self.image_column!r} (the value is missing)")
        data, path = value.get("bytes"), value.get("path")
        if data is not None:
            return _read_bytes(bytes(data), self.exif_transpose)
        if path:
            return _read_file(path, self.exif_transpose)
        raise _Unreadable(f"column {self.image_column!r} holds neither bytes nor a path")

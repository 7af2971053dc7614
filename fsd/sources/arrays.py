"""Arrays and tensors in memory, and the ``.npy`` / ``.npz`` files that hold them (memory-mapped)."""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from ..errors import ImageReadError, InputError
from ..preprocess import check_value_range, parse_value_range, prepare, prepare_array, quantize
from ..segmenters.base import Preprocessing
from .._hints import option
from .base import MapSource, SourceFormatError, _reason

Layout = Literal["NHWC", "NCHW"]


IN_MEMORY = "fsd.sources.ArraySource(x, {})"  # how a keyword is passed, for hints (`_keyword`)


def _keyword(how: str, keywords: list[str], cli: str) -> str:
    """What to pass, where the user is: ``cli`` on the command line, else ``how`` with the first keyword
    filled in and the others as alternatives (``ArraySource(x, layout='NHWC') or layout='NCHW'``)."""
    return option(" or ".join([how.format(keywords[0]), *keywords[1:]]), cli)


def _float_hint(what: str, how: str) -> str:
    return (f"{what} holds float images: declare their range, e.g. "
            + _keyword(how, ["value_range=(-1, 1)", "value_range=(0, 1)"], "--value-range -1,1 or --value-range 0,1")
            + "; uint8 images need no range")


def _channel_axis(shape: tuple[int, ...], layout: Layout | None, what: str, how: str = IN_MEMORY) -> int:
    if len(shape) != 4:
        hint = ("; one image? add a batch axis (x[None]); a batch of grayscale images? add a channel axis "
                "(x[..., None])") if len(shape) in (2, 3) else ""
        raise SourceFormatError(f"{what} must have shape (N, H, W, C) or (N, C, H, W) with C = 1 or 3, "
                                f"got {tuple(shape)}{hint}")
    if layout is not None:
        if layout not in ("NHWC", "NCHW"):
            raise SourceFormatError(f"layout must be 'NHWC' or 'NCHW', got {layout!r}")
        axis = 3 if layout == "NHWC" else 1
        if shape[axis] not in (1, 3):
            raise SourceFormatError(f"{what} has shape {tuple(shape)}: {shape[axis]} channels for layout {layout}")
        return axis
    last, first = shape[3] in (1, 3), shape[1] in (1, 3)
    if last and first:
        raise SourceFormatError(f"{what} has shape {tuple(shape)}, which could be NHWC or NCHW; pass "
                                + _keyword(how, ["layout='NHWC'", "layout='NCHW'"], "--layout NHWC or --layout NCHW"))
    if not (last or first):
        raise SourceFormatError(f"{what} must have shape (N, H, W, C) or (N, C, H, W) with C = 1 or 3, "
                                f"got {tuple(shape)}")
    return 3 if last else 1


def _to_numpy(data) -> np.ndarray:
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu()
        if data.dtype == torch.bfloat16:
            data = data.float()
        return data.numpy()
    return data


def _check_dtype(dtype: np.dtype, value_range, what: str, how: str = IN_MEMORY) -> None:
    if value_range is not None:
        try:
            declared = parse_value_range(value_range)
        except InputError as exc:
            raise SourceFormatError(str(exc)) from None
    if dtype == np.uint8:
        if value_range is not None and declared != (0.0, 255.0):
            given = option(f"value_range={value_range}", "--value-range " + ",".join(f"{v:g}" for v in declared))
            raise SourceFormatError(f"{what} is uint8 (0..255); {given} does not apply, leave it out")
        return
    if dtype == np.bool_ or not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise SourceFormatError(f"{what} has dtype {dtype}; images must be uint8, or float with a value_range")
    if value_range is None:
        if np.issubdtype(dtype, np.floating):
            raise SourceFormatError(_float_hint(what, how))
        raise SourceFormatError(f"{what} has dtype {dtype}: convert it to uint8, or declare its range, e.g. "
                                + _keyword(how, ["value_range=(0, 65535)"], "--value-range 0,65535"))


def _to_uint8(image: np.ndarray, value_range) -> np.ndarray:
    """One image's values -> uint8 by the one quantization rule."""
    if image.dtype == np.uint8:
        return image
    if np.issubdtype(image.dtype, np.integer):
        # float64 in numpy: torch before 2.3 has no uint16, uint32 or uint64 tensors
        values = torch.from_numpy(image.astype(np.float64))
    else:
        values = torch.from_numpy(np.array(image))  # a copy: memory-mapped files are read-only
    return quantize(values, value_range).numpy()


class ArraySource(MapSource):
    """A batch of images in memory: numpy array or torch tensor, (N, H, W, C) or (N, C, H, W), C = 1
    (grayscale) or 3 (RGB). uint8 as is; float (or wider integer) images need ``value_range`` and are
    quantized by `fsd.preprocess.quantize`, image by image. ``layout`` settles shapes that fit both."""

    how = IN_MEMORY  # for hints: how this source's keywords are passed

    def __init__(self, data, value_range: tuple[float, float] | None = None, *, layout: Layout | None = None,
                 name: str = "array"):
        self.name = name
        self.value_range = value_range
        self._array: np.ndarray | None = _to_numpy(data)
        if not isinstance(self._array, np.ndarray):
            raise SourceFormatError(f"ArraySource takes a numpy array or torch tensor, got {type(data).__name__}")
        self._setup(self._array.shape, self._array.dtype, layout)
        self.description = f"{name} ({len(self)} images)"

    def _setup(self, shape: tuple[int, ...], dtype: np.dtype, layout: Layout | None) -> None:
        what = f"{self.name} {dtype} {tuple(shape)}"
        self.channel_axis = _channel_axis(tuple(shape), layout, what, self.how)
        _check_dtype(dtype, self.value_range, what, self.how)
        if shape[0] == 0:
            raise SourceFormatError(f"{what} holds no images")
        if dtype != np.uint8:
            self._check_range(what)

    def _check_range(self, what: str) -> None:
        """Validate the declared range over all images once, in chunks of about 64 MB."""
        array = self.images()
        per_image = max(1, int(np.prod(array.shape[1:])) * array.dtype.itemsize)
        step = max(1, (64 << 20) // per_image)
        vmin, vmax, finite = np.inf, -np.inf, True
        for start in range(0, array.shape[0], step):
            chunk = np.asarray(array[start:start + step])
            if np.issubdtype(chunk.dtype, np.floating) and not np.isfinite(chunk).all():
                finite = False
                break
            vmin, vmax = min(vmin, float(chunk.min())), max(vmax, float(chunk.max()))
        try:
            check_value_range(self.value_range, vmin, vmax, finite)
        except InputError as exc:
            raise SourceFormatError(f"{what}: {exc}") from None

    def images(self) -> np.ndarray:
        return self._array

    def __len__(self) -> int:
        return int(self.images().shape[0])

    def identity(self, index: int) -> str:
        return f"{self.name}[{index}]"

    def image_array(self, index: int) -> np.ndarray:
        """Image ``index`` as uint8 (H, W, 3) or (H, W)."""
        image = np.asarray(self.images()[index])
        if self.channel_axis == 1:
            image = image.transpose(1, 2, 0)
        if image.shape[2] == 1:
            image = image[:, :, 0]
        return _to_uint8(image, self.value_range)

    def open(self, index: int) -> Image.Image:
        return Image.fromarray(np.ascontiguousarray(self.image_array(index)))

    def read(self, index: int, preprocessing: Preprocessing) -> np.ndarray:
        try:
            image = self.image_array(index)
            if image.ndim == 3:
                return prepare_array(image, preprocessing)
            return prepare(Image.fromarray(np.ascontiguousarray(image)), preprocessing)
        except (ImageReadError, SourceFormatError):
            raise
        except Exception as exc:
            raise ImageReadError(self.identity(index), _reason(exc)) from exc


def _npz_member_memmap(path: Path, member: str) -> np.memmap | None:
    """A read-only memory map of an uncompressed ``.npy`` member of an ``.npz`` (``np.savez``'s
    default), so a 10 GB reference batch is not read into memory; ``None`` when it cannot be mapped."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        return None
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        header = fh.read(30)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            return None
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        fh.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            return None
        offset = fh.tell()
    if dtype.hasobject or not shape:
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def npz_keys(path: str | os.PathLike) -> list[str]:
    """Names of the arrays in an ``.npz`` file (without reading them)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{path} is not a readable .npz file: {exc}") from exc


def is_saved_stats(path: str | os.PathLike) -> bool:
    """Whether an ``.npz`` holds statistics (ours: a ``format`` key; pytorch-fid's: ``mu``, ``sigma``)
    rather than images."""
    keys = set(npz_keys(path))
    return "format" in keys or {"mu", "sigma"} <= keys


class ArrayFileSource(ArraySource):
    """Images in a ``.npy`` file or in one array of an ``.npz`` (default ``arr_0``, the layout of
    ADM/guided-diffusion sample and reference batches). Memory-mapped where possible."""

    how = "fsd.sources.open_source(path, {})"

    def __init__(self, path: str | os.PathLike, key: str | None = None,
                 value_range: tuple[float, float] | None = None, *, layout: Layout | None = None):
        self.path = Path(path)
        self.key = key
        self.name = str(self.path)
        self.value_range = value_range
        self._array = None
        if self.path.suffix.lower() == ".npz":
            keys = npz_keys(self.path)
            if key is None:
                if "arr_0" in keys:
                    self.key = "arr_0"
                elif len(keys) == 1:
                    self.key = keys[0]
                else:
                    raise InputError(f"{self.path} holds arrays {keys[:10]}; none is arr_0, so say which holds "
                                     "the images: " + _keyword(self.how, ["key='NAME'"],
                                                               f"--key NAME, or {self.path}:NAME"))
            elif key not in keys:
                raise InputError(f"{self.path} has no array {key!r}; it holds {keys[:10]}")
            what = f"{self.path}[{self.key!r}]"
        elif key is not None:
            raise InputError(f"{option(f'key={key!r}', f'--key {key}')} applies to .npz files only, "
                             f"{self.path} is not one")
        else:
            what = str(self.path)
        array = self.images()
        try:
            self._setup(array.shape, array.dtype, layout)
        except SourceFormatError as exc:
            if array.ndim == 2 and np.issubdtype(array.dtype, np.floating):
                raise SourceFormatError(f"{exc} (a 2-D float array looks like per-image values, "
                                        "not images)") from None
            raise
        self.description = f"{what} ({len(self)} images)"

    def images(self) -> np.ndarray:
        if self._array is None:
            self._array = self._load()
        return self._array

    def _load(self) -> np.ndarray:
        try:
            if self.path.suffix.lower() == ".npz":
                mapped = _npz_member_memmap(self.path, f"{self.key}.npy")
                if mapped is not None:
                    return mapped
                with np.load(self.path, allow_pickle=False) as data:
                    return data[self.key]
            return np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise InputError(f"cannot read arrays from {self.path}: {exc}") from exc

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if isinstance(self._array, np.memmap):
            state["_array"] = None  # re-mapped in the worker process
        return state


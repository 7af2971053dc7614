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
"""

from __future__ import annotations

import errno
import io
import os
import posixpath
import random
import re
import stat
import struct
import sys
import threading
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageReadError, InputError
from .preprocess import check_value_range, parse_value_range, prepare, prepare_array, quantize
from .segmenters.base import Preprocessing
from .stats import Stats

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
MAX_PIXELS_ENV = "FSD_MAX_IMAGE_PIXELS"
MAX_MEMBER_BYTES = 1 << 30  # an archive member larger than this once extracted is refused
Layout = Literal["NHWC", "NCHW"]


class SourceFormatError(InputError):
    """The source as a whole is unusable (float images without a declared range, items that are not
    images). Unlike an `ImageReadError` it is never skipped: every image would fail the same way."""


class _Unreadable(Exception):
    """Raised inside `MapSource.open` with a reason; `MapSource.read` adds the image's identity."""


# -- decoding one image ------------------------------------------------------------------------------

def max_image_pixels() -> int | None:
    """The largest image accepted, in pixels: ``$FSD_MAX_IMAGE_PIXELS`` (0: no limit), else PIL's
    decompression-bomb error threshold (2 x ``PIL.Image.MAX_IMAGE_PIXELS``)."""
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if value:
        try:
            limit = int(value)
        except ValueError:
            raise SourceFormatError(
                f"{MAX_PIXELS_ENV}={value!r} is not a whole number of pixels (0: no limit)") from None
        if limit < 0:
            raise SourceFormatError(f"{MAX_PIXELS_ENV}={value!r} must be >= 0 (0: no limit)")
        return limit or None
    return None if Image.MAX_IMAGE_PIXELS is None else 2 * int(Image.MAX_IMAGE_PIXELS)


_PIL_LIMIT_LOCK = threading.Lock()


def _open_unguarded(fp) -> Image.Image:
    """`Image.open` with PIL's own bomb check off; we check the size ourselves against our limit."""
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(fp)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def decode_image(fp, *, exif_transpose: bool = False) -> Image.Image:
    """Decode one image from a binary file object, fully loaded; raises `_Unreadable` with a reason."""
    limit = max_image_pixels()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we enforce our own limit
        try:
            image = Image.open(fp)
        except Image.DecompressionBombError:
            fp.seek(0)
            image = _open_unguarded(fp)  # only to learn the size; refused below unless the limit allows it
        except UnidentifiedImageError:
            raise _Unreadable("not an image Pillow can decode (unknown format or corrupt header)") from None
        width, height = image.size
        if limit is not None and width * height > limit:
            raise _Unreadable(
                f"{width} x {height} = {width * height:,} pixels is over the limit of {limit:,} that guards "
                f"against decompression bombs; if you trust the file, set the environment variable "
                f"{MAX_PIXELS_ENV} to a larger number of pixels (0: no limit)"
            )
        if width < 1 or height < 1:
            raise _Unreadable(f"image has no pixels ({width} x {height})")
        image.load()
    if exif_transpose:
        image = ImageOps.exif_transpose(image)
    return image


def _read_file(path: str, exif_transpose: bool) -> Image.Image:
    """Decode the image file at ``path``, with a plain-words reason for every way it can fail."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise _Unreadable("dangling symbolic link (its target does not exist)" if os.path.islink(path)
                          else "no such file") from None
    except OSError as exc:
        raise _Unreadable(_os_reason(exc)) from None
    if stat.S_ISDIR(info.st_mode):
        raise _Unreadable("is a folder, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise _Unreadable("not a regular file (a FIFO, socket or device)")
    if info.st_size == 0:
        raise _Unreadable("empty file (0 bytes)")
    try:
        with open(path, "rb") as fh:
            return decode_image(fh, exif_transpose=exif_transpose)
    except OSError as exc:
        if isinstance(exc, UnidentifiedImageError) or exc.errno is None:
            raise
        raise _Unreadable(_os_reason(exc)) from None


def _read_bytes(data: bytes, exif_transpose: bool) -> Image.Image:
    if len(data) == 0:
        raise _Unreadable("empty entry (0 bytes)")
    return decode_image(io.BytesIO(data), exif_transpose=exif_transpose)


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied (make the file readable)"
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    return exc.strerror or str(exc)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, _Unreadable):
        text = str(exc)
    elif isinstance(exc, (OSError, SyntaxError)):
        text = str(exc) or type(exc).__name__  # PIL's decode errors: "image file is truncated", ...
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 400 else text[:400] + "..."


# -- the source abstraction ----------------------------------------------------------------------------

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
        except (ImageReadError, SourceFormatError):
            raise
        except Exception as exc:
            raise ImageReadError(self.identity(index), _reason(exc)) from exc


def list_images(root: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
    """Image files under ``root``, recursively, in the paper's order.

    Directories in string order of their full path; within each directory its files in string order
    of their names. So a folder's own files come before its subfolders' files. Symbolic links to
    directories are followed once (a link back up the tree is not walked again). Every non-directory
    entry with an image extension is listed, broken links and special files included, so that reading
    it reports the problem instead of dropping it silently.
    """
    root = os.fspath(root)
    exts = tuple(e.lower() for e in extensions)
    files_of: dict[str, list[str]] = {}
    seen: set[str] = set()
    stack = [root]
    while stack:
        directory = stack.pop()
        real = os.path.realpath(directory)
        if real in seen:
            continue
        seen.add(real)
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            raise InputError(f"cannot list folder {directory}: {exc.strerror or exc}") from exc
        # Sorted, so when links make one folder reachable by two paths, the same path claims it everywhere.
        stack.extend(sorted((e.path for e in entries if _is_dir(e)), reverse=True))
        files_of[directory] = sorted(e.name for e in entries if e.name.lower().endswith(exts) and not _is_dir(e))
    files: list[str] = []
    for directory in sorted(files_of):
        files.extend(os.path.join(directory, name) for name in files_of[directory])
    return files


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _no_images_hint(root: Path) -> str:
    """What a folder without images holds instead, so the message says what to do."""
    others: dict[str, int] = {}
    try:
        for _, _, names in os.walk(root):
            for name in names:
                ext = os.path.splitext(name)[1].lower() or "(no extension)"
                others[ext] = others.get(ext, 0) + 1
    except OSError:
        return ""
    if not others:
        return "; the folder is empty"
    common = sorted(others, key=lambda e: -others[e])[:5]
    hint = f"; it holds {sum(others.values())} other file(s): " + ", ".join(f"{others[e]} {e}" for e in common)
    if {".zip", ".npz", ".npy", ".mdb"} & set(others):
        hint += " (pass an archive, array file or LMDB database itself as the source)"
    return hint


class FolderSource(MapSource):
    """Every image under a folder, recursively (extensions case-insensitive), in the paper's order."""

    def __init__(self, root: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS, *,
                 exif_transpose: bool = False):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"{self.root} is not a folder")
        self.exif_transpose = exif_transpose
        self.paths = list_images(self.root, extensions)
        if not self.paths:
            raise InputError(
                f"no images found under {self.root} (looked recursively for {', '.join(extensions)})"
                + _no_images_hint(self.root)
            )
        self.description = str(self.root)

    def __len__(self) -> int:
        return len(self.paths)

    def identity(self, index: int) -> str:
        return self.paths[index]

    def open(self, index: int) -> Image.Image:
        return _read_file(self.paths[index], self.exif_transpose)


class _PerProcessHandle:
    """A file handle (zip, LMDB) opened lazily in each process: forked workers must not share one."""

    def __init__(self) -> None:
        self._handle = None
        self._pid = -1

    def _get(self):
        if self._handle is None or self._pid != os.getpid():
            self._handle, self._pid = self._open_handle(), os.getpid()
        return self._handle

    def _open_handle(self):
        raise NotImplementedError

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handle"], state["_pid"] = None, -1
        return state


class ZipSource(_PerProcessHandle, MapSource):
    """Every image inside a ``.zip`` archive, with the extension rules and order of `FolderSource`.

    Members under ``__MACOSX/`` (resource forks macOS adds to archives) are not images and are left out.
    """

    def __init__(self, path: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS, *,
                 exif_transpose: bool = False):
        super().__init__()
        self.path = Path(path)
        self.exif_transpose = exif_transpose
        exts = tuple(e.lower() for e in extensions)
        try:
            with zipfile.ZipFile(self.path) as archive:
                sizes = {i.filename: i.file_size for i in archive.infolist() if not i.is_dir()}
        except (zipfile.BadZipFile, OSError) as exc:
            raise InputError(f"cannot open zip archive {self.path}: {exc}") from exc
        names = list(sizes)
        chosen = [n for n in names if n.lower().endswith(exts) and not n.startswith("__MACOSX/")]
        # The folder order: directories in string order, then names within each directory.
        self.members = sorted(chosen, key=lambda n: (posixpath.dirname(n), posixpath.basename(n)))
        self.sizes = [sizes[n] for n in self.members]
        if not self.members:
            raise InputError(f"no images found in {self.path} (looked for {', '.join(extensions)} "
                             f"among {len(names)} member(s))")
        self.description = str(self.path)

    def _open_handle(self):
        return zipfile.ZipFile(self.path)

    def __len__(self) -> int:
        return len(self.members)

    def identity(self, index: int) -> str:
        return f"{self.path}!{self.members[index]}"

    def open(self, index: int) -> Image.Image:
        if self.sizes[index] > MAX_MEMBER_BYTES:  # zipfile never inflates past the declared size
            raise _Unreadable(f"{self.sizes[index]:,} bytes once extracted, more than any image file "
                              f"should be ({MAX_MEMBER_BYTES:,}); a zip bomb?")
        try:
            data = self._get().read(self.members[index])
        except (zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError, EOFError, OSError) as exc:
            raise _Unreadable(f"cannot extract from the archive: {exc}") from None
        return _read_bytes(data, self.exif_transpose)


def _import_lmdb():
    try:
        import lmdb
    except ImportError as exc:
        raise ImportError(
            "reading LMDB databases (LSUN's format) needs the lmdb package: "
            "pip install lmdb  (or pip install 'pytorch-fsd[lmdb]')"
        ) from exc
    return lmdb


class LmdbSource(_PerProcessHandle, MapSource):
    """The images of an LMDB database as LSUN distributes them: keys are image ids, values encoded
    images. ``path`` is the folder holding ``data.mdb`` or that file itself. Order: LMDB's key order
    (bytewise). Needs the optional ``lmdb`` package (``pip install 'pytorch-fsd[lmdb]'``)."""

    def __init__(self, path: str | os.PathLike, *, exif_transpose: bool = False):
        super().__init__()
        _import_lmdb()
        self.path = Path(path)
        self.exif_transpose = exif_transpose
        if not (self.path.is_dir() and (self.path / "data.mdb").is_file()) and not self.path.is_file():
            raise InputError(f"{self.path} is not an LMDB database (a folder holding data.mdb, or data.mdb)")
        try:
            with self._get().begin(write=False) as txn:
                self.keys = list(txn.cursor().iternext(keys=True, values=False))
        except Exception as exc:  # lmdb.Error and OSError
            raise InputError(f"cannot read LMDB database {self.path}: {exc}") from exc
        finally:
            self._close()
        if not self.keys:
            raise InputError(f"LMDB database {self.path} has no entries")
        self.description = f"lmdb:{self.path}"

    def _open_handle(self):
        lmdb = _import_lmdb()
        return lmdb.open(str(self.path), subdir=self.path.is_dir(), readonly=True, lock=False,
                         readahead=False, meminit=False)

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __len__(self) -> int:
        return len(self.keys)

    def identity(self, index: int) -> str:
        return f"lmdb:{self.path}!{self.keys[index].decode('utf-8', 'backslashreplace')}"

    def open(self, index: int) -> Image.Image:
        try:
            with self._get().begin(write=False) as txn:
                data = txn.get(self.keys[index])
        except Exception as exc:  # lmdb.Error
            raise _Unreadable(f"cannot read the database entry: {exc}") from None
        if data is None:
            raise _Unreadable("the key is no longer in the database")
        return _read_bytes(bytes(data), self.exif_transpose)


# -- arrays ----------------------------------------------------------------------------------------------

def _float_hint(what: str, wrapper: str) -> str:
    return (f"{what} holds float images: declare their range by wrapping it, e.g. "
            f"fsd.sources.{wrapper}(x, value_range=(-1, 1)) (or (0, 1)); uint8 images need no range")


def _channel_axis(shape: tuple[int, ...], layout: Layout | None, what: str) -> int:
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
        raise SourceFormatError(f"{what} has shape {tuple(shape)}, which could be NHWC or NCHW; "
                                "pass layout='NHWC' or layout='NCHW'")
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


def _check_dtype(dtype: np.dtype, value_range, what: str, wrapper: str = "ArraySource") -> None:
    if value_range is not None:
        try:
            declared = parse_value_range(value_range)
        except InputError as exc:
            raise SourceFormatError(str(exc)) from None
    if dtype == np.uint8:
        if value_range is not None and declared != (0.0, 255.0):
            raise SourceFormatError(f"{what} is uint8 (0..255); value_range={value_range} does not apply, "
                                    "leave it out")
        return
    if dtype == np.bool_ or not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise SourceFormatError(f"{what} has dtype {dtype}; images must be uint8, or float with a value_range")
    if value_range is None:
        if np.issubdtype(dtype, np.floating):
            raise SourceFormatError(_float_hint(what, wrapper))
        raise SourceFormatError(f"{what} has dtype {dtype}: convert it to uint8, or declare its range "
                                f"with {wrapper}(x, value_range=(low, high))")


def _to_uint8(image: np.ndarray, value_range) -> np.ndarray:
    """One image's values -> uint8 by the one quantization rule."""
    if image.dtype == np.uint8:
        return image
    values = torch.from_numpy(np.array(image))  # a copy: memory-mapped files are read-only
    if not values.dtype.is_floating_point:
        values = values.double()
    return quantize(values, value_range).numpy()


class ArraySource(MapSource):
    """A batch of images in memory: numpy array or torch tensor, (N, H, W, C) or (N, C, H, W), C = 1
    (grayscale) or 3 (RGB). uint8 as is; float (or wider integer) images need ``value_range`` and are
    quantized by `fsd.preprocess.quantize`, image by image. ``layout`` settles shapes that fit both."""

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
        self.channel_axis = _channel_axis(tuple(shape), layout, what)
        _check_dtype(dtype, self.value_range, what)
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
                    raise InputError(f"{self.path} holds arrays {keys[:10]}; none is arr_0, so say which "
                                     "holds the images: ArrayFileSource(path, key=...)")
            elif key not in keys:
                raise InputError(f"{self.path} has no array {key!r}; it holds {keys[:10]}")
            what = f"{self.path}[{self.key!r}]"
        elif key is not None:
            raise InputError(f"key={key!r} applies to .npz files only, {self.path} is not one")
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


# -- datasets, lists and iterables -----------------------------------------------------------------------

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
    _check_dtype(array.dtype, value_range, what, "SequenceSource")
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
        self.description = f"{name} ({type(items).__name__}, {len(items)} images)"
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
                name: str = "iterable") -> SequenceSource:
    """Read an iterable without a length (a generator, an ``IterableDataset``, a ``DataLoader``) into
    memory once. Batches, 4-D arrays/tensors or ``(images, targets)`` pairs of them, are split into
    images; PIL images are decoded now. For streams too large for memory, write them to a folder first."""
    items: list = []
    for element in iterable:
        first = element[0] if isinstance(element, (tuple, list)) and element else element
        if isinstance(first, (np.ndarray, torch.Tensor)) and first.ndim == 4:
            array = _to_numpy(first)
            axis = _channel_axis(array.shape, None, f"a batch from {name}")
            images = list(np.moveaxis(array, axis, -1))
        elif isinstance(element, list):
            images = element  # a batch given as a list of images
        else:
            images = [first]  # an image, or an (image, target) pair
        for image in images:
            if isinstance(image, Image.Image):
                image.load()
            items.append(_to_numpy(image))
    return SequenceSource(items, value_range, name=name)


# -- choosing images and reading them in batches ------------------------------------------------------

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
    indices: list[int]  # each image's index in its source


class _Reader(torch.utils.data.Dataset):
    """Reads one image per call and never raises: ``(array | None, index, error | None, fatal)``.

    ``current`` (shared memory, one row per worker) holds ``(pid, index)`` of the image each worker is
    decoding, so a worker that dies can be blamed on its image. Images in ``known_bad`` (those that
    killed a worker) are reported with their reason, in their place in the order, without reading them.
    """

    def __init__(self, source: MapSource, indices: Sequence[int], preprocessing: Preprocessing,
                 current: torch.Tensor | None, known_bad: dict[int, str]):
        self.source, self.indices, self.preprocessing, self.current = source, indices, preprocessing, current
        self.known_bad = known_bad

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        index = self.indices[k]
        if index in self.known_bad:
            return None, index, self.known_bad[index], False
        worker = torch.utils.data.get_worker_info() if self.current is not None else None
        if worker is not None:
            self.current[worker.id, 0] = os.getpid()
            self.current[worker.id, 1] = index
        try:
            return self.source.read(index, self.preprocessing), index, None, False
        except SourceFormatError as exc:
            return None, index, str(exc), True
        except ImageReadError as exc:
            return None, index, exc.reason, False
        except Exception as exc:  # never let a worker die without naming the image
            return None, index, _reason(exc), False
        finally:
            if worker is not None:
                self.current[worker.id, 1] = -1


def _collate(items):
    good = [(torch.from_numpy(a), i) for a, i, err, _ in items if err is None]
    bad = [(i, err, fatal) for a, i, err, fatal in items if err is not None]
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


def _report_worker_deaths_from_next(iterator) -> None:
    """torch reports a dead worker from a SIGCHLD handler, at any point of the main thread (inside the
    caller's model, say), where the image cannot be named. Unregistering the workers from that handler
    makes the death surface from ``next()`` instead (torch checks its workers every 5 s while waiting).
    Private torch API: if it changes, torch's own report stays in place."""
    try:
        from torch.utils.data import _utils

        if getattr(iterator, "_worker_pids_set", False):
            _utils.signal_handling._remove_worker_pids(id(iterator))
            iterator._worker_pids_set = False
    except Exception:
        pass


_MAX_WORKER_RESTARTS = 8


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
    ``(identity, reason)``. A worker process that dies is blamed on the image it was reading, which is
    then treated like any bad image (reading resumes with fresh workers after it).
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    if num_workers < 0:
        raise InputError(f"num_workers must be >= 0, got {num_workers}")
    remaining = list(indices)
    known_bad: dict[int, str] = {}
    restarts = 0
    while remaining:
        current = torch.full((num_workers, 2), -1, dtype=torch.int64).share_memory_() if num_workers else None
        loader = torch.utils.data.DataLoader(
            _Reader(source, remaining, preprocessing, current, known_bad),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=_collate,
            pin_memory=pin_memory,
            prefetch_factor=4 if num_workers > 0 else None,
            persistent_workers=False,
        )
        iterator = iter(loader)
        _report_worker_deaths_from_next(iterator)
        done = 0
        while True:
            try:
                images, good, bad = next(iterator)
            except StopIteration:
                return
            except RuntimeError as exc:
                if current is None or "DataLoader worker" not in str(exc):
                    raise
                culprit = _dead_workers_image(current, str(exc))
                del iterator
                if culprit is None:
                    pending = remaining[done:done + batch_size]
                    raise InputError(
                        f"an image-decoding worker process died ({exc}) while reading one of the images "
                        f"from {source.identity(pending[0])} on; rerun with num_workers=0 "
                        "(--num-workers 0) to find the file, or check the machine's memory"
                    ) from exc
                reason = (f"the worker process decoding it died ({exc}); the file may crash the image "
                          "decoder, or the machine ran out of memory")
                if not skip_bad_images:
                    raise ImageReadError(source.identity(culprit), reason) from exc
                restarts += 1
                if restarts > _MAX_WORKER_RESTARTS:
                    raise InputError(f"image-decoding worker processes died {restarts} times (last: {exc}); "
                                     "this is more likely the machine (memory) than the files") from exc
                # Reported when the reading order reaches it (workers read ahead), so `skipped` and the
                # yielded images always cover a prefix of `indices`: what resuming relies on.
                known_bad[culprit] = reason
                remaining = remaining[done:]
                break
            for index, reason, fatal in bad:
                if fatal:
                    raise SourceFormatError(reason)
                if not skip_bad_images:
                    raise ImageReadError(source.identity(index), reason)
                skipped.append((source.identity(index), reason))
            done += len(good) + len(bad)
            if images is not None:
                yield Batch(images, [source.identity(i) for i in good], list(good))


def _dead_workers_image(current: torch.Tensor, message: str) -> int | None:
    """The image a dead worker was decoding, from the pids torch names in its error message."""
    dead = {int(p) for p in re.findall(r"\b\d+\b", message)}
    for pid, index in current.tolist():
        if pid in dead and index >= 0:
            return int(index)
    return None


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

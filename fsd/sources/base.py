"""What every source is: `MapSource`, images addressable by index, each with a stable identity; and the
decoding of one image, with a plain-words reason for every way it can fail."""

from __future__ import annotations

import errno
import io
import os
import stat
import threading
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .._hints import option
from .._text import plural
from ..errors import ImageReadError, InputError
from ..preprocess import prepare
from ..segmenters.base import Preprocessing

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")  # the paper's set: what folders and archives read by default
OTHER_IMAGE_EXTENSIONS = (".webp", ".bmp", ".tif", ".tiff", ".gif")  # Pillow reads them too; opt-in
MAX_PIXELS_ENV = "FSD_MAX_IMAGE_PIXELS"


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


def image_extensions(extensions: str | Sequence[str] | None) -> tuple[str, ...]:
    """The extensions to read, lower-case with a leading dot: ``None`` is the paper's set, ``"all"`` adds
    `OTHER_IMAGE_EXTENSIONS`; otherwise a sequence such as ``(".png", "webp")`` or a string ``"png,webp"``.

    >>> image_extensions("png, .WEBP"), image_extensions(None)
    (('.png', '.webp'), ('.jpg', '.jpeg', '.png'))
    """
    if extensions is None:
        return IMAGE_EXTENSIONS
    if isinstance(extensions, str):
        if extensions.strip().lower() == "all":
            return IMAGE_EXTENSIONS + OTHER_IMAGE_EXTENSIONS
        extensions = extensions.split(",")
    chosen: list[str] = []
    for ext in extensions:
        if not isinstance(ext, str) or not ext.strip(" .") or any(c in ext for c in "/\\*"):
            raise InputError(f"{option('extensions=', '--extensions')}: {ext!r} is not a file extension; "
                             f"give them like {option(repr(IMAGE_EXTENSIONS), '.jpg,.jpeg,.png,.webp')}, "
                             f"or {option('extensions=', '--extensions')} all")
        ext = "." + ext.strip().lstrip(".").lower()
        if ext not in chosen:
            chosen.append(ext)
    if not chosen:
        raise InputError(f"{option('extensions=', '--extensions')} names no extension")
    return tuple(chosen)


def count_left_out(names, extensions: Sequence[str], counts: dict[str, int] | None = None) -> dict[str, int]:
    """Image file names (`IMAGE_EXTENSIONS`, `OTHER_IMAGE_EXTENSIONS`) not among ``extensions``, counted
    by extension (added to ``counts``)."""
    counts = {} if counts is None else counts
    exts = tuple(extensions)
    known = tuple(e for e in IMAGE_EXTENSIONS + OTHER_IMAGE_EXTENSIONS if e not in exts)
    for name in names:
        lower = name.lower()
        if lower.endswith(known) and not lower.endswith(exts):
            ext = lower[lower.rindex("."):]
            counts[ext] = counts.get(ext, 0) + 1
    return counts


def left_out_note(left_out: dict[str, int], extensions: Sequence[str], folder_links: Sequence[str] = ()) -> str | None:
    """The warning when image files are left out: how many, and how to include them (`None`: none were)."""
    notes = []
    if left_out:
        count = sum(left_out.values())
        kinds = ", ".join(f"{n} {ext}" for ext, n in sorted(left_out.items(), key=lambda kv: (-kv[1], kv[0])))
        wanted = tuple(extensions) + tuple(sorted(left_out))
        notes.append(
            f"left out {plural(count, 'image file')} with other extensions ({kinds}): the reader takes "
            f"{', '.join(extensions)}" + (" (the paper's set)" if tuple(extensions) == IMAGE_EXTENSIONS else "")
            + "; to include them pass "
            + option(f"extensions={wanted!r}", "--extensions " + ",".join(wanted)))
    if folder_links:
        shown = ", ".join(folder_links[:3]) + (", ..." if len(folder_links) > 3 else "")
        notes.append(f"did not follow {plural(len(folder_links), 'symbolic link')} to folders ({shown}), as the "
                     f"paper's walk does not; to read the images under them pass "
                     + option("follow_links=True", "--follow-links"))
    return "; ".join(notes) if notes else None


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


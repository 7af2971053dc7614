"""Archives: ``.zip`` files (StyleGAN datasets) and LSUN's LMDB databases. Each process opens its own
handle (`_PerProcessHandle`), so forked loader workers never share one."""

from __future__ import annotations

import os
import posixpath
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from .._text import plural, warn
from ..errors import InputError
from .base import MapSource, _PerProcessHandle, _read_bytes, _Unreadable, count_left_out, image_extensions, left_out_note

MAX_MEMBER_BYTES = 1 << 30  # an archive member larger than this once extracted is refused


class ZipSource(_PerProcessHandle, MapSource):
    """Every image inside a ``.zip`` archive, with the extension rules and order of `FolderSource`.

    Members under ``__MACOSX/`` (resource forks macOS adds to archives) are not images and are left out.
    """

    def __init__(self, path: str | os.PathLike, extensions: str | Sequence[str] | None = None, *,
                 exif_transpose: bool = False):
        super().__init__()
        self.path = Path(path)
        self.exif_transpose = exif_transpose
        self.extensions = exts = image_extensions(extensions)
        try:
            with zipfile.ZipFile(self.path) as archive:
                sizes = {i.filename: i.file_size for i in archive.infolist() if not i.is_dir()}
        except (zipfile.BadZipFile, OSError) as exc:
            raise InputError(f"cannot open zip archive {self.path}: {exc}") from exc
        names = list(sizes)
        candidates = [n for n in names if not n.startswith("__MACOSX/")]
        chosen = [n for n in candidates if n.lower().endswith(exts)]
        note = left_out_note(count_left_out(candidates, exts), exts)
        # The folder order: directories in string order, then names within each directory.
        self.members = sorted(chosen, key=lambda n: (posixpath.dirname(n), posixpath.basename(n)))
        self.sizes = [sizes[n] for n in self.members]
        if not self.members:
            raise InputError(f"no images found in {self.path} (looked for {', '.join(exts)} among "
                             f"{plural(len(names), 'member')})" + (f"; {note}" if note else ""))
        if note:
            warn(f"{self.path}: {note}")
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


"""Archives: ``.zip`` files (StyleGAN datasets), ``.tar`` shards (WebDataset) and LSUN's LMDB databases.
Each process opens its own handles (`_PerProcessHandle`), so forked loader workers never share one."""

from __future__ import annotations

import os
import posixpath
import re
import tarfile
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .._text import plural, warn
from ..errors import InputError
from .base import (
    MapSource,
    SourceFormatError,
    _os_reason,
    _PerProcessHandle,
    _read_bytes,
    _reason,
    _Unreadable,
    count_left_out,
    image_extensions,
    left_out_note,
)

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



# -- tar shards (WebDataset) -----------------------------------------------------------------------------

_BRACE = re.compile(r"\{([^{}]*)\}")
_MAX_SHARDS = 1_000_000
_OPEN_SHARDS = 32  # shard files each process keeps open at once
# WebDataset's rule: the key is the member path up to the first dot of its file name, the rest its extension.
_KEY_AND_EXTENSION = re.compile(r"^((?:.*/|)[^./][^/]*?)\.([^/]*)$")


def expand_braces(pattern: str) -> list[str]:
    """A shard list written the WebDataset way: ``{000..099}`` counts (zero-padded to the width of the
    bounds when they are), ``{a,b}`` lists; several braces expand as a product, left to right.

    >>> expand_braces("train-{00..02}.tar")
    ['train-00.tar', 'train-01.tar', 'train-02.tar']
    >>> expand_braces("{a,b}/{8..10}.tar")
    ['a/8.tar', 'a/9.tar', 'a/10.tar', 'b/8.tar', 'b/9.tar', 'b/10.tar']
    """
    match = _BRACE.search(pattern)
    if match is None:
        if "{" in pattern or "}" in pattern:
            raise InputError(f"{pattern}: unbalanced braces; write shard lists like train-{{000000..000099}}.tar")
        return [pattern]
    body = match.group(1)
    counted = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if counted:
        first, last = counted.groups()
        if int(last) < int(first):
            raise InputError(f"{pattern}: the range {{{body}}} counts down; write the smaller bound first")
        width = max(len(first), len(last)) if first.startswith("0") or last.startswith("0") else 0
        choices = [str(k).zfill(width) for k in range(int(first), int(last) + 1)]
    elif "," in body:
        choices = body.split(",")
    else:
        raise InputError(f"{pattern}: {{{body}}} is neither a range like {{000..099}} nor a list like {{a,b}}")
    rest = expand_braces(pattern[match.end():])
    if len(choices) * len(rest) > _MAX_SHARDS:
        raise InputError(f"{pattern} expands to more than {_MAX_SHARDS:,} shards")
    return [pattern[:match.start()] + choice + tail for choice in choices for tail in rest]


def is_shard_list(source: object) -> bool:
    """A ``.tar`` path, a brace pattern of them, or a list of ``.tar`` paths."""
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        return text.lower().endswith(".tar") and (os.path.isfile(text) or "{" in text)
    return (isinstance(source, (list, tuple)) and len(source) > 0
            and all(isinstance(s, (str, os.PathLike)) and os.fspath(s).lower().endswith(".tar") for s in source))


@dataclass(frozen=True)
class _TarMember:
    shard: int  # index into TarSource.shards
    name: str  # the member's path inside the shard
    offset: int  # of its data in the shard file
    size: int
    problem: str | None = None  # why it cannot be read, found while indexing


class TarSource(_PerProcessHandle, MapSource):
    """WebDataset shards: one ``.tar`` file, a list of them, or a brace pattern such as
    ``"shards/train-{000000..000099}.tar"`` (expanded here, as WebDataset does).

    Members are grouped into samples by key (the member path up to the first dot of its file name:
    ``a/0001.jpg`` and ``a/0001.json`` are sample ``a/0001``); the sample's image is its member whose
    extension (after that dot) is the first of ``extensions`` it has (default: the paper's jpg, jpeg,
    png). Order: shards as listed, samples in the order their keys first appear in the shard. Identity:
    ``shard.tar/key``.

    The shards are indexed once, reading only the 512-byte tar headers; each loader worker then opens
    its own handles and reads an image by seeking to its offset, so any subset is read at random. Only
    uncompressed tar files can be read this way. A corrupt header, or a shard cut short in its headers,
    is an `InputError` naming the shard and the last good member; a member cut short, or one that does
    not decode, is an `ImageReadError` naming the shard, the key and the member.
    """

    def __init__(self, shards: str | os.PathLike | Sequence[str | os.PathLike],
                 extensions: str | Sequence[str] | None = None, *, exif_transpose: bool = False):
        super().__init__()
        if isinstance(shards, (str, os.PathLike)):
            self.pattern = os.fspath(shards)
            self.shards = [self.pattern] if os.path.isfile(self.pattern) else expand_braces(self.pattern)
        else:
            self.shards = [os.fspath(s) for s in shards]
            self.pattern = self.shards[0] if len(self.shards) == 1 else f"{self.shards[0]} ... {self.shards[-1]}"
        if not self.shards:
            raise InputError("no tar shards given")
        missing = [s for s in self.shards if not os.path.isfile(s)]
        if missing:
            raise InputError(f"{plural(len(missing), 'shard')} of {len(self.shards)} do not exist: "
                             + ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else ""))
        self.extensions = image_extensions(extensions)
        self.exif_transpose = exif_transpose
        wanted = [e[1:] for e in self.extensions]
        self.keys: list[str] = []
        self.members: list[_TarMember] = []
        left_out: dict[str, int] = {}
        without_image = 0
        for number, shard in enumerate(self.shards):
            for key, files in _index_shard(shard, number).items():
                chosen = next((files[ext] for ext in wanted if ext in files), None)
                if chosen is None:
                    others = count_left_out([f"{key}.{ext}" for ext in files], self.extensions)
                    if others:
                        for ext, n in others.items():
                            left_out[ext] = left_out.get(ext, 0) + n
                    else:
                        without_image += 1
                    continue
                self.keys.append(f"{shard}/{key}")
                self.members.append(chosen)
        note = left_out_note(left_out, self.extensions)
        if without_image:
            note = (f"{note}; " if note else "") + (
                f"{plural(without_image, 'sample')} had no image member (none of {', '.join(self.extensions)})")
        where = self.pattern + (f" ({plural(len(self.shards), 'shard')})" if len(self.shards) > 1 else "")
        if not self.members:
            raise InputError(f"no images found in {where}" + (f": {note}" if note else ""))
        if note:
            warn(f"{where}: {note}")
        self.description = where

    def _open_handle(self) -> dict:
        return {}  # shard number -> open file, in this process

    def __del__(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            for fh in self._handle.values():
                fh.close()

    def __len__(self) -> int:
        return len(self.members)

    def identity(self, index: int) -> str:
        return self.keys[index]

    def open(self, index: int) -> Image.Image:
        member = self.members[index]
        where = f"member {member.name}"
        if member.problem is not None:
            raise _Unreadable(f"{where}: {member.problem}")
        if member.size > MAX_MEMBER_BYTES:
            raise _Unreadable(f"{where}: {member.size:,} bytes, more than any image file should be "
                              f"({MAX_MEMBER_BYTES:,})")
        files = self._get()
        try:
            fh = files.get(member.shard)
            if fh is None:
                if len(files) >= _OPEN_SHARDS:
                    files.pop(next(iter(files))).close()
                fh = files[member.shard] = open(self.shards[member.shard], "rb")
            fh.seek(member.offset)
            data = fh.read(member.size)
        except OSError as exc:
            raise _Unreadable(f"{where}: cannot read the shard: {_os_reason(exc)}") from None
        if len(data) < member.size:
            raise _Unreadable(f"{where}: truncated (the shard ends {len(data):,} bytes into its {member.size:,})")
        try:
            return _read_bytes(data, self.exif_transpose)
        except SourceFormatError:
            raise
        except Exception as exc:
            raise _Unreadable(f"{where}: {_reason(exc)}") from None


def _index_shard(shard: str, number: int) -> dict[str, dict[str, _TarMember]]:
    """The samples of one shard: key -> {extension: member}, keys in the order they first appear. A
    member repeated later in the shard replaces the earlier one, as extracting the shard would."""
    size = os.path.getsize(shard)
    with open(shard, "rb") as fh:
        magic = fh.read(6)
    if magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic == b"\xfd7zXZ\x00":
        raise InputError(f"{shard} is a compressed tar file; shards are read at random, which needs "
                         "uncompressed tar: decompress it (e.g. gunzip), or extract it to a folder")
    samples: dict[str, dict[str, _TarMember]] = {}
    last, cut_short = "(none: the first header)", False
    try:
        archive = tarfile.open(shard, mode="r:")
    except (tarfile.TarError, OSError) as exc:
        raise InputError(f"cannot open tar shard {shard}: {exc}") from exc
    with archive:
        while True:
            try:
                info = archive.next()
            except (tarfile.TarError, OSError) as exc:
                if cut_short:  # the shard ends inside the last member's data: that member is named when read
                    break
                raise InputError(f"{shard} is corrupt after member {last}: {exc}; re-create or re-download "
                                 "the shard") from exc
            if info is None:
                break
            last = info.name
            cut_short = info.offset_data + info.size > size
            if info.isdir():
                continue
            parts = _KEY_AND_EXTENSION.match(info.name)
            if parts is None:
                continue  # no extension, or a hidden file: not part of a sample (as in WebDataset)
            key, ext = parts.group(1), parts.group(2).lower()
            problem = None
            if not info.isfile():
                problem = "a link or special entry inside the shard, not a file"
            elif cut_short:
                problem = (f"truncated (the shard ends {max(0, size - info.offset_data):,} bytes into its "
                           f"{info.size:,})")
            samples.setdefault(key, {})[ext] = _TarMember(number, info.name, info.offset_data, info.size, problem)
        end = archive.offset  # where tarfile stopped reading headers
    # tarfile stops without a word at a header it cannot parse; what follows must be the end marker.
    with open(shard, "rb") as fh:
        fh.seek(end)
        tail = fh.read(tarfile.BLOCKSIZE)
    if tail.strip(b"\0"):
        raise InputError(f"{shard} is corrupt or cut short at byte {end:,}, after member {last}: the members "
                         "after it cannot be found; re-create or re-download the shard")
    return samples

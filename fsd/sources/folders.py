"""Folders of image files, walked in the paper's order."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .._text import plural, warn
from ..errors import InputError
from .base import IMAGE_EXTENSIONS, MapSource, _read_file, count_left_out, image_extensions, left_out_note


def list_images(root: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS, *,
                follow_links: bool = False) -> list[str]:
    """Image files under ``root``, recursively, in the paper's order.

    Directories in string order of their full path; within each directory its files in string order
    of their names. So a folder's own files come before its subfolders' files. Symbolic links to
    directories are not followed, as in the paper's walk (``os.walk``); with ``follow_links`` they are,
    once each (a link back up the tree is not walked again). Every non-directory entry with an image
    extension is listed, broken links and special files included, so that reading it reports the
    problem instead of dropping it silently.
    """
    return _walk(root, extensions, follow_links).files


@dataclass
class _Listing:
    files: list[str]
    left_out: dict[str, int]  # image files with an extension not asked for: extension -> count
    folder_links: list[str]  # symbolic links to folders that were not followed


def _walk(root: str | os.PathLike, extensions: Sequence[str], follow_links: bool) -> _Listing:
    root = os.fspath(root)
    exts = tuple(e.lower() for e in extensions)
    files_of: dict[str, list[str]] = {}
    left_out: dict[str, int] = {}
    folder_links: list[str] = []
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
        folders = [e for e in entries if _is_dir(e)]
        if not follow_links:
            folder_links.extend(e.path for e in folders if e.is_symlink())
            folders = [e for e in folders if not e.is_symlink()]
        # Sorted, so when links make one folder reachable by two paths, the same path claims it everywhere.
        stack.extend(sorted((e.path for e in folders), reverse=True))
        names = [e.name for e in entries if not _is_dir(e)]
        files_of[directory] = sorted(n for n in names if n.lower().endswith(exts))
        count_left_out(names, exts, left_out)
    files: list[str] = []
    for directory in sorted(files_of):
        files.extend(os.path.join(directory, name) for name in files_of[directory])
    return _Listing(files, left_out, sorted(folder_links))


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
    hint = f"; it holds {plural(sum(others.values()), 'other file')}: " + ", ".join(f"{others[e]} {e}" for e in common)
    if {".zip", ".tar", ".npz", ".npy", ".mdb"} & set(others):
        hint += " (pass an archive, tar shards, array file or LMDB database itself as the source)"
    return hint


class FolderSource(MapSource):
    """Every image under a folder, recursively (extensions case-insensitive), in the paper's order.

    By default the paper's files: ``.jpg``, ``.jpeg``, ``.png``, symbolic links to folders not followed.
    ``extensions`` (e.g. ``(".png", ".webp")``, or ``"all"``) and ``follow_links=True`` read more; image
    files left out are counted in a warning that says how to include them."""

    def __init__(self, root: str | os.PathLike, extensions: str | Sequence[str] | None = None, *,
                 exif_transpose: bool = False, follow_links: bool = False):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"{self.root} is not a folder")
        self.exif_transpose = exif_transpose
        self.extensions = image_extensions(extensions)
        self.follow_links = follow_links
        listing = _walk(self.root, self.extensions, follow_links)
        self.paths = listing.files
        note = left_out_note(listing.left_out, self.extensions, listing.folder_links)
        if not self.paths:
            raise InputError(
                f"no images found under {self.root} (looked recursively for {', '.join(self.extensions)})"
                + _no_images_hint(self.root) + (f"; {note}" if note else "")
            )
        if note:
            warn(f"{self.root}: {note}")
        self.description = str(self.root)

    def __len__(self) -> int:
        return len(self.paths)

    def identity(self, index: int) -> str:
        return self.paths[index]

    def open(self, index: int) -> Image.Image:
        return _read_file(self.paths[index], self.exif_transpose)


"""Folders of image files, walked in the paper's order."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from ..errors import InputError
from .base import IMAGE_EXTENSIONS, MapSource, _read_file


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


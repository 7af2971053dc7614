"""Writing files safely: every file this package writes goes through `atomic_write`.

A temporary file next to the target, renamed into place only once complete: an interrupted or failed
write (Ctrl-C, a full disk, an exception while encoding) never leaves a partial file, and a previous
complete file stays intact until the new one replaces it. The result gets the permissions an ordinary
``open(path, "wb")`` would give (``mkstemp`` alone would make it private, 0600).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import InputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temporary_sibling(path: str | os.PathLike) -> Path:
    """A new empty file next to ``path`` (same filesystem, so the final rename is atomic), with the
    permissions of a normally created file. The caller renames or deletes it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    return Path(tmp)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(handle)`` on a temporary binary file, then rename it to ``path``."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        with open(tmp, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def holds_files(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds anything but folders with nothing in them (links and files count)."""
    def unreadable(error: OSError) -> None:
        raise error

    try:
        for root, directories, files in os.walk(folder, onerror=unreadable):
            if files or any(os.path.islink(os.path.join(root, name)) for name in directories):
                return True
    except OSError:
        return True  # what cannot be listed may hold files
    return False


def check_output_folder(folder: str | os.PathLike, *, overwrite: bool, option: str = "--out") -> Path:
    """Raise `InputError` unless ``folder`` is new, holds no files (empty subfolders count as empty), or
    ``overwrite``; creates nothing, so a run can check its output before its other work."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} exists and is not a folder; choose another {option}")
    if folder.is_dir() and not overwrite and holds_files(folder):
        raise InputError(
            f"{folder} already holds files; choose an empty or new folder, or pass overwrite=True "
            "(--overwrite) to write into it"
        )
    return folder


def prepare_output_folder(folder: str | os.PathLike, *, overwrite: bool, option: str = "--out") -> Path:
    """Create ``folder``, refusing one that holds files unless ``overwrite`` (so nothing is mixed in)."""
    folder = check_output_folder(folder, overwrite=overwrite, option=option)
    folder.mkdir(parents=True, exist_ok=True)
    return folder

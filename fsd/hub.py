"""Declared model files and the one machinery that finds, downloads, caches and verifies them.

Every file this package needs from the network (segmenter weights and labels, ProGAN generators,
inversion encoders, published baseline tallies) is declared once as an :class:`Artifact`: its files,
their pins, the mirrors to try in order, and an optional structural check. :func:`fetch` is the only
way to get them.

Where files come from, first match wins:

1. A user folder: the ``weights_dir`` argument, else ``$FSD_WEIGHTS_DIR``. It is used as given and
   never written to, with layout ``<folder>/<artifact.name>/<file>`` or the files directly in
   ``<folder>/<file>``. An explicit folder means offline use: a file missing there is a
   :class:`WeightsError`, with no fallback to the cache or the network, so a run never silently
   uses weights from somewhere other than where the user pointed.
2. The cache ``cache_dir()/<artifact.name>/<file>``; missing files are downloaded into it unless
   offline (``offline=True`` or ``$FSD_OFFLINE=1``). `download_into` fills any other folder the same
   way, in the layout a user folder (and a mirror) has.

Downloads try the user's mirrors first (the ``mirrors`` argument, else ``$FSD_MIRRORS``: base URLs
separated by spaces or commas, each file at ``BASE/<artifact.name>/<file>``), then the artifact's
published mirrors (``MIRROR/<file>``). What any of them sends gets the same checks.

Every file is checked before it is used: ``min_bytes``, the ``sha256`` pin, the ``sha256_prefix``
and ``artifact.verify``. Hand-placed files get the same checks as downloaded ones. A file that passed
is recorded in a hidden stamp ``.<file>.verified`` next to it (size, mtime, ctime, sha256), written in
the cache and in folders `download_into` fills, read (never written) in user folders. A file whose
stamp still matches is not hashed again; any change to the file (its ctime changes even when its
mtime is put back) makes it checked again in full, and a file that passes with bytes other than the
ones recorded is used with a warning that names both sha256 values.

Downloads stream into a hidden ``.<file>.XXXX.part`` file in the destination folder and are moved
into place with ``os.replace`` only after every check passed, so the folder holds complete verified
files or nothing, also when two processes download at once. Ctrl-C, SIGTERM and SIGHUP remove the
temporary file (SIGTERM and SIGHUP only where the program left their default action, in the main
thread); SIGKILL, a crash or a power cut cannot, so every fetch first removes the temporary files
of its artifact that no running download holds (a live download holds a lock on its file).

Example (a local folder, so nothing is downloaded):

>>> import tempfile
>>> from pathlib import Path
>>> root = Path(tempfile.mkdtemp())
>>> (root / "demo").mkdir()
>>> _ = (root / "demo" / "labels.json").write_text("{}")
>>> art = Artifact("demo", (RemoteFile("labels.json"),), ("https://example.invalid/demo",))
>>> fetch(art, weights_dir=root) == root / "demo"
True
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import signal
import sys
import threading
import time
import types
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from fsd._io import temporary_sibling
from fsd._text import plural, warn
from fsd.errors import DownloadError, InputError, WeightsError, WeightsFolderError

try:
    import fcntl
except ImportError:  # Windows: an open file cannot be deleted there, which protects live downloads
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "RemoteFile", "Artifact", "cache_dir", "user_mirrors", "fetch", "fetch_file", "download_into",
    "remove_stale_parts", "recorded_sha256", "check_file", "offline_mode", "sha256_of",
]

TIMEOUT_S = 30.0
USER_AGENT = "pytorch-fsd (Frechet Segmentation Distance; python urllib)"
_CHUNK = 1 << 20
_HEX = re.compile(r"[0-9a-f]+")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}

# (resolved path, size, mtime_ns) of user-folder files that passed their checks in this process.
_checked_user_files: set[tuple[str, int, int]] = set()
# Temporary files this process is downloading into: never stale, whatever the file locks say (POSIX
# locks on NFS are per process, so another thread's cleanup could otherwise take them).
_live_parts: set[str] = set()
# Without file locks (some network filesystems), a temporary file untouched this long is stale; a live
# download writes at least every TIMEOUT_S.
_UNLOCKED_STALE_S = 3600.0
_HTML_STARTS = (b"<!doctype html", b"<html")
# Hints written for a file on disk; wrong for a server's answer, which was never kept.
_FILE_HINT = re.compile(r"[;:,]?\s*delete it and download it again\.?", re.IGNORECASE)


def _check_plain_name(kind: str, name: str) -> None:
    if (
        not isinstance(name, str)
        or not name
        or name.startswith(".")
        or "/" in name
        or "\\" in name
        or "\0" in name
    ):
        raise ValueError(f"{kind} name {name!r} must be a plain, non-hidden file name (no slashes)")


@dataclass(frozen=True)
class RemoteFile:
    """One file of an artifact, with whatever is known to check it."""

    name: str
    sha256: str | None = None
    sha256_prefix: str | None = None
    min_bytes: int | None = None

    def __post_init__(self) -> None:
        _check_plain_name("RemoteFile", self.name)
        if self.sha256 is not None:
            pin = self.sha256.lower()
            if len(pin) != 64 or not _HEX.fullmatch(pin):
                raise ValueError(f"RemoteFile {self.name}: sha256 must be 64 hex digits, got {self.sha256!r}")
            object.__setattr__(self, "sha256", pin)
        if self.sha256_prefix is not None:
            prefix = self.sha256_prefix.lower()
            if not 1 <= len(prefix) <= 64 or not _HEX.fullmatch(prefix):
                raise ValueError(
                    f"RemoteFile {self.name}: sha256_prefix must be 1 to 64 hex digits, got {self.sha256_prefix!r}"
                )
            object.__setattr__(self, "sha256_prefix", prefix)
        if self.min_bytes is not None and (isinstance(self.min_bytes, bool) or self.min_bytes < 0):
            raise ValueError(f"RemoteFile {self.name}: min_bytes must be a non-negative int, got {self.min_bytes!r}")

    @classmethod
    def hub_named(cls, name: str, min_bytes: int | None = None) -> RemoteFile:
        """A file named in torch.hub's convention, ``<stem>-<hex>.<ext>``, where ``<hex>`` is a prefix of
        its SHA-256: that prefix becomes the pin.

        >>> RemoteFile.hub_named("proggan_bedroom-d8a89ff1.pth").sha256_prefix
        'd8a89ff1'
        """
        prefix = name.rsplit("-", 1)[-1].split(".", 1)[0]
        if "-" not in name or not _HEX.fullmatch(prefix):
            raise ValueError(f"{name} is not named <stem>-<sha256 prefix>.<ext>")
        return cls(name, sha256_prefix=prefix, min_bytes=min_bytes)


@dataclass(frozen=True)
class Artifact:
    """A set of files that belong together, downloadable from any of several mirrors."""

    name: str
    files: tuple[RemoteFile, ...]
    mirrors: tuple[str, ...]
    description: str = ""
    meta: Mapping[str, object] = field(default_factory=dict, compare=False)
    verify: Callable[[Path, RemoteFile], None] | None = None

    def __post_init__(self) -> None:
        _check_plain_name("Artifact", self.name)
        object.__setattr__(self, "files", tuple(self.files))
        object.__setattr__(self, "mirrors", tuple(self.mirrors))
        object.__setattr__(self, "meta", types.MappingProxyType(dict(self.meta)))
        if not self.files:
            raise ValueError(f"Artifact {self.name} declares no files")
        names = [f.name for f in self.files]
        if len(set(names)) != len(names):
            raise ValueError(f"Artifact {self.name} declares a file name twice: {names}")
        for base in self.mirrors:
            if not base.startswith(("http://", "https://")):
                raise ValueError(f"Artifact {self.name}: mirror {base!r} is not an http(s) URL")

    def file(self, name: str) -> RemoteFile:
        """The declared file called ``name``."""
        for f in self.files:
            if f.name == name:
                return f
        raise InputError(
            f"artifact {self.name} has no file {name!r}; its files are: {', '.join(f.name for f in self.files)}"
        )

    def urls(self, name: str) -> tuple[str, ...]:
        """Every URL ``name`` can be downloaded from, in the order they are tried."""
        self.file(name)
        return tuple(base.rstrip("/") + "/" + name for base in self.mirrors)


def cache_dir() -> Path:
    """``$FSD_CACHE_DIR``, else ``$XDG_CACHE_HOME/fsd``, else ``~/.cache/fsd``; read at each call."""
    explicit = os.environ.get("FSD_CACHE_DIR", "")
    if explicit:
        return Path(explicit).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if xdg and Path(xdg).is_absolute():  # the XDG spec says to ignore a relative value
        return Path(xdg) / "fsd"
    try:
        home = Path.home()
    except (RuntimeError, KeyError) as err:
        raise WeightsError(
            "cannot find the home folder to cache model files in; set $FSD_CACHE_DIR to a writable folder "
            "or pass a folder of downloaded files as weights_dir / --weights-dir"
        ) from err
    return home / ".cache" / "fsd"


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def user_mirrors(mirrors: str | Sequence[str] | None = None) -> tuple[str, ...]:
    """The user's mirror base URLs, tried before an artifact's published mirrors: ``mirrors`` if given
    (a sequence, or one string), else ``$FSD_MIRRORS``; strings are split at spaces and commas.

    >>> user_mirrors("https://lab.example/fsd/, http://10.0.0.5:8000")
    ('https://lab.example/fsd', 'http://10.0.0.5:8000')
    """
    if mirrors is None:
        where, values = "$FSD_MIRRORS", [os.environ.get("FSD_MIRRORS", "")]
    else:
        where, values = "mirrors", [mirrors] if isinstance(mirrors, str) else list(mirrors)
    bases: list[str] = []
    for value in values:
        if not isinstance(value, str):
            raise InputError(f"{where}: {value!r} is not a base URL (a string such as https://host/fsd-weights)")
        bases.extend(value.replace(",", " ").split())
    for base in bases:
        if not base.startswith(("http://", "https://")):
            raise InputError(
                f"{where}: {base!r} is not an http(s) base URL; give base URLs such as https://host/fsd-weights, "
                "under which each file is at BASE/<artifact>/<file>"
            )
    return tuple(base.rstrip("/") for base in bases)


def fetch(
    artifact: Artifact,
    *,
    weights_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    offline: bool | None = None,
    mirrors: str | Sequence[str] | None = None,
) -> Path:
    """Return the folder that holds every file of the artifact, downloading what is missing.
    ``mirrors``: base URLs tried first (see `user_mirrors`)."""
    return _resolve(artifact, [f.name for f in artifact.files], weights_dir, progress, offline, mirrors)


def fetch_file(
    artifact: Artifact,
    name: str,
    *,
    weights_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    offline: bool | None = None,
    mirrors: str | Sequence[str] | None = None,
) -> Path:
    """Return the path of one file of the artifact, downloading it (only it) if missing."""
    artifact.file(name)
    return _resolve(artifact, [name], weights_dir, progress, offline, mirrors) / name


def download_into(
    artifact: Artifact,
    root: str | os.PathLike[str],
    names: Sequence[str] | None = None,
    *,
    progress: bool = True,
    offline: bool | None = None,
    mirrors: str | Sequence[str] | None = None,
) -> Path:
    """Make ``root/<artifact.name>/`` hold verified copies of ``names`` (default: every file), exactly as
    the cache would: files already there are checked, missing ones downloaded, stale temporary files
    removed, stamps written. The result is the layout a user folder and a mirror have. Returns the folder."""
    wanted = [f.name for f in artifact.files] if names is None else [artifact.file(n).name for n in names]
    folder = Path(root).expanduser().absolute() / artifact.name
    return _into_folder(artifact, wanted, folder, progress, offline_mode(offline), mirrors, in_cache=False)


def _resolve(
    artifact: Artifact,
    names: list[str],
    weights_dir: str | os.PathLike[str] | None,
    progress: bool,
    offline: bool | None,
    mirrors: str | Sequence[str] | None,
) -> Path:
    if weights_dir is None:
        weights_dir = os.environ.get("FSD_WEIGHTS_DIR") or None
    if weights_dir is not None:
        return _from_user_folder(artifact, names, Path(weights_dir).expanduser())
    folder = cache_dir() / artifact.name
    return _into_folder(artifact, names, folder, progress, offline_mode(offline), mirrors, in_cache=True)


def offline_mode(offline: bool | None = None) -> bool:
    """``offline`` if given, else whether ``$FSD_OFFLINE`` says so (1/true/yes/on; 0/false/no/off/unset)."""
    if offline is not None:
        return bool(offline)
    value = os.environ.get("FSD_OFFLINE", "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InputError(f"$FSD_OFFLINE={os.environ['FSD_OFFLINE']!r} is not understood; set it to 1 or 0")


def _from_user_folder(artifact: Artifact, names: list[str], root: Path) -> Path:
    if not root.is_dir():
        raise WeightsFolderError(
            f"weights folder {root} does not exist or is not a folder (from weights_dir / --weights-dir / "
            f"$FSD_WEIGHTS_DIR); it should hold {artifact.name}/<file> for: {', '.join(names)}"
        )
    candidates = [root / artifact.name, root]
    folder = next((c for c in candidates if all((c / n).is_file() for n in names)), None)
    if folder is None:
        reported = candidates[0] if candidates[0].is_dir() else root
        missing = [n for n in names if not (reported / n).is_file()]
        raise WeightsError(
            f"weights folder {reported} lacks {plural(len(missing), 'file')} of {artifact.name}: "
            f"{', '.join(missing)}. A folder given as weights_dir / --weights-dir / $FSD_WEIGHTS_DIR is used as "
            "is, nothing is downloaded into it. " + _where_to_get(artifact, missing) + " Put them in "
            f"{root / artifact.name}/ (`fsd weights download --to {root}` does), or leave weights_dir and "
            "$FSD_WEIGHTS_DIR unset to download them into the cache."
        )
    for name in names:
        path = folder / name
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key in _checked_user_files:
            continue
        try:
            _check_kept(path, artifact.file(name), artifact, write_stamp=False)
        except WeightsError as err:
            raise WeightsError(
                f"{path} fails its check: {err}. Replace it with a good copy. "
                + _where_to_get(artifact, [name])
            ) from err
        _checked_user_files.add(key)
    return folder


def _into_folder(
    artifact: Artifact,
    names: list[str],
    folder: Path,
    progress: bool,
    offline: bool,
    mirrors: str | Sequence[str] | None,
    in_cache: bool,
) -> Path:
    remove_stale_parts(folder, artifact)
    missing = [n for n in names if not (folder / n).is_file()]
    for name in names:
        if name not in missing:
            path = folder / name
            try:
                _check_kept(path, artifact.file(name), artifact, write_stamp=True)
            except WeightsError as err:
                raise WeightsError(
                    f"{'cached file' if in_cache else 'file'} {path} fails its check: {err}. Delete it to download "
                    "it again, or replace it with a good copy. " + _where_to_get(artifact, [name])
                ) from err
    if not missing:
        return folder
    if offline:
        raise WeightsError(
            f"offline (offline=True or $FSD_OFFLINE): not downloading {plural(len(missing), 'missing file')} of "
            f"{artifact.name}: {', '.join(missing)} (into {folder}). " + _where_to_get(artifact, missing) + " "
            + _placement_help(artifact)
        )
    user = user_mirrors(mirrors)
    writable_hint = ("Set $FSD_CACHE_DIR to a writable folder, or download the files yourself and pass their "
                     "folder as weights_dir / --weights-dir / $FSD_WEIGHTS_DIR" if in_cache
                     else "Choose a folder you can write to")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WeightsError(f"cannot create folder {folder}: {err}. {writable_hint}") from err
    unreachable: dict[str, str] = {}
    for name in missing:
        _download(artifact, artifact.file(name), folder, progress, unreachable, user, writable_hint)
    return folder


def _sources(artifact: Artifact, name: str, user: tuple[str, ...]) -> list[tuple[str, str]]:
    """(base, url) pairs in the order they are tried: the user's mirrors, then the published ones."""
    return [(base, f"{base}/{artifact.name}/{name}") for base in user] + list(
        zip(artifact.mirrors, artifact.urls(name))
    )


def _where_to_get(artifact: Artifact, names: list[str]) -> str:
    if not artifact.mirrors:
        return "No download URL is declared for them."
    return "Get them from: " + "; ".join(" or ".join(artifact.urls(n)) for n in names) + "."


def _placement_help(artifact: Artifact) -> str:
    try:
        cache = str(cache_dir())
    except WeightsError:
        cache = "$FSD_CACHE_DIR"
    files = ", ".join(f.name for f in artifact.files)
    return (
        f"To place the files by hand, put them at {cache}/{artifact.name}/<file>, or in any folder with the "
        f"layout <folder>/{artifact.name}/<file> passed as weights_dir / --weights-dir / $FSD_WEIGHTS_DIR "
        f"(files of {artifact.name}: {files}); `fsd weights download --to <folder>` makes that layout."
    )


def _check(path: Path, file: RemoteFile, artifact: Artifact, sha: str | None) -> str | None:
    """Run every declared check on ``path``; raise WeightsError on the first failure. Returns the sha256
    when it was known or needed."""
    size = path.stat().st_size
    if file.min_bytes is not None and size < file.min_bytes:
        raise WeightsError(
            f"{file.name} has {size} bytes, expected at least {file.min_bytes} (an error page or a truncated file?)"
        )
    if sha is None and (file.sha256 is not None or file.sha256_prefix is not None):
        sha = sha256_of(path)
    if sha is not None:
        _check_pins(file, sha)
    if artifact.verify is not None:
        try:
            artifact.verify(path, file)
        except WeightsError:
            raise
        except Exception as err:
            raise WeightsError(f"{file.name} fails the structural check: {type(err).__name__}: {err}") from err
    return sha


def _check_pins(file: RemoteFile, sha: str) -> None:
    if file.sha256 is not None and sha != file.sha256:
        raise WeightsError(f"{file.name} has sha256 {sha}, expected {file.sha256}")
    if file.sha256_prefix is not None and not sha.startswith(file.sha256_prefix):
        raise WeightsError(f"{file.name} has sha256 {sha}, which does not start with {file.sha256_prefix}")


# ---- stamps: the sha256 of a verified file, next to it ---------------------------------------------


def _stamp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified")


def _read_stamp(path: Path) -> dict | None:
    try:
        stamp = json.loads(_stamp_path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stamp, dict) or not isinstance(stamp.get("sha256"), str):
        return None
    return stamp


def _stamp_matches(stamp: dict, stat: os.stat_result) -> bool:
    return (stamp.get("size"), stamp.get("mtime_ns"), stamp.get("ctime_ns")) == (
        stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns
    )


def recorded_sha256(path: str | os.PathLike[str]) -> tuple[str | None, bool]:
    """The sha256 recorded when ``path`` was last verified (``None`` if never), and whether the file is
    unchanged since (same size, mtime and ctime)."""
    path = Path(path)
    stamp = _read_stamp(path)
    if stamp is None:
        return None, False
    return stamp["sha256"], _stamp_matches(stamp, path.stat())


def _check_kept(path: Path, file: RemoteFile, artifact: Artifact, write_stamp: bool) -> str:
    """Check a file already in a folder: trusted without hashing if its stamp still matches, else checked
    in full (and stamped, if ``write_stamp``). Returns its sha256."""
    recorded, unchanged = recorded_sha256(path)
    if recorded is not None and unchanged:
        try:
            _check_pins(file, recorded)
            return recorded
        except WeightsError:
            pass  # a pin declared after it was stamped: the full check below gives the message
    sha = _check(path, file, artifact, None) or sha256_of(path)
    if recorded is not None and recorded != sha:
        warn(f"{path} changed since it was verified (sha256 {recorded} then, {sha} now); it passes every "
             "check and is used. If you did not replace it on purpose, delete it and download it again")
    if write_stamp:
        _write_stamp(path, sha)
    return sha


def check_file(artifact: Artifact, path: str | os.PathLike[str], name: str | None = None) -> str:
    """Check ``path`` in full as the artifact's file ``name`` (default: the file's own name): size, pins and
    structure, hashing it whatever its stamp says. Raises `WeightsError`; on success records the stamp
    (where the folder is writable) and returns the sha256."""
    path = Path(path)
    file = artifact.file(path.name if name is None else name)
    sha = sha256_of(path)
    _check(path, file, artifact, sha)
    _write_stamp(path, sha)
    return sha


def _write_stamp(path: Path, sha: str) -> None:
    stat = path.stat()
    record = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns, "sha256": sha}
    stamp = _stamp_path(path)
    try:
        tmp, handle = _open_part(stamp)  # locked, so a concurrent fetch's cleanup leaves it alone
    except (OSError, WeightsError):
        return  # a read-only folder still works; its files are just checked again each run
    try:
        with handle:
            handle.write(json.dumps(record).encode())
            handle.truncate()
            if os.name == "nt":
                handle.close()
            os.replace(tmp, stamp)
    except OSError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


# ---- temporary files of downloads ------------------------------------------------------------------


def remove_stale_parts(folder: str | os.PathLike[str], artifact: Artifact) -> list[Path]:
    """Delete the temporary files interrupted downloads of ``artifact`` left in ``folder`` (a killed
    process never reaches its cleanup) and return their paths. Files a running download holds (by a
    lock on POSIX; on Windows an open file cannot be deleted) are left alone."""
    prefixes = tuple(f".{f.name}." for f in artifact.files) + tuple(f"..{f.name}.verified." for f in artifact.files)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    removed = []
    for entry in entries:
        if not (entry.name.endswith(".part") and entry.name.startswith(prefixes)):
            continue
        path = Path(entry.path)
        if entry.is_file(follow_symlinks=False) and str(path) not in _live_parts and _unlink_if_abandoned(path):
            removed.append(path)
    return removed


def _lock(handle: BinaryIO) -> bool | None:
    """Take an exclusive lock on an open file without waiting: True if taken, False if another holder has
    it, None where this filesystem offers no locks."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


def _unlink_if_abandoned(path: Path) -> bool:
    if fcntl is None:
        try:
            path.unlink()  # fails while a download has it open
        except OSError:
            return False
        return True
    try:
        handle = open(path, "r+b")
    except OSError:
        return False
    with handle:
        locked = _lock(handle)
        if locked is False:
            return False
        try:
            stat = os.fstat(handle.fileno())
            if locked is None and time.time() - stat.st_mtime < _UNLOCKED_STALE_S:
                return False
            if not os.path.samestat(stat, os.stat(path)):
                return False
            path.unlink()
        except OSError:
            return False
    return True


def _open_part(dest: Path) -> tuple[Path, BinaryIO]:
    """A new temporary file next to ``dest``, open for writing and locked (so no cleanup takes it)."""
    for _ in range(5):
        try:
            tmp = temporary_sibling(dest)
            handle = open(tmp, "r+b")
        except FileNotFoundError:
            if not dest.parent.is_dir():
                raise
            continue  # another fetch's cleanup took it before it was locked: take another
        if _lock(handle) is not False:
            try:
                same = os.path.samestat(os.fstat(handle.fileno()), os.stat(tmp))
            except OSError:
                same = False
            if same:
                return tmp, handle
        handle.close()  # another process's cleanup took it in the instant before the lock: take another
    raise WeightsError(f"cannot keep a temporary file next to {dest}: another process keeps removing them")


@contextmanager
def _removed_on_termination(path: Path) -> Iterator[None]:
    """While the block runs, SIGTERM and SIGHUP delete ``path`` and then end the process as they would
    have. Only where their action is the default (which skips every ``finally``) and in the main thread:
    a handler the program installed itself stays in charge."""
    def handler(signum: int, frame: object) -> None:
        try:
            path.unlink(missing_ok=True)
        finally:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    installed: list[int] = []
    if threading.current_thread() is threading.main_thread():
        for name in ("SIGTERM", "SIGHUP"):
            signum = getattr(signal, name, None)
            try:
                if signum is not None and signal.getsignal(signum) == signal.SIG_DFL:
                    signal.signal(signum, handler)
                    installed.append(signum)
            except (OSError, ValueError):
                pass
    try:
        yield
    finally:
        for signum in installed:
            if signal.getsignal(signum) is handler:
                signal.signal(signum, signal.SIG_DFL)


def _download(
    artifact: Artifact,
    file: RemoteFile,
    folder: Path,
    progress: bool,
    unreachable: dict[str, str],
    user: tuple[str, ...],
    writable_hint: str,
) -> None:
    """Try each mirror in turn. ``unreachable`` maps mirrors whose host failed earlier in this fetch to the
    reason, so the remaining files do not wait for the same dead server again."""
    dest = folder / file.name
    tried: list[tuple[str, str]] = []
    for base, url in _sources(artifact, file.name, user):
        if base in unreachable:
            tried.append((url, f"skipped, server unreachable earlier: {unreachable[base]}"))
            continue
        try:
            tmp, handle = _open_part(dest)
        except OSError as err:
            raise WeightsError(f"cannot write into folder {folder}: {err}. {writable_hint}") from err
        _live_parts.add(str(tmp))
        try:
            with handle, _removed_on_termination(tmp):
                try:
                    sha = _stream(url, handle, file.name, progress)
                    _check(tmp, file, artifact, sha)
                except Exception as err:
                    reason = _FILE_HINT.sub("", _reason(err).replace(str(tmp), url))
                    tried.append((url, reason))
                    if _server_unreachable(err):
                        unreachable[base] = reason
                    continue
                if os.name == "nt":
                    handle.close()  # Windows cannot rename an open file
                os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
            _live_parts.discard(str(tmp))
        _write_stamp(dest, sha)
        return
    lines = "\n".join(f"  - {url}: {reason}" for url, reason in tried) or "  (no mirror is declared)"
    raise DownloadError(
        f"could not download {file.name} of {artifact.name}"
        + (f" ({artifact.description})" if artifact.description else "")
        + f"; tried:\n{lines}\n"
        + _placement_help(artifact)
    )


def _stream(url: str, out: BinaryIO, label: str, progress: bool) -> str:
    """Download ``url`` into ``out``; return its sha256. A body shorter than Content-Length is an error,
    and so is an HTML page (none of the files is one: it is a server's error or login page)."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    digest = hashlib.sha256()
    received = 0
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        if response.headers.get_content_type() == "text/html":
            raise WeightsError(f"the server sent an HTML page, not {label} (Content-Type text/html)")
        header = response.headers.get("Content-Length", "")
        expected = int(header) if header.strip().isdigit() else None
        with tqdm(
            total=expected, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
            file=sys.stderr, disable=not progress, leave=False,
        ) as bar:
            while chunk := response.read(_CHUNK):
                if received == 0 and chunk.lstrip(b"\xef\xbb\xbf \t\r\n")[:16].lower().startswith(_HTML_STARTS):
                    raise WeightsError(f"the server sent an HTML page, not {label}")
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    out.flush()
    if expected is not None and received != expected:
        raise WeightsError(f"truncated transfer: received {received} of {expected} bytes")
    return digest.hexdigest()


def _reason(err: Exception) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return f"cannot connect: {err.reason}"
    if isinstance(err, TimeoutError):
        return f"no answer within {TIMEOUT_S:.0f} s"
    if isinstance(err, WeightsError):
        return str(err)
    if isinstance(err, http.client.HTTPException):
        return f"broken HTTP response: {type(err).__name__}: {err}"
    return f"{type(err).__name__}: {err}"


def _server_unreachable(err: Exception) -> bool:
    if isinstance(err, urllib.error.HTTPError):
        return False
    return isinstance(err, (urllib.error.URLError, TimeoutError))

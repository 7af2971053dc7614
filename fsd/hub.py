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
   offline (``offline=True`` or ``$FSD_OFFLINE=1``).

Every file is checked before it is used: ``min_bytes``, the ``sha256`` pin, the ``sha256_prefix``
and ``artifact.verify``. Hand-placed files get the same checks as downloaded ones. A file in the cache
that passed is recorded in a hidden stamp ``.<file>.verified`` (size, mtime, sha256) so later runs
skip re-hashing it; files in a user folder are checked once per process.

Downloads stream into a hidden ``.part`` file in the cache folder itself and are moved into place
with ``os.replace`` only after every check passed, so the cache holds complete verified files or
nothing, also when two processes download at once or the user presses Ctrl-C.

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
import sys
import types
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from fsd._io import atomic_write_bytes, temporary_sibling
from fsd.errors import DownloadError, InputError, WeightsError, WeightsFolderError

__all__ = ["RemoteFile", "Artifact", "cache_dir", "fetch", "fetch_file", "sha256_of"]

TIMEOUT_S = 30.0
USER_AGENT = "pytorch-fsd (Frechet Segmentation Distance; python urllib)"
_CHUNK = 1 << 20
_HEX = re.compile(r"[0-9a-f]+")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}

# (resolved path, size, mtime_ns) of user-folder files that passed their checks in this process.
_checked_user_files: set[tuple[str, int, int]] = set()


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


def fetch(
    artifact: Artifact,
    *,
    weights_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    offline: bool | None = None,
) -> Path:
    """Return the folder that holds every file of the artifact, downloading what is missing."""
    return _resolve(artifact, [f.name for f in artifact.files], weights_dir, progress, offline)


def fetch_file(
    artifact: Artifact,
    name: str,
    *,
    weights_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    offline: bool | None = None,
) -> Path:
    """Return the path of one file of the artifact, downloading it (only it) if missing."""
    artifact.file(name)
    return _resolve(artifact, [name], weights_dir, progress, offline) / name


def _resolve(
    artifact: Artifact,
    names: list[str],
    weights_dir: str | os.PathLike[str] | None,
    progress: bool,
    offline: bool | None,
) -> Path:
    if weights_dir is None:
        weights_dir = os.environ.get("FSD_WEIGHTS_DIR") or None
    if weights_dir is not None:
        return _from_user_folder(artifact, names, Path(weights_dir).expanduser())
    return _from_cache(artifact, names, progress, _offline(offline))


def _offline(offline: bool | None) -> bool:
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
            f"weights folder {reported} lacks {len(missing)} file(s) of {artifact.name}: {', '.join(missing)}. "
            "A folder given as weights_dir / --weights-dir / $FSD_WEIGHTS_DIR is used as is, nothing is "
            "downloaded into it. " + _where_to_get(artifact, missing) + " Put them in "
            f"{root / artifact.name}/, or leave weights_dir and $FSD_WEIGHTS_DIR unset to download them "
            "into the cache."
        )
    for name in names:
        path = folder / name
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key in _checked_user_files:
            continue
        try:
            _check(path, artifact.file(name), artifact, None)
        except WeightsError as err:
            raise WeightsError(
                f"{path} fails its check: {err}. Replace it with a good copy. "
                + _where_to_get(artifact, [name])
            ) from err
        _checked_user_files.add(key)
    return folder


def _from_cache(artifact: Artifact, names: list[str], progress: bool, offline: bool) -> Path:
    folder = cache_dir() / artifact.name
    missing = [n for n in names if not (folder / n).is_file()]
    for name in names:
        if name not in missing:
            _check_cached(folder / name, artifact.file(name), artifact)
    if not missing:
        return folder
    if offline:
        raise WeightsError(
            f"offline (offline=True or $FSD_OFFLINE): not downloading {len(missing)} missing file(s) of "
            f"{artifact.name}: {', '.join(missing)}. " + _where_to_get(artifact, missing) + " "
            + _placement_help(artifact)
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WeightsError(
            f"cannot create cache folder {folder}: {err}. Set $FSD_CACHE_DIR to a writable folder, or "
            "download the files yourself and pass their folder as weights_dir / --weights-dir / $FSD_WEIGHTS_DIR"
        ) from err
    unreachable: dict[str, str] = {}
    for name in missing:
        _download(artifact, artifact.file(name), folder, progress, unreachable)
    return folder


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
        f"(files of {artifact.name}: {files})."
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


def _stamp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified")


def _check_cached(path: Path, file: RemoteFile, artifact: Artifact) -> None:
    stat = path.stat()
    try:
        stamp = json.loads(_stamp_path(path).read_text())
        trusted = stamp["size"] == stat.st_size and stamp["mtime_ns"] == stat.st_mtime_ns
        sha = stamp["sha256"]
        if trusted:
            _check_pins(file, sha)
            return
    except (OSError, ValueError, KeyError, TypeError, WeightsError):
        pass
    try:
        sha = _check(path, file, artifact, None) or sha256_of(path)
    except WeightsError as err:
        raise WeightsError(
            f"cached file {path} fails its check: {err}. Delete it to download it again, or replace it with a "
            "good copy. " + _where_to_get(artifact, [file.name])
        ) from err
    _write_stamp(path, sha)


def _write_stamp(path: Path, sha: str) -> None:
    stat = path.stat()
    record = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha}
    try:
        atomic_write_bytes(_stamp_path(path), json.dumps(record).encode())
    except OSError:
        pass  # a read-only cache still works; its files are just re-checked each run


def _download(
    artifact: Artifact, file: RemoteFile, folder: Path, progress: bool, unreachable: dict[str, str]
) -> None:
    """Try each mirror in turn. ``unreachable`` maps mirrors whose host failed earlier in this fetch to the
    reason, so the remaining files do not wait for the same dead server again."""
    dest = folder / file.name
    tried: list[tuple[str, str]] = []
    for base, url in zip(artifact.mirrors, artifact.urls(file.name)):
        if base in unreachable:
            tried.append((url, f"skipped, server unreachable earlier: {unreachable[base]}"))
            continue
        try:
            tmp = temporary_sibling(dest)
        except OSError as err:
            raise WeightsError(
                f"cannot write into cache folder {folder}: {err}. Set $FSD_CACHE_DIR to a writable folder"
            ) from err
        try:
            try:
                sha = _stream(url, tmp, file.name, progress)
                _check(tmp, file, artifact, sha)
            except Exception as err:
                reason = _reason(err)
                tried.append((url, reason))
                if _server_unreachable(err):
                    unreachable[base] = reason
                continue
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        _write_stamp(dest, sha)
        return
    lines = "\n".join(f"  - {url}: {reason}" for url, reason in tried) or "  (no mirror is declared)"
    raise DownloadError(
        f"could not download {file.name} of {artifact.name}"
        + (f" ({artifact.description})" if artifact.description else "")
        + f"; tried:\n{lines}\n"
        + _placement_help(artifact)
    )


def _stream(url: str, tmp: Path, label: str, progress: bool) -> str:
    """Download ``url`` into ``tmp``; return its sha256. A body shorter than Content-Length is an error."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    digest = hashlib.sha256()
    received = 0
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, tmp.open("wb") as out:
        header = response.headers.get("Content-Length", "")
        expected = int(header) if header.strip().isdigit() else None
        with tqdm(
            total=expected, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
            file=sys.stderr, disable=not progress, leave=False,
        ) as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
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

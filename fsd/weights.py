"""Model files ahead of time: download them, verify them, see where they are looked for.

For clusters whose compute nodes have no internet, and for days the academic hosts are down::

    fsd weights download --all --to /shared/fsd-weights        # once, on a node with internet
    FSD_OFFLINE=1 fsd --weights-dir /shared/fsd-weights REAL FAKE  # anywhere, no network needed
    fsd weights verify /shared/fsd-weights                      # one line per file: status, size, sha256

What can be named (`WHATS`): ``segmenter`` (the paper's UPP segmenter, the default), ``lsun_church``
and ``lsun_bedroom`` (the published baselines, with the segmenter's ``labels.json`` their class names
come from), ``proggan:NAME`` (a published Progressive GAN), ``encoder:NAME`` (a published inversion
encoder), and ``all``. Files land in ``<folder>/<artifact>/<file>``: the layout ``--weights-dir`` reads,
the cache has, and a mirror serves (``$FSD_MIRRORS``, see `fsd.hub`).

>>> import fsd.weights
>>> reports = fsd.weights.download("segmenter", to="/shared/fsd-weights")  # doctest: +SKIP
>>> [r.status for r in fsd.weights.verify("/shared/fsd-weights")]         # doctest: +SKIP
['ok', 'ok', 'ok']
>>> print(fsd.weights.format_where(fsd.weights.where()))                    # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fsd import baselines
from fsd._text import plural
from fsd.errors import DownloadError, InputError, WeightsError
from fsd.hub import (
    Artifact,
    cache_dir,
    check_file,
    download_into,
    offline_mode,
    recorded_sha256,
    remove_stale_parts,
    sha256_of,
    user_mirrors,
)
from fsd.segmenters import weights as segmenter_weights

__all__ = [
    "WHATS", "FileReport", "Place", "artifacts", "default_folder", "download", "verify", "damage_hint", "where",
    "format_where",
]

WHATS = "segmenter, lsun_church, lsun_bedroom, proggan:NAME, encoder:NAME or all"
_SHA_WIDTH = 64


@dataclass(frozen=True)
class FileReport:
    """One file in a folder of model files.

    ``status``: ``ok`` (passes every check), ``changed`` (passes, but its sha256 differs from the one
    recorded when it was last verified), ``damaged`` (fails a check; ``detail`` says which),
    ``missing`` (a file of an artifact of which other files are present), ``leftover`` (the temporary
    file of an interrupted download), ``derived`` (statistics this package computed from a baseline),
    ``unknown`` (not a declared file).
    """

    status: str
    path: Path
    artifact: str | None = None
    size: int | None = None
    sha256: str | None = None
    detail: str = ""

    @property
    def damaged(self) -> bool:
        return self.status == "damaged"

    def line(self, root: str | os.PathLike[str] | None = None) -> str:
        """``status  size  sha256  path  (detail)``, the path relative to ``root`` where it is inside it."""
        shown = str(self.path)
        if root is not None:
            try:
                shown = str(self.path.relative_to(root))
            except ValueError:
                pass
        size = "-" if self.size is None else str(self.size)
        text = f"{self.status:<8} {size:>11} {self.sha256 or '-':<{_SHA_WIDTH}} {shown}"
        return f"{text}  ({self.detail})" if self.detail else text


@dataclass(frozen=True)
class Place:
    """One place model files are looked for, in the order `where` lists them.

    ``kind``: ``weights folder``, ``cache`` or ``mirror``. ``location``: its path or base URL (empty for
    a weights folder that is not set). ``origin``: what chose it. ``used``: whether a run with the
    current settings looks there. ``holds`` (folders only): artifact name -> the names of its files
    present there.
    """

    kind: str
    location: str
    origin: str
    used: bool
    note: str = ""
    holds: dict[str, tuple[str, ...]] | None = None


def artifacts() -> list[Artifact]:
    """Every declared artifact: the segmenter, the baselines, the generators, the encoders."""
    found = [segmenter_weights.UPP_WEIGHTS]
    for baseline in baselines.BASELINES.values():
        if all(a.name != baseline.artifact.name for a in found):
            found.append(baseline.artifact)
    proggans, encoders = _generator_artifacts()
    return found + list(proggans.values()) + list(encoders.values())


def _generator_artifacts() -> tuple[dict[str, Artifact], dict[str, Artifact]]:
    # Imported when needed: fsd.invert loads in seconds, which `import fsd` should not pay for.
    # Reached by name, as published generators are: the core package never imports fsd.invert's modules.
    import importlib

    ENCODER_ARTIFACTS = importlib.import_module("fsd.invert.encoder").ENCODER_ARTIFACTS  # noqa: N806
    PROGGAN_ARTIFACTS = importlib.import_module("fsd.invert.weights").PROGGAN_ARTIFACTS  # noqa: N806

    return dict(PROGGAN_ARTIFACTS), dict(ENCODER_ARTIFACTS)


def _plan(whats: Sequence[str]) -> list[tuple[Artifact, list[str]]]:
    """The artifacts and files that ``whats`` name, each artifact once, files in declared order."""
    wanted: dict[str, tuple[Artifact, set[str]]] = {}

    def add(artifact: Artifact, names: Sequence[str] | None = None) -> None:
        entry = wanted.setdefault(artifact.name, (artifact, set()))
        entry[1].update(f.name for f in artifact.files if names is None or f.name in names)

    upp = segmenter_weights.UPP_WEIGHTS
    for what in whats:
        if not isinstance(what, str):
            raise InputError(f"weights to download: {what!r} is not a name; name {WHATS}")
        kind, colon, name = what.partition(":")
        if what == "all":
            add(upp)
            for baseline in baselines.BASELINES.values():
                add(baseline.artifact, [baseline.file])
            proggans, encoders = _generator_artifacts()
            for artifact in [*proggans.values(), *encoders.values()]:
                add(artifact)
        elif what == "segmenter":
            add(upp)
        elif what in baselines.BASELINES:
            baseline = baselines.BASELINES[what]
            add(baseline.artifact, [baseline.file])
            add(upp, [segmenter_weights.LABELS_FILE])  # the baseline's class names
        elif colon and kind in ("proggan", "encoder"):
            proggans, encoders = _generator_artifacts()
            table = proggans if kind == "proggan" else encoders
            if name not in table:
                raise InputError(f"weights to download: unknown {what!r}; {kind}:NAME takes one of: "
                                 f"{', '.join(table)}")
            add(table[name])
        else:
            raise InputError(f"weights to download: unknown {what!r}; name {WHATS}")
    return [(artifact, [f.name for f in artifact.files if f.name in names]) for artifact, names in wanted.values()]


def _what_for(artifact: str, file: str) -> str:
    """The name `download` takes for one file (for hints)."""
    if artifact == segmenter_weights.UPP_NAME:
        return "segmenter"
    for name, baseline in baselines.BASELINES.items():
        if baseline.artifact.name == artifact and baseline.file == file:
            return name
    kind, _, name = artifact.partition("-")
    return f"{kind}:{name}" if kind in ("proggan", "encoder") else artifact


def default_folder() -> Path:
    """The folder runs read with the current settings: ``$FSD_WEIGHTS_DIR`` when set, else the cache."""
    explicit = os.environ.get("FSD_WEIGHTS_DIR", "")
    return Path(explicit).expanduser().absolute() if explicit else cache_dir()


def download(
    *whats: str,
    to: str | os.PathLike[str] | None = None,
    mirrors: str | Sequence[str] | None = None,
    progress: bool = True,
    offline: bool | None = None,
) -> list[FileReport]:
    """Fetch what ``whats`` name (default: ``"segmenter"``; see the module docstring) into
    ``to/<artifact>/<file>``; ``to`` defaults to ``$FSD_WEIGHTS_DIR`` when set, else the cache.

    Files already there are checked (and kept), the temporary files interrupted downloads of any declared
    artifact left in ``to/<artifact>/`` are removed (not those a running download holds), missing files are
    downloaded from ``mirrors`` (else ``$FSD_MIRRORS``) and then the published mirrors. Every artifact
    is attempted even when one fails; the failures are raised together afterwards. Offline
    (``offline=True`` or ``$FSD_OFFLINE=1``) nothing is downloaded: a complete folder passes, an
    incomplete one is an error naming the missing files. Returns one ``ok`` report per file.
    """
    plan = _plan(whats or ("segmenter",))
    root = Path(to).expanduser().absolute() if to is not None else default_folder()
    if root.exists() and not root.is_dir():
        raise InputError(f"--to / to: {root} exists and is not a folder; choose a folder for the model files")
    user_mirrors(mirrors)  # a malformed mirror list is refused before anything is fetched
    for artifact in artifacts():  # every artifact's leftovers, not only those of the ones asked for
        remove_stale_parts(root / artifact.name, artifact)
    reports: list[FileReport] = []
    failures: list[WeightsError] = []
    for artifact, names in plan:
        try:
            folder = download_into(artifact, root, names, progress=progress, offline=offline, mirrors=mirrors)
        except WeightsError as err:
            failures.append(err)
            continue
        for name in names:
            path = folder / name
            recorded, unchanged = recorded_sha256(path)
            sha = recorded if recorded is not None and unchanged else sha256_of(path)
            reports.append(FileReport("ok", path, artifact.name, path.stat().st_size, sha))
    if len(failures) == 1 and not reports:
        raise failures[0]
    if failures:
        kind = DownloadError if all(isinstance(f, DownloadError) for f in failures) else WeightsError
        done = plural(len(plan) - len(failures), "artifact")
        raise kind(f"{plural(len(failures), 'artifact')} of {len(plan)} not fetched into {root} ({done} fetched):\n"
                   + "\n".join(str(f) for f in failures))
    return reports


def verify(folder: str | os.PathLike[str] | None = None) -> list[FileReport]:
    """Check every model file in ``folder`` (default: ``$FSD_WEIGHTS_DIR`` when set, else the cache) in
    full, whatever its stamp says, and report each (see `FileReport`). Files that pass get their stamp
    (sha256) recorded where the folder is writable. Nothing is deleted or downloaded.

    Both layouts ``--weights-dir`` reads are understood: ``<folder>/<artifact>/<file>`` and the files
    directly in ``<folder>``. A folder that holds no declared file is an `InputError`.
    """
    root = Path(folder).expanduser().absolute() if folder is not None else default_folder()
    if not root.is_dir():
        raise InputError(f"{root} does not exist or is not a folder; give the folder of model files to verify "
                         "(the one passed as --weights-dir), or fetch files into it with `fsd weights download --to`")
    declared = artifacts()
    by_folder = {a.name: a for a in declared}
    by_file: dict[str, Artifact] = {}
    for artifact in declared:
        for f in artifact.files:
            by_file.setdefault(f.name, artifact)
    reports: list[FileReport] = []
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and entry.name in by_folder:
            reports += _verify_artifact_folder(entry, by_folder[entry.name], root)
        elif entry.is_dir() and entry.name == "baselines":
            reports += [FileReport("derived", p, None, p.stat().st_size, None,
                                   "statistics computed from a published tally; rebuilt when missing")
                        for p in sorted(entry.glob("*.npz"))]
        elif entry.name.startswith("."):
            if entry.name.endswith(".part"):
                reports.append(_leftover(entry, in_artifact_folder=False))
        elif entry.is_file() and entry.name in by_file:
            reports.append(_verify_one(entry, by_file[entry.name]))
        else:
            reports.append(FileReport("unknown", entry, None, entry.stat().st_size if entry.is_file() else None,
                                      None, "not a file or folder of a declared artifact"))
    if not any(r.status in ("ok", "changed", "damaged") for r in reports):
        raise InputError(f"{root} holds no model files (expected <artifact>/<file>, e.g. "
                         f"{segmenter_weights.UPP_NAME}/{segmenter_weights.ENCODER_FILE}); fetch them with "
                         f"`fsd weights download --to {root}`")
    return reports


def _verify_artifact_folder(folder: Path, artifact: Artifact, root: Path) -> list[FileReport]:
    declared = {f.name for f in artifact.files}
    reports = [_verify_one(folder / f.name, artifact) for f in artifact.files if (folder / f.name).is_file()]
    present = {r.path.name for r in reports}
    reports += [FileReport("missing", folder / f.name, artifact.name, detail="not downloaded: "
                           f"`fsd weights download {_what_for(artifact.name, f.name)} --to {root}` fetches it")
                for f in artifact.files if f.name not in present]
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            if entry.name.endswith(".part"):
                reports.append(_leftover(entry))
        elif entry.name not in declared:
            reports.append(FileReport("unknown", entry, artifact.name, entry.stat().st_size if entry.is_file() else None,
                                      None, f"not a file of {artifact.name}"))
    return reports


def _verify_one(path: Path, artifact: Artifact) -> FileReport:
    recorded, _ = recorded_sha256(path)
    size = path.stat().st_size
    try:
        sha = check_file(artifact, path)
    except WeightsError as err:
        sha = sha256_of(path)
        was = f"; its sha256 was {recorded} when it was verified" if recorded is not None and recorded != sha else ""
        return FileReport("damaged", path, artifact.name, size, sha, f"{err}{was}")
    if recorded is not None and recorded != sha:
        return FileReport("changed", path, artifact.name, size, sha,
                          f"passes every check, but its sha256 was {recorded} when it was verified: if you did not "
                          "replace it on purpose, delete it and download it again")
    return FileReport("ok", path, artifact.name, size, sha)


def _leftover(path: Path, in_artifact_folder: bool = True) -> FileReport:
    detail = "temporary file of an interrupted download: "
    if in_artifact_folder:
        detail += ("`fsd weights download --to` this folder removes it (so does a fetch, where this is the cache); "
                   "or delete it while no download is running")
    else:
        detail += "no download writes here; delete it while no download is running"
    return FileReport("leftover", path, None, path.stat().st_size, None, detail)


def damage_hint(reports: Sequence[FileReport], root: str | os.PathLike[str]) -> str:
    """What to do about the damaged files among ``reports``: one sentence naming them and the command."""
    damaged = [r for r in reports if r.damaged]
    whats = sorted({_what_for(r.artifact or "", r.path.name) for r in damaged})
    return (f"{plural(len(damaged), 'damaged file')} in {root}: {', '.join(str(r.path) for r in damaged)}. "
            f"Delete {'it and fetch a good copy' if len(damaged) == 1 else 'them and fetch good copies'} with "
            f"`fsd weights download {' '.join(whats)} --to {root}`")


def where(weights_dir: str | os.PathLike[str] | None = None,
          mirrors: str | Sequence[str] | None = None) -> list[Place]:
    """Where model files are looked for, in order, with the current settings (``weights_dir`` /
    ``$FSD_WEIGHTS_DIR``, ``$FSD_CACHE_DIR``, ``$FSD_OFFLINE``, ``mirrors`` / ``$FSD_MIRRORS``), and what
    each folder holds."""
    declared = artifacts()
    chosen = weights_dir if weights_dir is not None else os.environ.get("FSD_WEIGHTS_DIR") or None
    offline = offline_mode()
    places: list[Place] = []
    if chosen is None:
        places.append(Place("weights folder", "", "not set (weights_dir / --weights-dir / $FSD_WEIGHTS_DIR)", False))
    else:
        folder = Path(chosen).expanduser().absolute()
        origin = "weights_dir" if weights_dir is not None else "$FSD_WEIGHTS_DIR"
        note = ("used alone: read as <folder>/<artifact>/<file>, then <folder>/<file>; never written to, nothing is "
                "downloaded" if folder.is_dir() else "does not exist: every run fails until it does")
        places.append(Place("weights folder", str(folder), origin, True, note, _holdings(folder, declared, True)))
    cache = cache_dir()
    origin = ("$FSD_CACHE_DIR" if os.environ.get("FSD_CACHE_DIR") else
              "$XDG_CACHE_HOME/fsd" if os.environ.get("XDG_CACHE_HOME", "").startswith("/") else "~/.cache/fsd")
    if chosen is not None:
        note = "not used while a weights folder is set"
    elif offline:
        note = "offline ($FSD_OFFLINE): what is missing here is an error, nothing is downloaded"
    else:
        note = "missing files are downloaded into it"
    places.append(Place("cache", str(cache), origin, chosen is None, note, _holdings(cache, declared, False)))
    downloading = chosen is None and not offline
    idle = "" if downloading else ("; not tried: a weights folder is set" if chosen is not None
                                   else "; not tried: offline ($FSD_OFFLINE)")
    for base in user_mirrors(mirrors):
        places.append(Place("mirror", base, "mirrors" if mirrors is not None else "$FSD_MIRRORS", downloading,
                            "tried first, as BASE/<artifact>/<file>" + idle))
    published: dict[str, list[str]] = {}
    for artifact in declared:
        for base in artifact.mirrors:
            published.setdefault(base, []).append(artifact.name)
    for base, names in published.items():
        places.append(Place("mirror", base, "published", downloading, "for " + ", ".join(names) + idle))
    return places


def _holdings(folder: Path, declared: list[Artifact], flat_too: bool) -> dict[str, tuple[str, ...]]:
    holds = {}
    for artifact in declared:
        names = tuple(f.name for f in artifact.files if (folder / artifact.name / f.name).is_file()
                      or (flat_too and (folder / f.name).is_file()))
        holds[artifact.name] = names
    return holds


def format_where(places: Sequence[Place]) -> str:
    """The text `fsd weights where` prints: one numbered line per place, then what each folder holds."""
    declared = {a.name: a for a in artifacts()}
    lines = []
    for number, place in enumerate(places, 1):
        head = f"{number}. {place.kind}: " + (f"{place.location} ({place.origin})" if place.location else place.origin)
        lines.append(head + (f"; {place.note}" if place.note else ""))
        if place.holds is None:
            continue
        held = {name: present for name, present in place.holds.items() if present}
        width = max((len(name) for name in held), default=0)
        for name, present in held.items():
            files = declared[name].files
            if len(present) == len(files):
                state = f"complete ({plural(len(files), 'file')})"
            else:
                missing = [f.name for f in files if f.name not in present]
                state = f"{len(present)} of {plural(len(files), 'file')}, missing: {', '.join(missing)}"
            lines.append(f"     {name:<{width}}  {state}")
        empty = [name for name, present in place.holds.items() if not present]
        if not held:
            lines.append("     no model files")
        elif empty:
            lines.append(f"     nothing of {', '.join(empty)}")
    return "\n".join(lines)

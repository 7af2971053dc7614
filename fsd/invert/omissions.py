"""What a generator drops from real photos: per-image and per-folder omission tables, and the report.

For each real photo x the generator's closest image G_f(r*) is found by layer inversion
(`fsd.invert.invert_layer`). Both are segmented with the package's segmenter (object classes) and
the per-class pixel percentages compared: ``difference = real % - reconstruction %``. A class with a
large positive difference is something the generator could not draw in that photo.

- `OmissionReport`: the percentages of N photos; per photo the classes lost (`lost_in`), over the
  folder which classes are lost most often and by how much (`classes`), and the photos ranked by
  how much of one class they lost (`photos_by_class`: "the photos where the generator dropped
  people"). A class counts as *lost* in a photo when its difference is at least ``min_loss``
  percentage points (1 by default); label 0 (no prediction) is never ranked.
- `omissions_from_labels`: the report from label maps (any segmenter, or hand-made maps).
- `invert_photos`: photos -> inversion -> segmentation, one `PhotoInversion` per photo.
- `invert_folder`: all of it, written to an output folder, drawn with `fsd.invert.pictures`, and
  `html_page` the folder's ``index.html``:

  ==================================  ===============================================================
  ``DIR/reconstructions/<name>.png``  the reconstruction G_f(r*), at the generator's resolution
  ``DIR/encoder_only/<name>.png``     the encoder's reconstruction G(E(x)) (step 0 of the inversion)
  ``DIR/panels/<name>.png``           photo and reconstruction over their segmentations, legend
  ``DIR/contact_sheet.png``           the panels of the first 100 photos in a grid
  ``DIR/omissions.csv``               one row per class: how often and how much it was lost
  ``DIR/omissions_by_photo.csv``      one row per (photo, class present in either segmentation)
  ``DIR/omissions.json``              settings, the class table, per photo its lost classes and files
  ``DIR/ranked_by_lost_<class>.csv``  photos ranked by the loss of a chosen class (``rank_by``)
  ``DIR/index.html``                  the panels and tables on one page, relative links, offline
  ==================================  ===============================================================

  ``<name>`` is the photo's file name without its extension (made unique with ``-2``, ``-3``, ...,
  and limited to letters, digits, ``.``, ``_`` and ``-``); ``<class>`` the class's name before its
  synonyms (`class_slug`: ``coffee-maker``), followed by ``-<id>`` only where two ranked classes would
  share a file name.

Photos are read with the segmenter's preprocessing (the paper's resize and centre crop to 256 px),
and, when the generator makes another size, again at the generator's resolution for the inversion.
Reconstructions are segmented as generated images are (`fsd.preprocess.quantize` to uint8, then the
same resize), so their percentages compare with FSD's.

Example (hand-made label maps with classes 0 "-", 1 "sky", 2 "person")::

    >>> import torch
    >>> real = torch.tensor([[[1, 1], [2, 2]]])       # half sky, half person
    >>> recon = torch.tensor([[[1, 1], [1, 2]]])      # the person shrank to a quarter
    >>> report = omissions_from_labels(real, recon, ["-", "sky", "person"], ids=["a.png"])
    >>> [(c.name, c.real, c.reconstruction) for c in report.lost_in("a.png")]
    [('person', 50.0, 25.0)]
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from fsd._text import plural, warn
from fsd._io import atomic_write_bytes, check_output_folder, prepare_output_folder
from fsd._page import Cell, document, link as _link, table
from fsd.errors import ImageReadError, InputError
from fsd.generators import images_to_uint8, prepare_images
from fsd.invert.inversion import (
    Features,
    InversionConfig,
    _calling,
    check_layer_inversion,
    feature_network,
    invert_layer,
)
from fsd.invert.pictures import contact_sheet, panel, thumbnail
from fsd.invert.split import PROGGAN_SPLIT, LayerSplit, SplitGenerator
from fsd.segmenters.base import Preprocessing, Segmenter, class_percentages
from fsd.sources import MapSource, open_source

__all__ = [
    "LostClass",
    "ClassOmission",
    "PhotoRank",
    "OmissionReport",
    "find_class",
    "ranking_file_names",
    "omissions_from_labels",
    "PhotoInversion",
    "invert_photos",
    "ReportOptions",
    "OmissionFolder",
    "invert_folder",
    "output_names",
    "html_page",
    "describe_network",
    "inversion_settings",
]

DEFAULT_MIN_LOSS = 1.0
CLASS_CSV_COLUMNS = (
    "rank", "index", "name", "photos_lost", "photos_present", "mean_loss_when_lost", "max_loss",
    "mean_difference", "mean_real", "mean_reconstruction",
)
PHOTO_CSV_COLUMNS = ("photo", "name", "index", "class", "real", "reconstruction", "difference", "lost")


@dataclass(frozen=True)
class LostClass:
    """One class in one photo: its pixel percentage in the photo and in the reconstruction."""

    index: int
    name: str
    real: float
    reconstruction: float

    @property
    def difference(self) -> float:
        """``real - reconstruction``, in percentage points; positive: the reconstruction lost area."""
        return self.real - self.reconstruction

    @property
    def label(self) -> str:
        """The class's full name (first words collide: towel / towel rack)."""
        return self.name

    def to_record(self) -> dict[str, object]:
        return {"index": self.index, "class": self.name, "real": self.real,
                "reconstruction": self.reconstruction, "difference": self.difference}


@dataclass(frozen=True)
class ClassOmission:
    """One class over all photos.

    ``photos_lost``: photos where it was lost (difference >= ``min_loss``); ``photos_present``:
    photos whose segmentation holds it; ``mean_loss_when_lost``: mean difference over the photos
    where it was lost (0 if none); ``max_loss``: the largest difference; ``mean_difference``: mean
    over all photos (negative when reconstructions add the class); ``mean_real`` /
    ``mean_reconstruction``: mean percentages over all photos.
    """

    index: int
    name: str
    photos_lost: int
    photos_present: int
    mean_loss_when_lost: float
    max_loss: float
    mean_difference: float
    mean_real: float
    mean_reconstruction: float

    @property
    def label(self) -> str:
        """The class's full name (first words collide: towel / towel rack)."""
        return self.name

    def to_record(self) -> dict[str, object]:
        return {"index": self.index, "name": self.name, "photos_lost": self.photos_lost,
                "photos_present": self.photos_present, "mean_loss_when_lost": self.mean_loss_when_lost,
                "max_loss": self.max_loss, "mean_difference": self.mean_difference,
                "mean_real": self.mean_real, "mean_reconstruction": self.mean_reconstruction}


@dataclass(frozen=True)
class PhotoRank:
    """One photo in a ranking by one class."""

    photo: str
    position: int
    real: float
    reconstruction: float

    @property
    def difference(self) -> float:
        return self.real - self.reconstruction


def _first_word(name: str) -> str:
    words = name.replace(",", " ").split()
    return (words[0] if words else name).lower()


def class_slug(name: str) -> str:
    """A file-name-safe form of a class's name before its synonyms, whole (never only its first word).

    >>> class_slug("coffee maker"), class_slug("person, individual, someone")
    ('coffee-maker', 'person')
    """
    primary = name.split(",")[0]
    return re.sub(r"[^0-9a-z]+", "-", primary.lower()).strip("-") or "class"


def ranking_file_names(class_names: Sequence[str], classes: Iterable[int]) -> dict[int, str]:
    """The ranking CSV of each class to rank by: ``ranked_by_lost_<class>.csv``, with ``-<id>`` appended
    only where two of them would share a name.

    >>> ranking_file_names(["-", "person, individual", "coffee maker"], [1, 2])
    {1: 'ranked_by_lost_person.csv', 2: 'ranked_by_lost_coffee-maker.csv'}
    >>> ranking_file_names(["-", "T.V.", "t v"], [1, 2])
    {1: 'ranked_by_lost_t-v-1.csv', 2: 'ranked_by_lost_t-v-2.csv'}
    """
    slugs = {c: class_slug(class_names[c]) for c in dict.fromkeys(classes)}
    counts = {slug: list(slugs.values()).count(slug) for slug in slugs.values()}
    return {c: f"ranked_by_lost_{slug}{f'-{c}' if counts[slug] > 1 else ''}.csv" for c, slug in slugs.items()}


def find_class(class_names: Sequence[str], cls: int | str) -> int:
    """The index of a class given by index, full name, or first word (``"person"``); case-insensitive.

    Raises `InputError` for an unknown or ambiguous name, listing similar names.
    """
    if isinstance(cls, (int, np.integer)) and not isinstance(cls, bool):
        if not 0 <= cls < len(class_names):
            raise InputError(f"class index {cls} is out of range [0, {len(class_names)})")
        return int(cls)
    wanted = str(cls).strip().lower()
    exact = [i for i, name in enumerate(class_names) if name.lower() == wanted]
    if exact:
        return exact[0]
    by_label = [i for i, name in enumerate(class_names) if _first_word(name) == wanted]
    if len(by_label) == 1:
        return by_label[0]
    if by_label:
        raise InputError(
            f"class {cls!r} is ambiguous: " + "; ".join(class_names[i] for i in by_label) + ". Give the full name"
        )
    close = [name for name in class_names if wanted and wanted in name.lower()][:8]
    hint = f"; similar: {', '.join(close)}" if close else ""
    raise InputError(f"no class {cls!r} among the segmenter's {len(class_names)} classes{hint}")


@dataclass(frozen=True)
class OmissionReport:
    """Per-class pixel percentages of N photos and of their reconstructions, and what they say.

    ``ids``: the photos' identities (paths); ``real`` and ``reconstruction``: float64 ``(N, C)``
    percentages (each row sums to 100); ``min_loss``: the difference, in percentage points, from
    which a class counts as lost in a photo.
    """

    ids: tuple[str, ...]
    class_names: tuple[str, ...]
    real: np.ndarray
    reconstruction: np.ndarray
    min_loss: float = DEFAULT_MIN_LOSS

    def __post_init__(self) -> None:
        object.__setattr__(self, "ids", tuple(str(i) for i in self.ids))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        real = np.asarray(self.real, dtype=np.float64)
        reconstruction = np.asarray(self.reconstruction, dtype=np.float64)
        shape = (len(self.ids), len(self.class_names))
        if real.shape != shape or reconstruction.shape != shape:
            raise InputError(
                f"percentages must have shape (photos, classes) = {shape}, got {real.shape} "
                f"and {reconstruction.shape}"
            )
        if len(set(self.ids)) != len(self.ids):
            raise InputError("photo ids must be unique")
        if not (math.isfinite(self.min_loss) and self.min_loss > 0):
            raise InputError(f"min_loss must be a positive number of percentage points, got {self.min_loss}")
        object.__setattr__(self, "real", real)
        object.__setattr__(self, "reconstruction", reconstruction)

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def difference(self) -> np.ndarray:
        """``real - reconstruction`` ``(N, C)``, in percentage points."""
        return self.real - self.reconstruction

    # -- lookups ----------------------------------------------------------------------------------
    def photo_index(self, photo: int | str | os.PathLike[str]) -> int:
        """A photo by position, by its id (path), or, when that is unique in the report, by its file name
        (``"astronaut.jpg"``), its stem (``"astronaut"``) or its output name (``"img_000-2"``)."""
        if isinstance(photo, (int, np.integer)) and not isinstance(photo, bool):
            if not 0 <= photo < self.n:
                raise InputError(f"photo index {photo} is out of range: the report holds {plural(self.n, 'photo')}")
            return int(photo)
        wanted = os.fspath(photo) if isinstance(photo, os.PathLike) else str(photo)
        if wanted in self.ids:
            return self.ids.index(wanted)
        paths = [os.path.normpath(ident.replace("\\", "/")) for ident in self.ids]
        names = [os.path.basename(path) for path in paths]
        ways = (
            ("path", paths, os.path.normpath(wanted.replace("\\", "/"))),
            ("file name", names, wanted),
            ("stem", [os.path.splitext(name)[0] for name in names], wanted),
            ("output name", output_names(self.ids), wanted),
        )
        for way, keys, key in ways:
            found = [k for k, candidate in enumerate(keys) if candidate == key]
            if len(found) == 1:
                return found[0]
            if found:
                raise InputError(f"photo {wanted!r} is ambiguous: {plural(len(found), 'photo')} have that {way} ("
                                 + ", ".join(self.ids[k] for k in found[:5]) + "); give the full path")
        shown = ", ".join(self.ids[:3]) + (", ..." if self.n > 3 else "")
        raise InputError(f"no photo {wanted!r} among the report's {plural(self.n, 'photo')} ({shown}); give "
                         "a photo's path, file name, stem or position")

    def class_index(self, cls: int | str) -> int:
        """A class by index, by full name, or by its first word (``"person"``); see `find_class`."""
        return find_class(self.class_names, cls)

    # -- per photo --------------------------------------------------------------------------------
    def lost_in(self, photo: int | str, top_k: int | None = None) -> tuple[LostClass, ...]:
        """The classes lost in one photo (difference >= ``min_loss``), largest difference first."""
        k = self.photo_index(photo)
        difference = self.real[k] - self.reconstruction[k]
        order = sorted(
            (c for c in range(1, len(self.class_names)) if difference[c] >= self.min_loss),
            key=lambda c: (-difference[c], c),
        )
        rows = tuple(
            LostClass(c, self.class_names[c], float(self.real[k, c]), float(self.reconstruction[k, c]))
            for c in order
        )
        return rows if top_k is None else rows[:top_k]

    def present_in(self, photo: int | str) -> tuple[LostClass, ...]:
        """Every class present in the photo or its reconstruction, largest difference first."""
        k = self.photo_index(photo)
        difference = self.real[k] - self.reconstruction[k]
        present = [c for c in range(len(self.class_names))
                   if self.real[k, c] > 0 or self.reconstruction[k, c] > 0]
        return tuple(
            LostClass(c, self.class_names[c], float(self.real[k, c]), float(self.reconstruction[k, c]))
            for c in sorted(present, key=lambda c: (-difference[c], c))
        )

    # -- over the folder --------------------------------------------------------------------------
    def classes(self) -> tuple[ClassOmission, ...]:
        """Classes present in some photo or reconstruction, lost most often first, then by how much."""
        difference = self.difference
        lost = difference >= self.min_loss
        rows = []
        for c in range(1, len(self.class_names)):
            if not (self.real[:, c].any() or self.reconstruction[:, c].any()):
                continue
            count = int(lost[:, c].sum())
            rows.append(
                ClassOmission(
                    index=c,
                    name=self.class_names[c],
                    photos_lost=count,
                    photos_present=int((self.real[:, c] > 0).sum()),
                    mean_loss_when_lost=float(difference[lost[:, c], c].mean()) if count else 0.0,
                    max_loss=float(difference[:, c].max()) if self.n else 0.0,
                    mean_difference=float(difference[:, c].mean()) if self.n else 0.0,
                    mean_real=float(self.real[:, c].mean()) if self.n else 0.0,
                    mean_reconstruction=float(self.reconstruction[:, c].mean()) if self.n else 0.0,
                )
            )
        return tuple(sorted(rows, key=lambda r: (-r.photos_lost, -r.mean_loss_when_lost,
                                                 -r.mean_difference, r.index)))

    def photos_by_class(self, cls: int | str) -> tuple[PhotoRank, ...]:
        """Every photo ranked by how much of class ``cls`` its reconstruction lost, most first.

        Photos where the class appears in neither image come last (difference 0, in photo order).
        """
        c = self.class_index(cls)
        difference = self.real[:, c] - self.reconstruction[:, c]
        order = sorted(range(self.n), key=lambda k: (-difference[k], k))
        return tuple(
            PhotoRank(self.ids[k], position, float(self.real[k, c]), float(self.reconstruction[k, c]))
            for position, k in enumerate(order, start=1)
        )

    # -- output -----------------------------------------------------------------------------------
    def to_dict(self, names: Sequence[str] | None = None) -> dict[str, object]:
        """JSON-able: settings, the class table, and per photo its lost classes (``names``: output names)."""
        names = list(names) if names is not None else list(self.ids)
        return {
            "units": "percent of pixels; difference = real - reconstruction, in percentage points",
            "min_loss": self.min_loss,
            "n_photos": self.n,
            "classes": [row.to_record() for row in self.classes()],
            "photos": [
                {"id": ident, "name": name, "lost": [c.to_record() for c in self.lost_in(k)]}
                for k, (ident, name) in enumerate(zip(self.ids, names))
            ],
        }

    def format_table(self, k: int = 20) -> str:
        """The ``k`` classes lost most often, as an aligned text table."""
        rows = [r for r in self.classes() if r.photos_lost > 0][:k]
        if not rows:
            return (f"no class lost {plural(self.min_loss, 'percentage point')} or more in "
                    + ("the photo" if self.n == 1 else f"any of the {self.n} photos"))
        headers = ("#", "class", "lost in", "mean loss", "max loss", "real %", "recon %")
        body = [
            (str(i), r.name, f"{r.photos_lost}/{self.n}", f"{r.mean_loss_when_lost:.2f}",
             f"{r.max_loss:.2f}", f"{r.mean_real:.2f}", f"{r.mean_reconstruction:.2f}")
            for i, r in enumerate(rows, start=1)
        ]
        widths = [max(len(row[c]) for row in (headers, *body)) for c in range(len(headers))]

        def line(row: tuple[str, ...]) -> str:
            return "  ".join(v.ljust(w) if c == 1 else v.rjust(w) for c, (v, w) in enumerate(zip(row, widths)))

        return "\n".join([
            f"Classes lost most often ({plural(self.n, 'photo')}; lost: at least "
            f"{plural(self.min_loss, 'percentage point')} less in the reconstruction; losses in percentage points)",
            line(headers),
            "-" * len(line(headers)),
            *(line(row) for row in body),
        ])

    def write_class_csv(self, path: str | os.PathLike[str]) -> None:
        rows = [
            [rank, r.index, r.name, r.photos_lost, r.photos_present, repr(r.mean_loss_when_lost),
             repr(r.max_loss), repr(r.mean_difference), repr(r.mean_real), repr(r.mean_reconstruction)]
            for rank, r in enumerate(self.classes(), start=1)
        ]
        _write_csv(Path(path), CLASS_CSV_COLUMNS, rows)

    def write_photo_csv(self, path: str | os.PathLike[str], names: Sequence[str] | None = None) -> None:
        names = list(names) if names is not None else list(self.ids)
        rows = []
        for k, (ident, name) in enumerate(zip(self.ids, names)):
            for c in self.present_in(k):
                rows.append([ident, name, c.index, c.name, repr(c.real), repr(c.reconstruction),
                             repr(c.difference), int(c.difference >= self.min_loss)])
        _write_csv(Path(path), PHOTO_CSV_COLUMNS, rows)

    def write_ranking_csv(self, path: str | os.PathLike[str], cls: int | str,
                          names: Sequence[str] | None = None) -> None:
        names = dict(zip(self.ids, names if names is not None else self.ids))
        rows = [[r.position, r.photo, names[r.photo], repr(r.real), repr(r.reconstruction), repr(r.difference)]
                for r in self.photos_by_class(cls)]
        _write_csv(Path(path), ("rank", "photo", "name", "real", "reconstruction", "difference"), rows)


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    try:
        atomic_write_bytes(path, text.getvalue().encode("utf-8"))
    except OSError as error:
        raise InputError(f"cannot write {path}: {error}") from error


def omissions_from_labels(
    real_labels: torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray],
    reconstruction_labels: torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray],
    class_names: Sequence[str],
    *,
    ids: Sequence[str] | None = None,
    min_loss: float = DEFAULT_MIN_LOSS,
) -> OmissionReport:
    """The report from the label maps of the photos and of their reconstructions.

    Each side is integer label maps ``(N, H, W)``: a tensor, a numpy array, or a sequence of ``(H, W)``
    maps (such as the ``photo_labels`` / ``reconstruction_labels`` of `PhotoInversion` items).
    """
    real_maps = _label_maps(real_labels, "real_labels")
    reconstruction_maps = _label_maps(reconstruction_labels, "reconstruction_labels")
    if real_maps.shape[0] != reconstruction_maps.shape[0]:
        raise InputError(
            f"need label maps (N, H, W) for N photos and N reconstructions, got {tuple(real_maps.shape)} "
            f"and {tuple(reconstruction_maps.shape)}"
        )
    count = len(class_names)
    try:
        real = class_percentages(real_maps, count).numpy()
        reconstruction = class_percentages(reconstruction_maps, count).numpy()
    except ValueError as error:
        raise InputError(f"label maps do not fit {count} classes: {error}") from None
    ids = list(ids) if ids is not None else [f"photo[{k}]" for k in range(real.shape[0])]
    return OmissionReport(tuple(ids), tuple(class_names), real, reconstruction, min_loss)


def _label_maps(labels: object, what: str) -> torch.Tensor:
    """Label maps as an int64 CPU tensor ``(N, H, W)``, from a tensor, an array or a sequence of maps."""
    if isinstance(labels, (list, tuple)):
        if not labels:
            raise InputError(f"{what} is empty: no label maps")
        maps = [_label_tensor(m, f"{what}[{k}]") for k, m in enumerate(labels)]
        for k, m in enumerate(maps):
            if m.dim() != 2:
                raise InputError(f"{what}[{k}] must be one label map (H, W), got shape {tuple(m.shape)}")
        sizes = sorted({tuple(m.shape) for m in maps})
        if len(sizes) > 1:
            raise InputError(f"{what}: the label maps differ in size: {sizes}")
        return torch.stack(maps)
    maps = _label_tensor(labels, what)
    if maps.dim() != 3:
        hint = "; wrap one photo's (H, W) map in a list" if maps.dim() == 2 else ""
        raise InputError(f"{what} must be label maps (N, H, W), got shape {tuple(maps.shape)}{hint}")
    return maps


def _label_tensor(labels: object, what: str) -> torch.Tensor:
    if isinstance(labels, np.ndarray):
        if not np.issubdtype(labels.dtype, np.integer):
            raise InputError(f"{what} must hold integer class ids, got a {labels.dtype} array")
        labels = torch.from_numpy(np.ascontiguousarray(labels).astype(np.int64, copy=False))
    if not isinstance(labels, torch.Tensor):
        raise InputError(f"{what} must be label maps (a tensor, a numpy array or a list of maps), got "
                         f"{type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise InputError(f"{what} must hold integer class ids, got {labels.dtype}")
    return labels.cpu().long()


# -- running the inversion over photos --------------------------------------------------------------

@dataclass
class PhotoInversion:
    """One photo's inversion and segmentations, each named ``photo*`` or ``reconstruction*``.

    ``photo`` and ``reconstruction``: the images, uint8 ``(S, S, 3)`` as segmented (S: the
    segmenter's size); ``photo_labels`` / ``reconstruction_labels``: their label maps, int64
    ``(S, S)``; ``photo_percentages`` / ``reconstruction_percentages``: their per-class pixel
    percentages, float64 ``(C,)``. ``generated``: the reconstruction and ``encoder_only`` the step-0
    reconstruction, uint8 ``(H, W, 3)`` at the generator's resolution; ``loss``: the inversion's
    first and last total loss. (``real`` and ``reconstructed`` are deprecated names of the percentages.)
    """

    id: str
    photo: np.ndarray
    reconstruction: np.ndarray
    generated: np.ndarray
    encoder_only: np.ndarray
    photo_labels: np.ndarray
    reconstruction_labels: np.ndarray
    photo_percentages: np.ndarray
    reconstruction_percentages: np.ndarray
    loss: tuple[float, float]

    @property
    def real(self) -> np.ndarray:
        warn("PhotoInversion.real is deprecated: use photo_percentages", DeprecationWarning)
        return self.photo_percentages

    @property
    def reconstructed(self) -> np.ndarray:
        warn("PhotoInversion.reconstructed is deprecated: use reconstruction_percentages", DeprecationWarning)
        return self.reconstruction_percentages


def _generator_resolution(generator: nn.Module, start: object) -> int | None:
    resolution = getattr(generator, "resolution", None)
    if isinstance(resolution, int) and not isinstance(resolution, bool):
        return resolution
    architecture = getattr(start, "architecture", None)
    if isinstance(architecture, dict):
        if architecture.get("kind") == "hybrid":
            return 256
        shape = architecture.get("image_shape")
        if isinstance(shape, list) and len(shape) == 3 and shape[1] == shape[2]:
            return int(shape[1])
    return None


def _hwc(images: torch.Tensor) -> np.ndarray:
    return images.permute(0, 2, 3, 1).cpu().numpy()


def invert_photos(
    photos: object,
    generator: nn.Module,
    start: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    segmenter: Segmenter,
    *,
    split: LayerSplit = PROGGAN_SPLIT,
    features: Features = "vgg16",
    config: InversionConfig = InversionConfig(),
    batch_size: int = 8,
    device: str | torch.device | None = None,
    resolution: int | None = None,
    skip_bad_images: bool = False,
    skipped: list[tuple[str, str]] | None = None,
    progress: bool = True,
) -> Iterator[PhotoInversion]:
    """Invert and segment each photo, ``batch_size`` photos at a time (they are independent runs).

    ``photos``: a folder or anything `fsd.sources.open_source` reads. ``start``: the encoder (image
    -> latents). ``features``: the perceptual network, ``"vgg16"`` (the paper's, loaded once),
    ``"none"`` (pixel loss only) or a module (see `fsd.invert.inversion.feature_network`). ``resolution``: the generator's output size, when neither the generator
    (``resolution`` attribute) nor the encoder tells it; default: the segmenter's size.

    Everything is checked when this is called, before the first inversion step: every photo is
    opened, and the encoder, generator, split, feature network and segmenter run once on the first
    photo (`fsd.invert.inversion.check_layer_inversion`); the returned iterator then does the work.
    Unreadable photos raise `ImageReadError`, or with ``skip_bad_images`` are appended to
    ``skipped`` as ``(identity, reason)`` and left out.
    """
    plan = _plan_inversions(photos, generator, start, segmenter, split=split, features=features, config=config,
                            batch_size=batch_size, device=device, resolution=resolution,
                            skip_bad_images=skip_bad_images, progress=progress)
    if skipped is not None:
        skipped.extend(plan.skipped)
    return _run_inversions(plan, generator, start, segmenter, split=split, config=config, device=device,
                           progress=progress)


@dataclass
class _Plan:
    """What the checks before an inversion run found: the photos to invert and how to read them."""

    source: MapSource
    indices: list[int]
    skipped: list[tuple[str, str]]
    segmenter_input: Preprocessing
    generator_input: Preprocessing
    features: nn.Module | Literal["none"]
    batch_size: int


def _plan_inversions(
    photos: object,
    generator: nn.Module,
    start: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    segmenter: Segmenter,
    *,
    split: LayerSplit,
    features: Features,
    config: InversionConfig,
    batch_size: int,
    device: str | torch.device | None,
    resolution: int | None,
    skip_bad_images: bool,
    progress: bool,
) -> _Plan:
    source = open_source(photos)
    if not isinstance(source, MapSource):
        raise InputError("saved statistics hold no photos; pass a folder of photos")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    if segmenter.preprocessing.kind != "rgb":
        raise InputError("the omission report needs an RGB segmenter (such as the default 'upp')")
    seg_prep = segmenter.preprocessing
    size = resolution or _generator_resolution(generator, start) or seg_prep.size
    gen_prep = Preprocessing("rgb", size, seg_prep.resample)
    SplitGenerator(generator, split)  # layer names, before the photos are read
    network = feature_network(features, progress=progress)  # VGG loaded once, for every batch
    if network is None and config.imagenet_normalization:
        raise InputError("imagenet_normalization (--imagenet-normalization) normalizes the feature network's "
                         "input, but features='none' (--features none) has no feature network; drop one of them")
    features = network if network is not None else "none"
    indices, skipped = _readable_photos(source, seg_prep, skip_bad_images, progress)
    if not indices:
        raise InputError(f"no readable photos in {source.description or photos}: nothing to invert")
    first = indices[0]
    ident = source.identity(first)
    x = torch.from_numpy(np.ascontiguousarray(source.read(first, gen_prep)))[None].to(torch.float32) / 127.5 - 1
    try:
        check_layer_inversion(generator, x, start, split=split, features=features, config=config, device=device,
                              progress=progress)
    except InputError as error:
        raise InputError(f"inverting the first photo {ident}: {error}") from error
    photo = torch.from_numpy(np.ascontiguousarray(source.read(first, seg_prep)))[None]
    labels = _calling(f"the segmenter, on {ident}", lambda: segmenter.segment(photo.to(segmenter.device)))
    if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != (1, seg_prep.size, seg_prep.size):
        raise InputError(f"the segmenter must return label maps (N, {seg_prep.size}, {seg_prep.size}), "
                         f"got {getattr(labels, 'shape', type(labels).__name__)}")
    return _Plan(source, indices, skipped, seg_prep, gen_prep, features, batch_size)


def _readable_photos(
    source: MapSource, preprocessing: Preprocessing, skip_bad_images: bool, progress: bool
) -> tuple[list[int], list[tuple[str, str]]]:
    """Open every photo before any inversion (a broken last photo must not cost the run's hours)."""
    indices, skipped = [], []
    for index in tqdm(range(len(source)), desc="checking photos", unit="photo", file=sys.stderr,
                      disable=not progress, leave=False):
        try:
            source.read(index, preprocessing)
        except ImageReadError as error:
            if not skip_bad_images:
                raise
            skipped.append((source.identity(index), error.reason))
            continue
        indices.append(index)
    return indices, skipped


def _run_inversions(
    plan: _Plan,
    generator: nn.Module,
    start: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    segmenter: Segmenter,
    *,
    split: LayerSplit,
    config: InversionConfig,
    device: str | torch.device | None,
    progress: bool,
) -> Iterator[PhotoInversion]:
    source, seg_prep, gen_prep = plan.source, plan.segmenter_input, plan.generator_input
    bar = tqdm(total=len(plan.indices), desc="photos", unit="photo", file=sys.stderr, disable=not progress)
    try:
        for first in range(0, len(plan.indices), plan.batch_size):
            batch = plan.indices[first:first + plan.batch_size]
            ids = [source.identity(index) for index in batch]
            seen = [torch.from_numpy(source.read(index, seg_prep)) for index in batch]
            inputs = seen if gen_prep == seg_prep else [
                torch.from_numpy(np.ascontiguousarray(source.read(index, gen_prep))) for index in batch]
            real_uint8 = torch.stack(seen)
            x = torch.stack(inputs).to(torch.float32) / 127.5 - 1
            result = invert_layer(generator, x, start, split=split, features=plan.features, config=config,
                                  device=device, progress=progress)
            generated = images_to_uint8(result.reconstruction, (-1.0, 1.0), "the reconstruction")
            encoder_only = images_to_uint8(result.initial_reconstruction, (-1.0, 1.0),
                                           "the encoder's reconstruction")
            recon_uint8 = prepare_images(generated, seg_prep)
            seg_device = segmenter.device
            real_labels = segmenter.segment(real_uint8.to(seg_device)).cpu()
            recon_labels = segmenter.segment(recon_uint8.to(seg_device)).cpu()
            count = len(segmenter.class_names)
            real_pct = class_percentages(real_labels, count).numpy()
            recon_pct = class_percentages(recon_labels, count).numpy()
            photo_hwc, recon_hwc = _hwc(real_uint8), _hwc(recon_uint8)
            generated_hwc, encoder_hwc = _hwc(generated), _hwc(encoder_only)
            for k, ident in enumerate(ids):
                yield PhotoInversion(
                    id=ident,
                    photo=photo_hwc[k],
                    reconstruction=recon_hwc[k],
                    generated=generated_hwc[k],
                    encoder_only=encoder_hwc[k],
                    photo_labels=real_labels[k].numpy(),
                    reconstruction_labels=recon_labels[k].numpy(),
                    photo_percentages=real_pct[k],
                    reconstruction_percentages=recon_pct[k],
                    loss=(float(result.losses.total[0, k]), float(result.losses.total[-1, k])),
                )
            bar.update(len(batch))
    finally:
        bar.close()


# -- the output folder ------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def output_names(ids: Sequence[str]) -> list[str]:
    """A unique, file-system-safe name per photo: its file name without extension (see module doc)."""
    names: list[str] = []
    used: set[str] = set()
    for ident in ids:
        base = os.path.basename(str(ident).replace("\\", "/").rstrip("/")) or "photo"
        stem = os.path.splitext(base)[0] if "." in base[1:] else base
        stem = _UNSAFE.sub("_", stem).strip("._") or "photo"
        stem = stem[:80]
        name, counter = stem, 2
        while name.lower() in used:
            name = f"{stem}-{counter}"
            counter += 1
        used.add(name.lower())
        names.append(name)
    return names


@dataclass(frozen=True)
class ReportOptions:
    """How the output folder is drawn and ranked.

    ``min_loss``: percentage points from which a class counts as lost in a photo. ``legend_classes``:
    classes in each panel's legend (the top ones by pixel count over both segmentations).
    ``rank_by``: classes to rank the photos by (``ranked_by_lost_<class>.csv`` and a section of the page).
    ``contact_sheet_photos``: photos on the contact sheet (the first ones); ``columns``: its grid.
    """

    min_loss: float = DEFAULT_MIN_LOSS
    legend_classes: int = 8
    rank_by: tuple[str, ...] = ()
    contact_sheet_photos: int = 100
    columns: int = 4
    title: str = "What the generator could not reconstruct"

    def __post_init__(self) -> None:
        if self.legend_classes < 1 or self.contact_sheet_photos < 1 or self.columns < 1:
            raise InputError(
                "ReportOptions.legend_classes, contact_sheet_photos and columns must be at least 1, got "
                f"{self.legend_classes}, {self.contact_sheet_photos}, {self.columns}"
            )
        if not (math.isfinite(self.min_loss) and self.min_loss > 0):
            raise InputError(f"ReportOptions.min_loss must be > 0 percentage points, got {self.min_loss}")


@dataclass
class OmissionFolder:
    """What `invert_folder` wrote: the report, the photos' output names, and every file by role."""

    report: OmissionReport
    names: list[str]
    files: dict[str, Path]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _save_png(array: np.ndarray, path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    prepare_output_folder(out_dir, overwrite=overwrite)
    for sub in ("reconstructions", "encoder_only", "panels"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)


def _signed(value: float, digits: int = 2) -> str:
    """``+1.25`` / ``-0.50``, and ``0.00`` for a value that rounds to zero (never ``-0.00`` or ``+0.00``).

    >>> _signed(1.254), _signed(-0.5), _signed(-0.001), _signed(0.0)
    ('+1.25', '-0.50', '0.00', '0.00')
    """
    text = f"{value:+.{digits}f}"
    return text[1:] if float(text) == 0 else text


def html_page(
    report: OmissionReport,
    names: Sequence[str],
    *,
    rankings: Mapping[int, str] | None = None,
    title: str = "What the generator could not reconstruct",
    legend_classes: int = 8,
    table_rows: int = 30,
    differs_from_paper: Sequence[str] = (),
) -> str:
    """``index.html`` of an output folder: every link is relative to it (see `fsd.invert.omissions`).

    Written by the package's one HTML writer (`fsd._page`), with the set report's look.

    ``names``: each photo's output name (``panels/<name>.png`` ...); ``rankings``: class index ->
    ranking CSV file name, for the classes to rank the photos by; ``differs_from_paper``: the
    settings that are not the paper's (`inversion_settings`), stated at the top of the page.
    """
    if len(names) != report.n:
        raise InputError(f"got {plural(len(names), 'name')} for {plural(report.n, 'photo')}")
    rankings = dict(rankings or {})
    esc = html.escape
    anchor = {ident: f"photo-{name}" for ident, name in zip(report.ids, names)}
    parts = [
        f"<h1>{esc(title)}</h1>",
        f"<p>{plural(report.n, 'photo')}. Each photo was inverted through the generator; the photo and its "
        "reconstruction were segmented, and a class counts as <em>lost</em> in a photo when the "
        f"reconstruction holds at least {plural(report.min_loss, 'percentage point')} less of it. "
        "Losses are in percentage points of the image area.</p>",
        '<p>Tables: <a href="omissions.csv">omissions.csv</a> (per class), '
        '<a href="omissions_by_photo.csv">omissions_by_photo.csv</a> (per photo and class), '
        '<a href="omissions.json">omissions.json</a>. '
        '<a href="contact_sheet.png">Contact sheet</a>.</p>',
    ]
    if differs_from_paper:
        parts.append("<p><strong>Not the paper's settings:</strong> " + "; ".join(map(esc, differs_from_paper))
                     + ".</p>")
    parts.append("<h2>Classes lost most often</h2>")
    rows = [r for r in report.classes() if r.photos_lost > 0][:table_rows]
    if rows:
        headers = ["#", Cell("class", css="name"), "lost in", "mean loss", "max loss", "photo %",
                   "reconstruction %"]
        cells = []
        for rank, row in enumerate(rows, start=1):
            name = esc(row.name)
            if row.index in rankings:
                name = f'<a href="#ranking-{row.index}">{name}</a>'
            cells.append([
                Cell(str(rank), rank), Cell(name, row.name.lower(), css="name"),
                Cell(f"{row.photos_lost} / {report.n}", row.photos_lost),
                Cell.number(row.mean_loss_when_lost, "{:.2f}"), Cell.number(row.max_loss, "{:.2f}"),
                Cell.number(row.mean_real, "{:.2f}"), Cell.number(row.mean_reconstruction, "{:.2f}"),
            ])
        parts.append("<p>Click a column's header to sort by it.</p>")
        parts.append(table(headers, cells, table_id="lost-classes", sortable=True))
    else:
        parts.append(f"<p>No class was lost by {plural(report.min_loss, 'percentage point')} or more.</p>")

    for c, file_name in rankings.items():
        parts.append(f'<h2 id="ranking-{c}">Photos ranked by lost {esc(report.class_names[c])}</h2>')
        parts.append(f'<p><a href="{_link(file_name)}">{esc(file_name)}</a></p><ol>')
        for rank in report.photos_by_class(c):
            parts.append(
                f'<li><a href="#{_link(anchor[rank.photo])}">{esc(names[report.ids.index(rank.photo)])}</a>: '
                f"{rank.real:.2f}% in the photo, {rank.reconstruction:.2f}% in the reconstruction "
                f"({_signed(rank.difference)})</li>"
            )
        parts.append("</ol>")

    parts.append("<h2>Photos</h2>")
    for k, (ident, name) in enumerate(zip(report.ids, names)):
        lost = report.lost_in(k, top_k=legend_classes)
        lost_text = ", ".join(f"{esc(c.label)} ({c.difference:.1f})" for c in lost) or "nothing"
        panel_path = f"panels/{name}.png"
        parts.append(
            f'<div class="photo" id="{esc(anchor[ident], quote=True)}"><h3>{esc(name)}</h3>'
            f'<div class="id">{esc(ident)}</div>'
            f'<a href="{_link(panel_path)}"><img src="{_link(panel_path)}" alt="{esc(name, quote=True)}" '
            'loading="lazy"></a>'
            f"<p>Lost: {lost_text}</p>"
            f'<p><a href="{_link(f"reconstructions/{name}.png")}">reconstruction</a> &middot; '
            f'<a href="{_link(f"encoder_only/{name}.png")}">encoder only</a></p></div>'
        )
    return document(title, parts)


FEATURE_NETWORKS = {
    "vgg16": "torchvision's VGG16 with ImageNet weights (IMAGENET1K_V1), features[:21]: through relu4_2",
    "none": "none: the loss is pixels and offsets only",
}


def describe_network(network: object) -> dict[str, object]:
    """What identifies a network in the settings: its class and, for a module, its parameter count
    and the SHA-256 of its state dict (names, dtypes, shapes and values), so two runs can tell whether
    they used the same weights."""
    kind = type(network)
    record: dict[str, object] = {"class": f"{kind.__module__}.{kind.__qualname__}"}
    if isinstance(network, nn.Module):
        digest = hashlib.sha256()
        for name, tensor in network.state_dict().items():
            values = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{name} {values.dtype} {tuple(tensor.shape)}\n".encode())
            digest.update(values.view(torch.uint8).numpy())
        record["parameters"] = sum(p.numel() for p in network.parameters())
        record["sha256"] = digest.hexdigest()
        architecture = getattr(network, "architecture", None)
        if isinstance(architecture, dict):
            record["architecture"] = architecture
    return record


def inversion_settings(
    generator: nn.Module,
    start: object,
    features: Features,
    config: InversionConfig,
    split: LayerSplit,
    provenance: Mapping[str, str] | None = None,
) -> dict[str, object]:
    """The ``settings`` of ``omissions.json``: every number of the inversion, the networks
    (`describe_network`), and ``differs_from_paper``, each setting that is not the paper's, so a
    pixel-only or shortened run cannot pass for the paper's (``paper`` is true when none differs)."""
    if isinstance(features, str):
        feature_record: dict[str, object] = {"name": features, "network": FEATURE_NETWORKS.get(features, features)}
    else:
        feature_record = {"name": "module", **describe_network(features)}
    networks = {"generator": describe_network(generator), "encoder": describe_network(start),
                "features": feature_record}
    for role, given in (provenance or {}).items():
        if role not in networks:
            raise InputError(f"provenance names {role!r}; it may name the generator, encoder and features")
        networks[role] = {"given_as": given, **networks[role]}
    paper = InversionConfig()
    differs = [] if feature_record["name"] == "vgg16" else [f"features: {feature_record['name']} (the paper's: vgg16)"]
    for name in ("steps", "lr", "lr_milestones", "lr_decay", "pixel_weight", "feature_weight", "offset_weight",
                 "imagenet_normalization"):
        value, expected = getattr(config, name), getattr(paper, name)
        if value != expected:
            differs.append(f"{name}: {value} (the paper's: {expected})")
    if split != PROGGAN_SPLIT:
        differs.append(f"split after {split.split_after}, offsets at {', '.join(split.offset_layers)} (the paper's: "
                       f"after {PROGGAN_SPLIT.split_after}, offsets at {', '.join(PROGGAN_SPLIT.offset_layers)})")
    return {
        "paper": not differs,
        "differs_from_paper": differs,
        "steps": config.steps,
        "lr": config.lr,
        "lr_milestones": list(config.lr_milestones),
        "lr_decay": config.lr_decay,
        "loss_weights": {"pixel": config.pixel_weight, "feature": config.feature_weight,
                         "offset": config.offset_weight},
        "normalization": "imagenet" if config.imagenet_normalization else "none",
        "split": {"split_after": split.split_after, "offset_layers": list(split.offset_layers)},
        **networks,
    }



def invert_folder(
    photos: object,
    out_dir: str | os.PathLike[str],
    *,
    generator: nn.Module,
    start: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    segmenter: Segmenter,
    split: LayerSplit = PROGGAN_SPLIT,
    features: Features = "vgg16",
    config: InversionConfig = InversionConfig(),
    options: ReportOptions = ReportOptions(),
    batch_size: int = 8,
    device: str | torch.device | None = None,
    resolution: int | None = None,
    skip_bad_images: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    provenance: Mapping[str, str] | None = None,
) -> OmissionFolder:
    """Invert every photo, segment both images, and write the output folder (module docstring).

    Arguments as `invert_photos`; ``options`` shapes the report; ``overwrite`` allows writing
    into a folder that already holds files. ``provenance``: how the ``generator``, ``encoder`` and
    ``features`` were named (e.g. ``{"generator": "proggan:church"}``), kept with their settings in
    ``omissions.json`` (see `inversion_settings`). Returns the report and the paths written.
    """
    # Every check before the first inversion step, and the output folder made only once they all pass.
    out = check_output_folder(out_dir, overwrite=overwrite)
    class_names = tuple(segmenter.class_names)
    rank_classes = [find_class(class_names, c) for c in options.rank_by]
    skipped: list[tuple[str, str]] = []
    inversions = invert_photos(photos, generator, start, segmenter, split=split, features=features,
                               config=config, batch_size=batch_size, device=device, resolution=resolution,
                               skip_bad_images=skip_bad_images, skipped=skipped, progress=progress)
    if skipped:
        listing = "\n".join(f"  {ident}: {reason}" for ident, reason in skipped)
        warn(f"skipping {plural(len(skipped), 'unreadable photo')}:\n{listing}")
    _prepare_out_dir(out, overwrite)

    ids: list[str] = []
    real_rows: list[np.ndarray] = []
    recon_rows: list[np.ndarray] = []
    losses: list[tuple[float, float]] = []
    thumbnails: list[Image.Image] = []
    used_names: set[str] = set()
    names: list[str] = []
    for item in inversions:
        name = _unique(output_names([item.id])[0], used_names)
        names.append(name)
        ids.append(item.id)
        real_rows.append(item.photo_percentages)
        recon_rows.append(item.reconstruction_percentages)
        losses.append(item.loss)
        _save_png(item.generated, out / "reconstructions" / f"{name}.png")
        _save_png(item.encoder_only, out / "encoder_only" / f"{name}.png")
        drawn = panel(
            item.photo, item.reconstruction, item.photo_labels, item.reconstruction_labels, class_names,
            legend_classes=options.legend_classes, title=name,
        )
        _save_png(np.asarray(drawn), out / "panels" / f"{name}.png")
        if len(thumbnails) < options.contact_sheet_photos:
            thumbnails.append(thumbnail(drawn))

    count = len(class_names)
    report = OmissionReport(tuple(ids), class_names, np.stack(real_rows).reshape(-1, count),
                            np.stack(recon_rows).reshape(-1, count), options.min_loss)
    files: dict[str, Path] = {
        "class_csv": out / "omissions.csv",
        "photo_csv": out / "omissions_by_photo.csv",
        "json": out / "omissions.json",
        "contact_sheet": out / "contact_sheet.png",
        "html": out / "index.html",
    }
    report.write_class_csv(files["class_csv"])
    report.write_photo_csv(files["photo_csv"], names)
    rankings: dict[int, str] = {}
    for c, file_name in ranking_file_names(class_names, rank_classes).items():
        report.write_ranking_csv(out / file_name, c, names)
        files[f"ranked_{c}"] = out / file_name
        rankings[c] = file_name
    sheet = contact_sheet(thumbnails, names[: len(thumbnails)], columns=options.columns)
    _save_png(np.asarray(sheet), files["contact_sheet"])

    payload = report.to_dict(names)
    for entry, name, (initial, final) in zip(payload["photos"], names, losses):
        entry["files"] = {
            "reconstruction": f"reconstructions/{name}.png",
            "encoder_only": f"encoder_only/{name}.png",
            "panel": f"panels/{name}.png",
        }
        entry["inversion_loss"] = {"initial": initial, "final": final}
    payload["settings"] = inversion_settings(generator, start, features, config, split, provenance)
    payload["settings"].update(segmenter=getattr(segmenter, "name", type(segmenter).__name__),
                               segmenter_weights=getattr(segmenter, "weights_id", ""))
    payload["rankings"] = {class_names[c]: file_name for c, file_name in rankings.items()}
    payload["skipped"] = [{"id": ident, "reason": reason} for ident, reason in skipped]
    atomic_write_bytes(files["json"], json.dumps(payload, indent=1, allow_nan=False).encode("utf-8"))
    page = html_page(report, names, rankings=rankings, title=options.title,
                     legend_classes=options.legend_classes, differs_from_paper=payload["settings"]["differs_from_paper"])
    atomic_write_bytes(files["html"], page.encode("utf-8"))
    return OmissionFolder(report=report, names=names, files=files, skipped=skipped)


def _unique(name: str, used: set[str]) -> str:
    candidate, counter = name, 2
    while candidate.lower() in used:
        candidate = f"{name}-{counter}"
        counter += 1
    used.add(candidate.lower())
    return candidate

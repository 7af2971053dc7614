"""The paper's published baselines: statistics of 10,000 LSUN training images, by name.

``lsun_church`` (LSUN church_outdoor train) and ``lsun_bedroom`` (LSUN bedroom train) are accepted
wherever a source is: ``fsd.compute("lsun_church", "samples/")``, ``python -m fsd lsun_church samples/``,
``fsd.FSDMetric(real="lsun_bedroom")``. An existing file or folder of that name wins: with a folder
``./lsun_church`` in the working directory, ``lsun_church`` means that folder (``./lsun_church`` always
means a path; `load_baseline` always means the baseline).

The authors published per-image tallies (``(10000, 336)`` float64 ``.npy``: each image's share of pixels
per class of the UPP segmenter, as fractions; 10,000 images chosen with seed 1). `load_baseline` fetches
the tally with the same machinery and offline rules as the segmenter weights (`fsd.hub`: ``weights_dir``
/ ``$FSD_WEIGHTS_DIR`` holding ``seeing-baselines/<file>``, else the cache, downloading unless offline),
converts fractions to percentages (x 100, exact pixel counts out of 256 x 256), and caches the result as
our statistics format in ``cache_dir()/baselines/<name>-<sha256 prefix>.npz``, written atomically. The
class names come from the segmenter's ``labels.json`` (fetched the same way), and the metadata names the
UPP segmenter, its weights and the paper's preprocessing, so the baseline compares with statistics the
UPP segmenter makes; its ``source`` says where the numbers came from.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError, WeightsError
from .hub import Artifact, RemoteFile, cache_dir, fetch_file, sha256_of
from .segmenters.base import PAPER_PREPROCESSING
from .segmenters.upernet import HeadSizes
from .stats import Stats, StatsMeta

TALLY_MIRRORS = ("http://gandissect.csail.mit.edu/datasets/seeing",)
TALLY_PIXELS = 256 * 256  # the tallies are fractions of the 256 x 256 segmentation
TALLY_CLASSES = HeadSizes().object


def _verify_tally(path: Path, remote_file: RemoteFile) -> None:
    """A tally must be a 2-D float ``.npy`` with one column per object class."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{remote_file.name} is not a .npy array ({exc}); an error page or a truncated file?") from exc
    if not isinstance(array, np.ndarray) or array.ndim != 2 or array.shape[1] != TALLY_CLASSES:
        shape = getattr(array, "shape", None)
        raise WeightsError(f"{remote_file.name} has shape {shape}, expected (images, {TALLY_CLASSES})")
    if not np.issubdtype(array.dtype, np.floating):
        raise WeightsError(f"{remote_file.name} holds {array.dtype}, expected float fractions")


CHURCH_FILE = "datasets_lsun_church_outdoor_train_segtally_10000.npy"
BEDROOM_FILE = "datasets_lsun_bedroom_train_segtally_10000.npy"
_TALLY_BYTES = 10_000 * TALLY_CLASSES * 8  # float64 payload; the .npy header comes on top

LSUN_TALLIES = Artifact(
    name="seeing-baselines",
    files=(
        RemoteFile(CHURCH_FILE, min_bytes=_TALLY_BYTES),
        RemoteFile(BEDROOM_FILE, min_bytes=_TALLY_BYTES),
    ),
    mirrors=TALLY_MIRRORS,
    description="per-image segmentation tallies of 10,000 LSUN training images, published with the paper",
    meta={
        "paper": "Bau et al., Seeing What a GAN Cannot Generate, ICCV 2019",
        "content": "(10000, 336) float64 fractions of pixels per UPP object class; images chosen with seed 1",
    },
    verify=_verify_tally,
)


@dataclass(frozen=True)
class Baseline:
    """One published set of statistics: the file of its tally and what it was made from."""

    name: str
    file: str
    domain: str
    artifact: Artifact = LSUN_TALLIES
    num_images: int = 10_000
    seed: int = 1


# The registry of names accepted as sources. Add an entry to make another published tally a name.
BASELINES: dict[str, Baseline] = {
    "lsun_church": Baseline("lsun_church", CHURCH_FILE, "LSUN church_outdoor train"),
    "lsun_bedroom": Baseline("lsun_bedroom", BEDROOM_FILE, "LSUN bedroom train"),
}


def baseline_name(source: object) -> str | None:
    """The baseline ``source`` names, or ``None``. An existing path of that name is never a baseline."""
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if isinstance(text, str) and text in BASELINES and not os.path.exists(text):
            return text
    return None


def load_baseline(
    name: str | Baseline,
    *,
    weights_dir: str | os.PathLike | None = None,
    progress: bool = True,
    offline: bool | None = None,
) -> Stats:
    """The statistics of a published baseline (see the module docstring), downloading on first use."""
    if isinstance(name, Baseline):
        baseline = name
    elif name in BASELINES:
        baseline = BASELINES[name]
    else:
        raise InputError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    tally = fetch_file(baseline.artifact, baseline.file, weights_dir=weights_dir, progress=progress, offline=offline)
    digest = sha256_of(tally)
    cached = cache_dir() / "baselines" / f"{baseline.name}-{digest[:16]}.npz"
    if cached.is_file():
        try:
            return Stats.load(cached)
        except InputError:
            pass  # a damaged cache entry is rebuilt below
    class_names = _upp_class_names(weights_dir, progress, offline)
    url = " or ".join(baseline.artifact.urls(baseline.file))
    source = (f"{baseline.name}: the authors' published tally of {baseline.num_images} {baseline.domain} images "
              f"(seed {baseline.seed}), {url}, sha256 {digest}")
    try:
        fractions = np.load(tally, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read {tally}: {exc}; delete it to download it again") from exc
    stats = stats_from_tally(fractions, class_names, source, what=str(tally))
    try:
        stats.save(cached)
    except OSError as exc:
        warnings.warn(f"could not cache the statistics of {baseline.name} in {cached}: {exc}", stacklevel=2)
    return stats


def stats_from_tally(fractions: np.ndarray, class_names: tuple[str, ...] | list[str], source: str,
                     what: str = "tally") -> Stats:
    """Statistics of per-image class fractions ``(N, C)`` (rows summing to 1) of the UPP segmenter.

    Rows of zeros are dropped with a warning: the original code leaves them for images it never
    segmented, and they would corrupt the mean and covariance.
    """
    from . import __version__
    from .segmenters.upp import UPP_NAME, UPP_WEIGHTS_ID

    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.ndim != 2 or fractions.shape[1] != len(class_names):
        raise WeightsError(f"{what}: shape {fractions.shape}, expected (images, {len(class_names)})")
    empty = ~fractions.any(axis=1)
    if empty.any():
        warnings.warn(f"{what}: dropped {int(empty.sum())} all-zero rows (images the original code never "
                      "segmented)", stacklevel=3)
        fractions = fractions[~empty]
    meta = StatsMeta(
        class_names=tuple(class_names),
        segmenter=UPP_NAME,
        weights=UPP_WEIGHTS_ID,
        preprocessing=PAPER_PREPROCESSING.describe(),
        version=__version__,
        source=source,
    )
    stats = Stats(meta, pixels_per_image=TALLY_PIXELS)
    try:
        stats.update_percentages(fractions * 100.0)
    except ValueError as exc:
        raise WeightsError(f"{what} is not a tally of whole pixels out of 256 x 256: {exc}; delete it to "
                           "download it again") from exc
    if stats.n == 0:
        raise WeightsError(f"{what} holds no segmented images")
    return stats


def _upp_class_names(weights_dir, progress: bool, offline: bool | None) -> tuple[str, ...]:
    from .segmenters.upp import LABELS_FILE, read_labels
    from .segmenters.weights import UPP_WEIGHTS

    path = fetch_file(UPP_WEIGHTS, LABELS_FILE, weights_dir=weights_dir, progress=progress, offline=offline)
    return tuple(read_labels(path)["object"])

"""pytorch-fsd: the Fréchet Segmentation Distance of "Seeing What a GAN Cannot Generate".

>>> import fsd
>>> result = fsd.compute("real_images/", "generated_images/")  # doctest: +SKIP
>>> print(result.fsd, result.mean_term, result.covariance_term)  # doctest: +SKIP
"""

__version__ = "0.1.0"

from .api import (  # noqa: E402
    Comparison,
    FSDResult,
    PairComparison,
    PerImage,
    class_percentages_of,
    compare,
    compute,
    compute_stats,
    distance,
    load_segmenter,
)
from .baselines import BASELINES, load_baseline  # noqa: E402
from .errors import (  # noqa: E402
    DownloadError,
    FSDError,
    ImageReadError,
    IncompatibleStatsError,
    InputError,
    WeightsError,
)
from .frechet import FrechetDistance, frechet_distance  # noqa: E402
from .generators import GeneratorSource, save_samples  # noqa: E402
from .metric import FSDMetric  # noqa: E402
from .segmenters.base import Preprocessing, Segmenter, class_counts, class_percentages  # noqa: E402
from .segmenters.labelmap import LabelMapSegmenter  # noqa: E402
from .sources import (  # noqa: E402
    ArrayFileSource,
    ArraySource,
    FolderSource,
    LmdbSource,
    MapSource,
    SequenceSource,
    SourceFormatError,
    ZipSource,
    open_source,
)
from .rows import Rows  # noqa: E402
from .shards import merge_stats  # noqa: E402
from .stats import Stats, StatsMeta  # noqa: E402
from .uncertainty import BootstrapSettings  # noqa: E402
from . import weights  # noqa: E402 (fsd.weights.download / verify / where)


def plot_omissions(*args, **kwargs):
    """The paper's figure; see `fsd.report.plot_omissions` (needs the ``plot`` extra)."""
    from .report import plot_omissions as _plot

    return _plot(*args, **kwargs)


def write_html(*args, **kwargs):
    """The offline HTML report of a result, with example images; see `fsd.set_page.write_html`."""
    from .set_page import write_html as _write

    return _write(*args, **kwargs)


__all__ = [
    "__version__", "compute", "compute_stats", "distance", "compare", "class_percentages_of", "load_segmenter",
    "merge_stats",
    "FSDResult", "Comparison", "PairComparison", "BootstrapSettings", "PerImage", "Stats", "StatsMeta", "Rows",
    "FrechetDistance", "frechet_distance",
    "Segmenter", "Preprocessing", "class_counts", "class_percentages", "LabelMapSegmenter",
    "MapSource", "FolderSource", "ZipSource", "ArraySource", "ArrayFileSource", "LmdbSource",
    "SequenceSource", "SourceFormatError", "open_source", "plot_omissions", "write_html",
    "GeneratorSource", "save_samples", "FSDMetric", "load_baseline", "BASELINES",
    "FSDError", "InputError", "ImageReadError", "IncompatibleStatsError", "WeightsError", "DownloadError",
    "weights",
]

"""What a generator gets wrong, class by class: the per-class table and the paper's figure.

FSD's mean term is a sum over classes, ``|mu_r - mu_g|^2 = sum_c (mu_g[c] - mu_r[c])^2``, so each
class's share of it, next to its mean pixel percentage in both sets, says which objects a generator
omits or overproduces. `class_report` builds that table from two `Stats` (from folders or from saved
``.npz`` files alike); `plot_omissions` draws the paper's two-panel figure.

Conventions (shared by the table, the CSV, the JSON records and the figure):

- Values are mean percentages of pixels (0..100), as in `Stats.mu`.
- ``rel_change = (fake - real) / real``; it is ``None`` ("undefined") when the class never occurs in
  the real set. Such classes go after all others when sorting by relative change.
- ``mean_term_share = (fake - real)^2 / |mu_fake - mu_real|^2``, where the denominator is the whole
  mean term *including label 0*, so the shares of all object classes plus label 0 sum to 1
  (all shares are 0 when the means are equal).
- Label 0 ("no prediction") is kept out of ``rows`` and reported as ``no_prediction``.
- ``rows`` holds every object class, even one absent from both sets (so the CSV and JSON are
  complete); `ClassReport.top` and the printed table skip classes absent from both sets.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from ._io import atomic_write
from .errors import InputError
from .frechet import FrechetDistance, frechet_distance
from .stats import Stats

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SortKey = Literal["real", "relative", "absolute"]
SORT_KEYS: tuple[str, ...] = ("real", "relative", "absolute")
FIGURE_FORMATS: tuple[str, ...] = ("png", "pdf", "svg")
PLOT_INSTALL_HINT = "pip install 'pytorch-fsd[plot]'"

CSV_COLUMNS = ("rank", "index", "name", "real", "fake", "abs_change", "rel_change", "mean_term_share")

NAME_WIDTH = 32  # longer class names are truncated in the printed table (never in CSV or JSON)

# The paper's figure clips the relative-change axis to this range.
RELATIVE_AXIS = (-1.0, 1.1)


def short_label(name: str) -> str:
    """The first word of a class name, as the paper labels its figure ("car, auto" -> "car")."""
    words = name.replace(",", " ").split()
    return words[0] if words else name


@dataclass(frozen=True)
class ClassRow:
    """One class: mean pixel percentages in both sets and how they differ."""

    index: int
    name: str
    real: float
    fake: float
    abs_change: float
    rel_change: float | None
    mean_term_share: float

    @property
    def present(self) -> bool:
        """Whether the class occurs in at least one of the two sets."""
        return self.real > 0 or self.fake > 0

    @property
    def label(self) -> str:
        return short_label(self.name)

    def to_record(self) -> dict[str, int | str | float | None]:
        """A JSON-able dict (``rel_change`` is ``None`` where undefined)."""
        return {
            "index": self.index,
            "name": self.name,
            "real": self.real,
            "fake": self.fake,
            "abs_change": self.abs_change,
            "rel_change": self.rel_change,
            "mean_term_share": self.mean_term_share,
        }


def _sort_rows(rows: tuple[ClassRow, ...], key: str) -> tuple[ClassRow, ...]:
    if key == "real":
        return tuple(sorted(rows, key=lambda r: (-r.real, -r.fake, r.index)))
    if key == "absolute":
        return tuple(sorted(rows, key=lambda r: (-abs(r.abs_change), -r.real, r.index)))
    if key == "relative":
        # Defined relative changes by magnitude, then classes new in the fake set, then absent ones.
        def relative_key(r: ClassRow) -> tuple[int, float, float, int]:
            if r.rel_change is not None:
                return (0, -abs(r.rel_change), -r.real, r.index)
            return (1 if r.fake > 0 else 2, -r.fake, 0.0, r.index)

        return tuple(sorted(rows, key=relative_key))
    raise InputError(f"unknown sort key {key!r} for the class report; use one of {', '.join(SORT_KEYS)}")


def _fmt_signed_percent(value: float | None, fake: float) -> str:
    if value is None:
        return "new" if fake > 0 else "-"
    return f"{value * 100:+.1f}%"


@dataclass(frozen=True)
class ClassReport:
    """Per-class comparison of a real and a generated (fake) set.

    ``rows`` holds every object class in ``sort_key`` order; label 0 is ``no_prediction``.
    ``mean_term`` is ``|mu_fake - mu_real|^2`` (FSD's mean term), ``n_real``/``n_fake`` the image counts.
    """

    rows: tuple[ClassRow, ...]
    no_prediction: ClassRow
    sort_key: str
    n_real: int
    n_fake: int
    mean_term: float
    real_source: str = ""
    fake_source: str = ""

    def sorted_by(self, key: SortKey) -> ClassReport:
        """The same report with rows ordered by ``"real"`` (real-set frequency, descending),
        ``"relative"`` (|relative change|, descending; classes absent from the real set last) or
        ``"absolute"`` (|fake - real|, descending)."""
        return replace(self, rows=_sort_rows(self.rows, key), sort_key=key)

    def top(self, k: int = 30) -> tuple[ClassRow, ...]:
        """The first ``k`` rows in the current order, skipping classes absent from both sets."""
        if k < 1:
            raise InputError(f"the number of classes to show must be at least 1, got {k}")
        return tuple(r for r in self.rows if r.present)[:k]

    # -- the plain-language summary -------------------------------------------------------------
    def notable_changes(
        self, count: int = 3, min_percent: float = 0.1, min_relative: float = 0.25
    ) -> tuple[tuple[ClassRow, ...], tuple[ClassRow, ...]]:
        """The classes most under-generated and most over-generated: ``(too_few, too_many)``.

        A class is judged only if it covers at least ``min_percent`` percent of pixels on average in
        at least one set (rarer classes are too noisy to judge) and its relative change is at least
        ``min_relative`` in magnitude (25% by default). Classes absent from the real set count as an
        infinite increase. Each side lists up to ``count`` classes, largest relative change first.
        """
        judged = [
            r for r in self.rows
            if max(r.real, r.fake) >= min_percent
            and (r.rel_change is None or abs(r.rel_change) >= min_relative)
        ]
        too_few = sorted(
            (r for r in judged if r.rel_change is not None and r.rel_change < 0),
            key=lambda r: (r.rel_change, r.abs_change, r.index),
        )
        too_many = sorted(
            (r for r in judged if r.rel_change is None or r.rel_change > 0),
            key=lambda r: (-(math.inf if r.rel_change is None else r.rel_change), -r.abs_change, r.index),
        )
        return tuple(too_few[:count]), tuple(too_many[:count])

    def summary(self, count: int = 3, min_percent: float = 0.1, min_relative: float = 0.25) -> str:
        """One line, e.g. ``"too few: person, car, signboard; too many: earth, river"``.

        The rule is `notable_changes`' (classes covering >= 0.1% of pixels in one set, changed by
        >= 25%, top 3 each side); a side with no such class reads ``none``.
        """
        too_few, too_many = self.notable_changes(count, min_percent, min_relative)
        if not too_few and not too_many:
            return (f"no class covering at least {min_percent:g}% of pixels changed by "
                    f"{min_relative * 100:g}% or more")

        def names(rows: tuple[ClassRow, ...]) -> str:
            return ", ".join(r.label for r in rows) if rows else "none"

        return f"too few: {names(too_few)}; too many: {names(too_many)}"

    # -- output ---------------------------------------------------------------------------------
    def to_records(self) -> list[dict[str, int | str | float | None]]:
        """Every object class in the current order, as JSON-able dicts."""
        return [r.to_record() for r in self.rows]

    def to_dict(self) -> dict[str, object]:
        """The whole report as a JSON-able dict (for ``--json``)."""
        too_few, too_many = self.notable_changes()
        return {
            "sort": self.sort_key,
            "units": "mean percent of pixels",
            "n_real": self.n_real,
            "n_fake": self.n_fake,
            "mean_term": self.mean_term,
            "summary": self.summary(),
            "too_few": [r.name for r in too_few],
            "too_many": [r.name for r in too_many],
            "no_prediction": self.no_prediction.to_record(),
            "classes": self.to_records(),
        }

    def to_csv(self, path: str | os.PathLike) -> None:
        """Write every class to a CSV: label 0 first with an empty rank, then the object classes in
        the current order ranked from 1. Undefined relative changes are empty cells."""
        path = Path(path)

        def write(fh) -> None:
            text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
            writer = csv.writer(text)
            writer.writerow(CSV_COLUMNS)
            for rank, row in [("", self.no_prediction), *enumerate(self.rows, start=1)]:
                rel = "" if row.rel_change is None else repr(row.rel_change)
                writer.writerow([rank, row.index, row.name, repr(row.real), repr(row.fake),
                                 repr(row.abs_change), rel, repr(row.mean_term_share)])
            text.flush()
            text.detach()

        try:
            atomic_write(path, write)
        except OSError as exc:
            raise InputError(f"cannot write the class report CSV {path}: {exc}") from exc

    def format_table(self, k: int = 30) -> str:
        """The top ``k`` classes (see `top`) as an aligned text table, label 0 on a separate last line."""
        shown = self.top(k)
        headers = ("#", "class", "real %", "fake %", "change", "relative", "share")
        order = {"real": "real-set frequency", "relative": "relative change", "absolute": "absolute change"}
        present = sum(r.present for r in self.rows)

        def cells(rank: str, r: ClassRow) -> tuple[str, ...]:
            name = r.name if len(r.name) <= NAME_WIDTH else r.name[: NAME_WIDTH - 3] + "..."
            return (rank, name, f"{r.real:.4f}", f"{r.fake:.4f}", f"{r.abs_change:+.4f}",
                    _fmt_signed_percent(r.rel_change, r.fake), f"{r.mean_term_share * 100:.1f}%")

        body = [cells(str(i), r) for i, r in enumerate(shown, start=1)]
        extra = cells("", replace(self.no_prediction, name="(no prediction)"))
        widths = [max(len(row[c]) for row in (headers, *body, extra)) for c in range(len(headers))]

        def line(row: tuple[str, ...]) -> str:
            # Class names left-aligned, numbers right-aligned.
            return "  ".join(v.ljust(w) if c == 1 else v.rjust(w) for c, (v, w) in enumerate(zip(row, widths)))

        rule = "-" * len(line(headers))
        lines = [
            f"Top {len(shown)} of {present} classes by {order[self.sort_key]}, mean % of pixels "
            f"(real n={self.n_real}, fake n={self.n_fake})",
            line(headers),
            rule,
            *(line(row) for row in body),
            rule,
            line(extra),
            f"share: of the mean term |mu_fake - mu_real|^2 = {self.mean_term:.4g}; relative: (fake - real) / real",
        ]
        return "\n".join(lines)


def class_report(real: Stats, fake: Stats, sort: SortKey = "real") -> ClassReport:
    """Compare two sets of statistics class by class.

    Raises `IncompatibleStatsError` if the statistics were made with different segmenters, weights,
    preprocessing or class names, and `InputError` for an unknown ``sort``.

    >>> import numpy as np
    >>> from fsd.stats import Stats, StatsMeta
    >>> meta = StatsMeta(("-", "sky", "tree"), "demo", "none", "none", "0")
    >>> real, fake = Stats(meta, pixels_per_image=4), Stats(meta, pixels_per_image=4)
    >>> real.update(np.array([[0, 2, 2]])); fake.update(np.array([[0, 3, 1]]))
    >>> [(r.name, r.real, r.fake, r.rel_change) for r in class_report(real, fake).rows]
    [('sky', 50.0, 75.0, 0.5), ('tree', 50.0, 25.0, -0.5)]
    """
    if sort not in SORT_KEYS:
        raise InputError(f"unknown sort key {sort!r} for the class report; use one of {', '.join(SORT_KEYS)}")
    real.meta.check_comparable(fake.meta)
    mu_real, mu_fake = real.mu, fake.mu
    diff = mu_fake - mu_real
    squared = diff * diff
    mean_term = float(squared.sum())
    shares = squared / mean_term if mean_term > 0 else np.zeros_like(squared)

    def row(i: int) -> ClassRow:
        r, f = float(mu_real[i]), float(mu_fake[i])
        return ClassRow(
            index=i,
            name=real.class_names[i],
            real=r,
            fake=f,
            abs_change=float(diff[i]),
            rel_change=float(diff[i]) / r if r > 0 else None,
            mean_term_share=float(shares[i]),
        )

    rows = tuple(row(i) for i in range(1, real.num_classes))
    return ClassReport(
        rows=_sort_rows(rows, sort),
        no_prediction=row(0),
        sort_key=sort,
        n_real=real.n,
        n_fake=fake.n,
        mean_term=mean_term,
        real_source=real.meta.source,
        fake_source=fake.meta.source,
    )


# -- the paper's figure -----------------------------------------------------------------------------
def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(f"plotting needs matplotlib, which is not installed: {PLOT_INSTALL_HINT}") from exc
    return Figure


def plot_omissions(
    real: Stats,
    fake: Stats,
    *,
    top_k: int = 30,
    fsd: float | FrechetDistance | None = None,
    title: str | None = None,
    labels: tuple[str, str] = ("real", "generated"),
) -> Figure:
    """The paper's figure: which of the most common real-set classes the generator omits.

    Over the ``top_k`` classes most frequent in the real set (label 0 and classes absent from the
    real set skipped, as in the paper), two aligned panels: the mean area per class on a log axis
    (real as bars, generated as a red line), and the relative change ``(fake - real) / real`` on an
    axis clipped to [-1, 1.1], with the value printed above each bar that runs off the top. Bars
    hold the true values; only the axis is clipped. The title carries the FSD value; with
    ``fsd=None`` it is computed from the statistics (needs at least 2 images per set).

    Needs matplotlib (``pip install 'pytorch-fsd[plot]'``); raises ImportError with that hint without
    it. Uses no pyplot state: save with `save_figure` or ``fig.savefig``.
    """
    Figure = _figure_class()
    if top_k < 1:
        raise InputError(f"top_k must be at least 1, got {top_k}")
    report = class_report(real, fake, sort="real")
    shown = [r for r in report.rows if r.real > 0][:top_k]
    if not shown:
        raise InputError("no object class occurs in the real statistics, so there is nothing to plot")
    if fsd is None:
        fsd = frechet_distance(real.mu, real.sigma, fake.mu, fake.sigma)
    if title is None:
        if isinstance(fsd, FrechetDistance):
            title = (f"FSD {fsd.value:.2f} (mean term {fsd.mean_term:.2f}, "
                     f"covariance term {fsd.covariance_term:.2f})")
        else:
            title = f"FSD {float(fsd):.2f}"

    x = np.arange(len(shown))
    real_values = np.array([r.real for r in shown])
    fake_values = np.array([r.fake for r in shown])
    relative = np.array([r.rel_change for r in shown], dtype=np.float64)

    fig = Figure(figsize=(max(6.0, 0.3 * len(shown) + 2.0), 6.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 2)})

    top.bar(x, real_values, width=0.8, color="tab:blue", label=f"{labels[0]} (n={real.n})")
    top.plot(x, fake_values, color="tab:red", marker="o", markersize=3, linewidth=1.5,
             label=f"{labels[1]} (n={fake.n})")
    top.set_yscale("log", nonpositive="clip")
    positive = np.concatenate([real_values, fake_values[fake_values > 0]])
    # A generated value of 0 is drawn down to the bottom edge.
    top.set_ylim(10 ** math.floor(math.log10(positive.min())), 10 ** math.ceil(math.log10(positive.max())))
    top.set_ylabel("mean area (% of pixels)")
    handles, names = top.get_legend_handles_labels()
    top.legend(handles[::-1], names[::-1], loc="upper right", fontsize="small")  # real first
    top.set_title(title)
    top.grid(axis="y", which="major", alpha=0.3)

    colors = ["tab:red" if v < 0 else "tab:green" for v in relative]
    bottom.bar(x, relative, width=0.8, color=colors)
    bottom.axhline(0.0, color="black", linewidth=0.8)
    bottom.set_ylim(*RELATIVE_AXIS)
    bottom.set_ylabel(f"relative change\n({labels[1]} - {labels[0]}) / {labels[0]}", fontsize="small")
    bottom.grid(axis="y", alpha=0.3)
    for xi, value in zip(x, relative):
        if value > RELATIVE_AXIS[1]:
            bottom.text(xi, RELATIVE_AXIS[1], f"{value:.1f}", ha="center", va="bottom",
                        fontsize="x-small", clip_on=False)
    bottom.set_xticks(x, [r.label for r in shown], rotation=90)
    bottom.set_xlim(-0.6, len(shown) - 0.4)
    return fig


def figure_format(path: str | os.PathLike) -> str:
    """The format a figure path asks for (png, pdf or svg), or an `InputError` naming the path."""
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in FIGURE_FORMATS:
        raise InputError(
            f"cannot tell the figure format of {path}: use a file name ending in "
            f"{', '.join('.' + f for f in FIGURE_FORMATS)}"
        )
    return fmt


def check_figure_path(path: str | os.PathLike) -> None:
    """Fail early (before any segmentation runs) on a figure path that cannot be written."""
    figure_format(path)
    _figure_class()
    parent = Path(path).parent
    if not parent.is_dir():
        raise InputError(f"cannot write the figure {path}: folder {parent} does not exist")


def save_figure(fig: Figure, path: str | os.PathLike) -> None:
    """Save a figure as PNG, PDF or SVG, chosen by the extension of ``path``; written atomically."""
    path = Path(path)
    fmt = figure_format(path)
    try:
        atomic_write(path, lambda fh: fig.savefig(fh, format=fmt, dpi=150))
    except OSError as exc:
        raise InputError(f"cannot write the figure {path}: {exc}") from exc

"""What a generator gets wrong, class by class: the per-class table, its verdicts, and the paper's figure.

FSD's mean term is a sum over classes, ``|mu_r - mu_g|^2 = sum_c (mu_g[c] - mu_r[c])^2``, so each
class's share of it, next to its mean pixel percentage in both sets, says which objects a generator
omits or overproduces. `class_report` builds that table from two `Stats` (from folders or from saved
``.npz`` files alike), with the evidence for each class: the difference's confidence interval, Welch's
test and its Benjamini-Hochberg q-value (`fsd.uncertainty.class_tests`), and, from per-image rows, the
share of images holding the class at all (prevalence). `plot_omissions` draws the paper's figure.

Conventions (shared by the table, the CSV, the JSON records and the figure):

- Values are mean percentages of pixels (0..100), as in `Stats.mu`.
- ``rel_change = (fake - real) / real``; it is ``None`` ("undefined") when the class never occurs in
  the real set. Such classes go after all others when sorting by relative change.
- ``mean_term_share = (fake - real)^2 / |mu_fake - mu_real|^2``, where the denominator is the whole
  mean term *including label 0*, so the shares of all object classes plus label 0 sum to 1
  (all shares are 0 when the means are equal).
- A class's verdict is ``"too few"`` or ``"too many"`` only when its difference is significant (q below
  ``q_threshold``, 0.05 by default) *and* large enough to matter: it covers at least ``min_percent``
  (0.1%) of pixels in one set and changed by at least ``min_relative`` (25%). `VerdictRule` holds the rule.
- Label 0 ("no prediction") is kept out of ``rows`` and reported as ``no_prediction``; it gets a p-value
  but no q-value or verdict (it is not an object class).
- ``rows`` holds every object class, even one absent from both sets (so the CSV and JSON are
  complete); `ClassReport.top` and the printed table skip classes absent from both sets.
- Class names are always written in full; only the figure's axis shortens them, and only to a form
  that stays unique among the classes shown (`axis_labels`).
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
from ._text import plural
from .errors import InputError
from .frechet import FrechetDistance
from .stats import Stats
from .uncertainty import DEFAULT_LEVEL, DEFAULT_Q, class_tests, stats_distance

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SortKey = Literal["real", "relative", "absolute", "significance"]
SORT_KEYS: tuple[str, ...] = ("real", "relative", "absolute", "significance")
SORT_HELP = {
    "real": "mean area in the real set, largest first",
    "relative": "relative change |fake - real| / real, largest first (classes absent from the real set last)",
    "absolute": "absolute change |fake - real| in percentage points, largest first",
    "significance": "q-value, smallest (most significant) first",
}
FIGURE_FORMATS: tuple[str, ...] = ("png", "pdf", "svg")
PLOT_INSTALL_HINT = "pip install 'pytorch-fsd[plot]'"

CSV_COLUMNS = ("rank", "index", "name", "real", "fake", "abs_change", "rel_change", "mean_term_share",
               "difference_low", "difference_high", "p", "q", "prevalence_real", "prevalence_fake", "verdict")

NAME_WIDTH = 32  # longer class names are truncated in the printed table (never in CSV, JSON or HTML)

# The paper's figure clips the relative-change axis to this range.
RELATIVE_AXIS = (-1.0, 1.1)


def axis_labels(names: list[str] | tuple[str, ...]) -> list[str]:
    """Labels for the figure's axis: each name's first word, as the paper labels its figure, unless that
    word is shared by another name shown (wall / wall socket), in which case the full name.

    >>> axis_labels(["wall", "wall socket", "car, auto", "street light"])
    ['wall', 'wall socket', 'car', 'street']
    """
    def first_word(name: str) -> str:
        words = name.replace(",", " ").split()
        return words[0] if words else name

    short = [first_word(n) for n in names]
    counts: dict[str, int] = {}
    for label in short:
        counts[label] = counts.get(label, 0) + 1
    return [label if counts[label] == 1 else name for label, name in zip(short, names)]


@dataclass(frozen=True)
class VerdictRule:
    """When a class is called "too few" or "too many": significant and large enough to matter."""

    q_threshold: float = DEFAULT_Q
    min_percent: float = 0.1
    min_relative: float = 0.25

    def __post_init__(self) -> None:
        if not 0.0 < self.q_threshold < 1.0:
            raise InputError(f"the q-value threshold must lie strictly between 0 and 1, got {self.q_threshold!r}")
        if self.min_percent < 0 or self.min_relative < 0:
            raise InputError("min_percent and min_relative must be >= 0")

    def describe(self) -> str:
        return (f"a verdict needs q < {self.q_threshold:g} (Welch's test, Benjamini-Hochberg over the classes "
                f"occurring), at least {self.min_percent:g}% of pixels in one set and a change of at least "
                f"{self.min_relative * 100:g}%")


@dataclass(frozen=True)
class ClassRow:
    """One class: mean pixel percentages in both sets, how they differ, and the evidence for it."""

    index: int
    name: str
    real: float
    fake: float
    abs_change: float
    rel_change: float | None
    mean_term_share: float
    difference_ci: tuple[float, float] | None = None
    p: float | None = None
    q: float | None = None
    prevalence_real: float | None = None
    prevalence_fake: float | None = None
    verdict: str | None = None

    @property
    def present(self) -> bool:
        """Whether the class occurs in at least one of the two sets."""
        return self.real > 0 or self.fake > 0

    def to_record(self) -> dict[str, int | str | float | list[float] | None]:
        """A JSON-able dict (``rel_change``, ``q``, prevalences are ``None`` where undefined)."""
        return {
            "index": self.index,
            "name": self.name,
            "real": self.real,
            "fake": self.fake,
            "abs_change": self.abs_change,
            "rel_change": self.rel_change,
            "mean_term_share": self.mean_term_share,
            "difference_ci": None if self.difference_ci is None else list(self.difference_ci),
            "p": self.p,
            "q": self.q,
            "prevalence_real": self.prevalence_real,
            "prevalence_fake": self.prevalence_fake,
            "verdict": self.verdict,
        }

    def sentence(self) -> str:
        """The class in words: ``person: 4.1% of real pixels, 0.6% of generated; in 38% of real images and
        7% of generated ones``."""
        text = f"{self.name}: {_percent(self.real)} of real pixels, {_percent(self.fake)} of generated"
        if self.prevalence_real is not None and self.prevalence_fake is not None:
            text += (f"; in {_percent(self.prevalence_real * 100)} of real images and "
                     f"{_percent(self.prevalence_fake * 100)} of generated ones")
        return text


def _percent(value: float) -> str:
    if value == 0:
        return "0%"
    if value >= 10:
        return f"{value:.0f}%"
    if value >= 0.1:
        return f"{value:.1f}%"
    return f"{value:.2g}%"


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
    if key == "significance":
        return tuple(sorted(rows, key=lambda r: (math.inf if r.q is None else r.q, -abs(r.abs_change), r.index)))
    raise InputError(f"unknown sort key {key!r} for the class report; use one of {', '.join(SORT_KEYS)}")


def _fmt_signed_percent(value: float | None, fake: float) -> str:
    if value is None:
        return "new" if fake > 0 else "-"
    text = f"{value * 100:+.1f}%"
    return "+0.0%" if text == "-0.0%" else text


def _fmt_signed(value: float, digits: int = 4) -> str:
    text = f"{value:+.{digits}f}"
    return "+" + text[1:] if text.startswith("-") and float(text) == 0 else text


def _fmt_q(q: float | None) -> str:
    if q is None:
        return "-"
    return "<1e-4" if q < 1e-4 else f"{q:.4f}"


def _fmt_share(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


@dataclass(frozen=True)
class ClassReport:
    """Per-class comparison of a real and a generated (fake) set.

    ``rows`` holds every object class in ``sort_key`` order; label 0 is ``no_prediction``.
    ``mean_term`` is ``|mu_fake - mu_real|^2`` (FSD's mean term), ``n_real``/``n_fake`` the image counts,
    ``rule`` the `VerdictRule` behind the verdicts, ``level`` the confidence level of the intervals.
    """

    rows: tuple[ClassRow, ...]
    no_prediction: ClassRow
    sort_key: str
    n_real: int
    n_fake: int
    mean_term: float
    real_source: str = ""
    fake_source: str = ""
    rule: VerdictRule = VerdictRule()
    level: float = DEFAULT_LEVEL
    tested: int = 0
    labels: tuple[str, str] = ("real", "fake")

    def sorted_by(self, key: SortKey) -> ClassReport:
        """The same report with rows ordered by ``key`` (see `SORT_HELP`)."""
        return replace(self, rows=_sort_rows(self.rows, key), sort_key=key)

    def top(self, k: int = 30) -> tuple[ClassRow, ...]:
        """The first ``k`` rows in the current order, skipping classes absent from both sets."""
        if k < 1:
            raise InputError(f"the number of classes to show must be at least 1, got {k}")
        return tuple(r for r in self.rows if r.present)[:k]

    def row(self, name: str) -> ClassRow:
        """The row of the class named ``name`` (full name, any case)."""
        wanted = name.strip().lower()
        for r in (self.no_prediction, *self.rows):
            if r.name.lower() == wanted:
                return r
        raise InputError(f"no class named {name!r} in this report")

    # -- the verdicts -----------------------------------------------------------------------------
    def notable_changes(self) -> tuple[tuple[ClassRow, ...], tuple[ClassRow, ...]]:
        """The classes with a verdict: ``(too_few, too_many)``, each ordered by relative change, largest
        first (classes absent from the real set count as an infinite increase)."""
        too_few = sorted((r for r in self.rows if r.verdict == "too few"),
                         key=lambda r: (r.rel_change, r.abs_change, r.index))
        too_many = sorted((r for r in self.rows if r.verdict == "too many"),
                          key=lambda r: (-(math.inf if r.rel_change is None else r.rel_change), -r.abs_change, r.index))
        return tuple(too_few), tuple(too_many)

    def summary(self, count: int = 5) -> str:
        """One line, e.g. ``"too few: person, car, signboard; too many: earth, river"``, listing only
        classes with a verdict (up to ``count`` per side, then how many more), or saying plainly that no
        class differs significantly."""
        too_few, too_many = self.notable_changes()
        if not too_few and not too_many and self.tested == 0 and min(self.n_real, self.n_fake) < 2:
            return "no class can be tested: each set needs at least 2 images"
        if not too_few and not too_many:
            return (f"no class differs significantly between the sets (of {plural(self.tested, 'class', 'classes')} "
                    f"tested, none has q < {self.rule.q_threshold:g} and a change large enough to matter)")

        def names(rows: tuple[ClassRow, ...]) -> str:
            if not rows:
                return "none"
            shown = ", ".join(r.name for r in rows[:count])
            return shown + (f" (and {len(rows) - count} more)" if len(rows) > count else "")

        return f"too few: {names(too_few)}; too many: {names(too_many)}"

    # -- output ---------------------------------------------------------------------------------
    def to_records(self) -> list[dict]:
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
            "rule": {"q_threshold": self.rule.q_threshold, "min_percent": self.rule.min_percent,
                     "min_relative": self.rule.min_relative, "test": "welch", "correction": "benjamini-hochberg",
                     "classes_tested": self.tested, "ci_level": self.level, "text": self.rule.describe()},
            "too_few": [r.name for r in too_few],
            "too_many": [r.name for r in too_many],
            "no_prediction": self.no_prediction.to_record(),
            "classes": self.to_records(),
        }

    def csv_text(self) -> str:
        """Every class as CSV text (`CSV_COLUMNS`): label 0 first with an empty rank, then the object
        classes in the current order ranked from 1. Undefined values are empty cells."""

        def cell(value) -> str:
            return "" if value is None else (repr(value) if isinstance(value, float) else str(value))

        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(CSV_COLUMNS)
        for rank, row in [("", self.no_prediction), *enumerate(self.rows, start=1)]:
            low, high = row.difference_ci if row.difference_ci is not None else (None, None)
            writer.writerow([rank, row.index, row.name, cell(row.real), cell(row.fake), cell(row.abs_change),
                             cell(row.rel_change), cell(row.mean_term_share), cell(low), cell(high),
                             cell(row.p), cell(row.q), cell(row.prevalence_real), cell(row.prevalence_fake),
                             cell(row.verdict)])
        return text.getvalue()

    def to_csv(self, path: str | os.PathLike) -> None:
        """Write `csv_text` to ``path`` (atomically)."""
        path = Path(path)
        data = self.csv_text().encode("utf-8")
        try:
            atomic_write(path, lambda handle: handle.write(data))
        except OSError as exc:
            raise InputError(f"cannot write the class report CSV {path}: {exc}") from exc

    def format_table(self, k: int = 30) -> str:
        """The top ``k`` classes (see `top`) as an aligned text table, label 0 on a separate last line,
        then the rule behind the verdicts."""
        shown = self.top(k)
        ci = f"{self.level * 100:g}% CI"
        headers = ("#", "class", "real %", "fake %", "change", ci, "relative", "q", "in real", "in fake",
                   "share", "verdict")
        present = sum(r.present for r in self.rows)

        def cells(rank: str, r: ClassRow) -> tuple[str, ...]:
            name = r.name if len(r.name) <= NAME_WIDTH else r.name[: NAME_WIDTH - 3] + "..."
            interval = ("-" if r.difference_ci is None
                        else f"{_fmt_signed(r.difference_ci[0])} to {_fmt_signed(r.difference_ci[1])}")
            return (rank, name, f"{r.real:.4f}", f"{r.fake:.4f}", _fmt_signed(r.abs_change), interval,
                    _fmt_signed_percent(r.rel_change, r.fake), _fmt_q(r.q), _fmt_share(r.prevalence_real),
                    _fmt_share(r.prevalence_fake), f"{r.mean_term_share * 100:.1f}%", r.verdict or "")

        body = [cells(str(i), r) for i, r in enumerate(shown, start=1)]
        extra = cells("", replace(self.no_prediction, name="(no prediction)"))
        widths = [max(len(row[c]) for row in (headers, *body, extra)) for c in range(len(headers))]

        def line(row: tuple[str, ...]) -> str:
            # Class names and verdicts left-aligned, numbers right-aligned.
            return "  ".join(v.ljust(w) if c in (1, len(headers) - 1) else v.rjust(w)
                             for c, (v, w) in enumerate(zip(row, widths)))

        rule = "-" * len(line(headers))
        lines = [
            f"Top {len(shown)} of {plural(present, 'class', 'classes')} by {SORT_HELP[self.sort_key]}; mean % of "
            f"pixels (real n={self.n_real}, fake n={self.n_fake})",
            line(headers),
            rule,
            *(line(row) for row in body),
            rule,
            line(extra),
            f"change: fake - real, in percentage points, with its {ci}; relative: (fake - real) / real; in real / "
            "in fake: share of images holding the class",
            f"share: of the mean term |mu_fake - mu_real|^2 = {self.mean_term:.4g}; {self.rule.describe()}",
        ]
        return "\n".join(lines)


def class_report(real: Stats, fake: Stats, sort: SortKey = "real", *, rule: VerdictRule = VerdictRule(),
                 level: float = DEFAULT_LEVEL, labels: tuple[str, str] = ("real", "fake")) -> ClassReport:
    """Compare two sets of statistics class by class, with the evidence for every difference.

    Raises `IncompatibleStatsError` if the statistics were made with different segmenters, weights,
    preprocessing or class names, and `InputError` for an unknown ``sort`` or a set of fewer than 2 images.

    >>> import numpy as np
    >>> from fsd.stats import Stats, StatsMeta
    >>> meta = StatsMeta(("-", "sky", "tree"), "demo", "none", "none", "0")
    >>> real, fake = Stats(meta, pixels_per_image=4), Stats(meta, pixels_per_image=4)
    >>> real.update(np.array([[0, 2, 2], [0, 1, 3]])); fake.update(np.array([[0, 3, 1], [0, 4, 0]]))
    >>> [(r.name, r.real, r.fake, r.rel_change) for r in class_report(real, fake).rows]
    [('tree', 62.5, 12.5, -0.8), ('sky', 37.5, 87.5, 1.3333333333333333)]
    """
    if sort not in SORT_KEYS:
        raise InputError(f"unknown sort key {sort!r} for the class report; use one of {', '.join(SORT_KEYS)}")
    real.meta.check_comparable(fake.meta)
    mu_real, mu_fake = real.mu, fake.mu
    diff = mu_fake - mu_real
    squared = diff * diff
    mean_term = float(squared.sum())
    shares = squared / mean_term if mean_term > 0 else np.zeros_like(squared)
    # With fewer than 2 images in a set nothing can be tested: the table has no evidence and no verdicts.
    tests = class_tests(real, fake, level) if min(real.n, fake.n) >= 2 else None

    def row(i: int) -> ClassRow:
        r, f = float(mu_real[i]), float(mu_fake[i])
        rel = float(diff[i]) / r if r > 0 else None
        if tests is None:
            return ClassRow(i, real.class_names[i], r, f, float(diff[i]), rel, float(shares[i]))
        q = None if math.isnan(tests.q[i]) else float(tests.q[i])
        verdict = None
        if (q is not None and q < rule.q_threshold and max(r, f) >= rule.min_percent
                and (rel is None or abs(rel) >= rule.min_relative)):
            verdict = "too few" if diff[i] < 0 else "too many"
        return ClassRow(
            index=i,
            name=real.class_names[i],
            real=r,
            fake=f,
            abs_change=float(diff[i]),
            rel_change=rel,
            mean_term_share=float(shares[i]),
            difference_ci=(float(tests.low[i]), float(tests.high[i])),
            p=float(tests.p[i]),
            q=q,
            prevalence_real=None if tests.prevalence_real is None else float(tests.prevalence_real[i]),
            prevalence_fake=None if tests.prevalence_fake is None else float(tests.prevalence_fake[i]),
            verdict=verdict,
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
        rule=rule,
        level=level,
        tested=0 if tests is None else int(tests.tested.sum()),
        labels=labels,
    )


def mean_interval(stats: Stats, level: float = DEFAULT_LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a t interval for the set's mean percentage: ``(low, high)``, clipped to [0, 100]."""
    from scipy import stats as scipy_stats

    half = scipy_stats.t.ppf(0.5 + level / 2, stats.n - 1) * np.sqrt(np.diag(stats.sigma).clip(min=0) / stats.n)
    mu = stats.mu
    return (mu - half).clip(0, 100), (mu + half).clip(0, 100)


# -- the paper's figure -----------------------------------------------------------------------------
def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(f"plotting needs matplotlib, which is not installed: {PLOT_INSTALL_HINT}") from exc
    return Figure


def plot_omissions(
    real,
    fake: Stats | None = None,
    *,
    top_k: int = 30,
    fsd: float | FrechetDistance | None = None,
    title: str | None = None,
    labels: tuple[str, str] = ("real", "generated"),
    rule: VerdictRule = VerdictRule(),
    level: float = DEFAULT_LEVEL,
) -> Figure:
    """The paper's figure: which of the most common real-set classes the generator omits.

    ``plot_omissions(result)`` with an `fsd.FSDResult`, or ``plot_omissions(real_stats, fake_stats)``.
    Over the ``top_k`` classes most frequent in the real set (label 0 and classes absent from the
    real set skipped, as in the paper), two aligned panels: the mean area per class on a log axis
    (real as bars, generated as a red line, each with its ``level`` confidence interval as error bars),
    and the relative change ``(fake - real) / real`` on an axis clipped to [-1, 1.1], with the value
    printed above each bar that runs off the top. Classes with a verdict (see `VerdictRule`) have
    their bar outlined in black and a star under it. The title carries the FSD (with its interval when
    the result has one).

    Needs matplotlib (``pip install 'pytorch-fsd[plot]'``); raises ImportError with that hint without
    it. Uses no pyplot state: save with `save_figure` or ``fig.savefig``.
    """
    Figure = _figure_class()
    result = None
    if fake is None:
        if not (hasattr(real, "real") and hasattr(real, "fake") and hasattr(real, "fsd")):
            raise InputError("plot_omissions takes an FSDResult, or the real and the generated Stats")
        result, real, fake = real, real.real, real.fake
    if top_k < 1:
        raise InputError(f"top_k must be at least 1, got {top_k}")
    report = class_report(real, fake, sort="real", rule=rule, level=level)
    shown = [r for r in report.rows if r.real > 0][:top_k]
    if not shown:
        raise InputError("no object class occurs in the real statistics, so there is nothing to plot")
    if title is None:
        if result is not None:
            ci = ""
            if result.fsd_ci is not None:
                ci = f", {result.ci_level * 100:g}% CI {result.fsd_ci[0]:.2f} to {result.fsd_ci[1]:.2f}"
            title = (f"FSD {result.fsd:.2f}{ci} (mean term {result.mean_term:.2f}, "
                     f"covariance term {result.covariance_term:.2f})")
        else:
            if fsd is None:
                fsd = stats_distance(real, fake)
            if isinstance(fsd, FrechetDistance):
                title = (f"FSD {fsd.value:.2f} (mean term {fsd.mean_term:.2f}, "
                         f"covariance term {fsd.covariance_term:.2f})")
            else:
                title = f"FSD {float(fsd):.2f}"

    x = np.arange(len(shown))
    index = np.array([r.index for r in shown])
    real_values = np.array([r.real for r in shown])
    fake_values = np.array([r.fake for r in shown])
    relative = np.array([r.rel_change for r in shown], dtype=np.float64)
    significant = np.array([r.verdict is not None for r in shown])
    real_low, real_high = (v[index] for v in mean_interval(real, level))
    fake_low, fake_high = (v[index] for v in mean_interval(fake, level))

    width = max(6.0, 0.3 * len(shown) + 2.0)
    if len(title) > 10 * width:  # about 10 characters of the title's font per inch: break before the terms
        title = title.replace(" (mean term", "\n(mean term", 1)
    fig = Figure(figsize=(width, 6.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 2)})

    top.bar(x, real_values, width=0.8, color="tab:blue", label=f"{labels[0]} (n={real.n})")
    top.errorbar(x, real_values, yerr=[real_values - real_low, real_high - real_values], fmt="none",
                 ecolor="navy", elinewidth=0.8, capsize=2)
    top.plot(x, fake_values, color="tab:red", marker="o", markersize=3, linewidth=1.5,
             label=f"{labels[1]} (n={fake.n})")
    top.errorbar(x, fake_values, yerr=[fake_values - fake_low, fake_high - fake_values], fmt="none",
                 ecolor="tab:red", elinewidth=0.8, capsize=2)
    top.set_yscale("log", nonpositive="clip")
    positive = np.concatenate([real_values, fake_values[fake_values > 0], real_high, fake_high[fake_high > 0]])
    # A generated value of 0 is drawn down to the bottom edge.
    top.set_ylim(10 ** math.floor(math.log10(min(real_values.min(), positive.min()))),
                 10 ** math.ceil(math.log10(positive.max())))
    top.set_ylabel(f"mean area (% of pixels),\n{level * 100:g}% CI", fontsize="small")
    handles, names = top.get_legend_handles_labels()
    top.legend(handles[::-1], names[::-1], loc="upper right", fontsize="small")  # real first
    top.set_title(title, fontsize="medium")
    top.grid(axis="y", which="major", alpha=0.3)

    colors = ["tab:red" if v < 0 else "tab:green" for v in relative]
    bottom.bar(x, relative, width=0.8, color=colors, edgecolor=["black" if s else "none" for s in significant],
               linewidth=1.2)
    bottom.axhline(0.0, color="black", linewidth=0.8)
    bottom.set_ylim(*RELATIVE_AXIS)
    bottom.set_ylabel(f"relative change\n({labels[1]} - {labels[0]}) / {labels[0]}", fontsize="small")
    bottom.grid(axis="y", alpha=0.3)
    for xi, value, mark in zip(x, relative, significant):
        if value > RELATIVE_AXIS[1]:
            bottom.text(xi, RELATIVE_AXIS[1], f"{value:.1f}", ha="center", va="bottom",
                        fontsize="x-small", clip_on=False)
        if mark:
            bottom.text(xi, RELATIVE_AXIS[0], "*", ha="center", va="bottom", fontsize="medium", fontweight="bold")
    bottom.set_xticks(x, axis_labels([r.name for r in shown]), rotation=90)
    bottom.set_xlim(-0.6, len(shown) - 0.4)
    bottom.set_xlabel(f"* and outlined: significant (q < {rule.q_threshold:g}) and large enough for a verdict",
                      fontsize="x-small")
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

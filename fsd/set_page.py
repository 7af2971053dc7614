"""The set report: one offline HTML page that shows what a generator draws too little or too much of.

``python -m fsd REAL FAKE --html DIR``, ``fsd compare REAL A B --html DIR``,
``fsd report REAL.npz FAKE.npz --html DIR``, or `write_html` (``fsd.write_html(result, "page/")``).

The folder holds ``index.html``, ``figure.svg`` (the paper's two-panel figure, with intervals and
significance marks; needs matplotlib), ``classes.csv``, and under ``examples/`` the example images and
one full-size view per image. ``index.html`` shows:

- the score with its interval and terms, n per side, segmenter and weights, package version, and the
  command that made it;
- the figure, and the full per-class table (sortable by any column, filterable by name);
- for each of the top ``classes`` significant omissions ("too few") and excesses ("too many"): the class
  in one sentence, then the ``examples`` real and generated images with the most of it, each with the
  class tinted and outlined on the image the segmenter saw, linking to a view of the image next to its
  segmentation with a legend. Each class has an anchor (``index.html#person``);
- with a comparison: the models' scores, the pairwise table, and a section per model.

Only the chosen images are read and segmented again (at most ``2 * classes * examples`` per set), from the
sources given or, by default, from the sources the statistics recorded; a generator's sample k is made
again from the run's seed and k. The choice is deterministic (`fsd.examples.top_images`). Sources that
cannot be read give a page without those examples, saying why, and a warning naming them. Examples whose
class counts differ from the statistics (another machine, thread count or changed files) are marked.
"""

from __future__ import annotations

import io
import re
import shlex
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from . import __version__
from ._io import atomic_write_bytes, check_output_folder
from ._page import DEFAULT_CLASSES, DEFAULT_EXAMPLES, Cell, document, esc, link, table
from ._text import plural
from .api import Comparison, FSDResult
from .errors import FSDError, InputError
from .generators import GeneratorSource
from .examples import Example, overlay, read_examples, reopen, top_images
from .palette import colorize, hex_color, palette
from .report import ClassReport, ClassRow, VerdictRule, class_report
from .sources import MapSource, open_source
from .stats import Stats, StatsMeta

__all__ = ["write_html", "check_html_folder", "DEFAULT_CLASSES", "DEFAULT_EXAMPLES", "segmenter_for"]



def check_html_folder(folder, overwrite: bool = False, option: str = "--html") -> Path:
    """Refuse a folder that holds files unless ``overwrite`` (before any work is done)."""
    return check_output_folder(folder, overwrite=overwrite, option=option)


def segmenter_for(meta: StatsMeta, *, device=None, weights_dir=None, progress: bool = False):
    """The segmenter that made statistics with ``meta``, built again (``labelmap`` or UPP in the recorded
    precision), checked against the recorded weights and preprocessing."""
    from .api import load_segmenter
    from .segmenters.labelmap import LabelMapSegmenter

    if meta.segmenter == LabelMapSegmenter.name:
        segmenter = LabelMapSegmenter(len(meta.class_names), meta.class_names)
    else:
        from .segmenters.upp import PRECISION_SUFFIXES

        precision = next((p for p, s in PRECISION_SUFFIXES.items() if s and meta.weights.endswith(s)), "float32")
        segmenter = load_segmenter("upp", device=device, weights_dir=weights_dir, progress=progress,
                                   precision=precision)
    _check_segmenter(segmenter, meta)
    return segmenter


def _check_segmenter(segmenter, meta: StatsMeta) -> None:
    for what, mine, theirs in (("segmenter", segmenter.name, meta.segmenter),
                               ("weights", segmenter.weights_id, meta.weights),
                               ("preprocessing", segmenter.preprocessing.describe(), meta.preprocessing)):
        if mine != theirs:
            raise InputError(f"the example images need the segmenter that made the statistics: they were made with "
                             f"{what} {theirs!r}, the segmenter given has {mine!r}")


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "class"


def _anchors(names: Sequence[str]) -> list[str]:
    """A unique anchor per class name (``person``, ``wall-socket``; a number is added on a clash)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        slug = _slug(name)
        seen[slug] = seen.get(slug, 0) + 1
        out.append(slug if seen[slug] == 1 else f"{slug}-{seen[slug]}")
    return out


def _default_command() -> str:
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if program in ("__main__.py", "-c", "-m") or program.startswith("python"):
        return "fsd.write_html (Python)"
    return shlex.join(["fsd" if program == "fsd" else program, *sys.argv[1:]])


# -- one set's images ------------------------------------------------------------------------------------
@dataclass
class _Side:
    """One set of images (the real set, or one model): its statistics, where its images are, and the
    examples read from it."""

    key: str  # file-name prefix: "real", "fake", "model-1", ...
    label: str
    stats: Stats
    source: object = None
    examples: dict[int, Example] = field(default_factory=dict)
    note: str = ""  # why this side has no (or fewer) examples

    def read(self, positions: set[int], segmenter, seed: int, options: dict) -> list[str]:
        """Read the images at ``positions``; return warning lines."""
        rows = self.stats.rows
        wanted = sorted(p for p in positions if p not in self.examples)
        if not wanted:
            return []
        source = None if isinstance(self.source, Stats) else self.source  # saved statistics: their own source
        try:
            if source is None:
                source = reopen(self.stats.meta.source, **options)
            elif not isinstance(source, (MapSource, GeneratorSource)):
                source = open_source(source, **options)  # a path, a Dataset, a list of images, ...
        except FSDError as exc:
            self.note = f"no example images of the {self.label} set: {exc}"
            return [self.note]
        if isinstance(source, Stats):
            self.note = (f"no example images of the {self.label} set: its recorded source holds saved statistics, "
                         "not images")
            return [self.note]
        self.source = source
        try:
            examples, problems = read_examples(source, rows, wanted, segmenter, seed=seed,
                                               recorded=self.stats.meta.source)
        except FSDError as exc:
            self.note = f"no example images of the {self.label} set: {exc}"
            return [self.note]
        self.examples.update(examples)
        if problems:
            self.note = (f"{plural(len(problems), 'example image')} of the {self.label} set could not be read: "
                         + "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else ""))
            return [self.note]
        return []


class _Writer:
    """Writes the files of one page into ``folder``; every file atomically, ``index.html`` last."""

    def __init__(self, folder: Path, class_names: Sequence[str]):
        self.folder = folder
        self.class_names = tuple(class_names)
        self.colors = palette(len(class_names))
        self.written: set[str] = set()

    def file(self, relative: str, data: bytes) -> str:
        path = self.folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
        self.written.add(relative)
        return relative

    def picture(self, relative: str, pixels: np.ndarray, photo: bool) -> str:
        if relative in self.written:
            return relative
        buffer = io.BytesIO()
        if photo:
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=92)
        else:
            Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
        return self.file(relative, buffer.getvalue())

    def example(self, side: _Side, row: int, cls: int, anchor: str, photo: bool) -> str | None:
        """The thumbnail of one example with class ``cls`` drawn on it, and its view page; the figure's
        HTML, or None when the image is not there."""
        ex = side.examples.get(row)
        if ex is None:
            return None
        ext = "jpg" if photo else "png"
        stem = f"examples/{side.key}-{row:06d}"
        thumb = self.picture(f"{stem}-{cls}.{ext}",
                             overlay(ex.image, ex.labels == cls, self.colors[cls]), photo)
        view = self.view(side, ex, stem, ext, photo)
        pixels = int(np.count_nonzero(ex.labels == cls))
        share = 100.0 * pixels / ex.labels.size
        mark = "" if ex.matches else ' <span class="note" title="segmented again, the class counts differ from the statistics">differs</span>'
        return (f'<figure class="example"><a href="{link(view)}"><img src="{link(thumb)}" '
                f'alt="{esc(ex.identity)}: {esc(self.class_names[cls])} outlined" width="150" height="150"></a>'
                f'<figcaption>{share:.1f}% {esc(self.class_names[cls])}{mark}<br>'
                f'<span class="id">{esc(ex.identity)}</span></figcaption></figure>')

    def view(self, side: _Side, ex: Example, stem: str, ext: str, photo: bool) -> str:
        page = f"{stem}.html"
        if page in self.written:
            return page
        image = self.picture(f"{stem}.{ext}", ex.image, photo)
        segmentation = self.picture(f"{stem}-segmentation.png", colorize(ex.labels, len(self.class_names)), False)
        counts = np.bincount(ex.labels.ravel(), minlength=len(self.class_names))
        order = sorted(np.flatnonzero(counts), key=lambda c: (-counts[c], c))
        legend = table(["", Cell("class", css="name"), "% of pixels"],
                       [[Cell(f'<span class="swatch" style="background:{hex_color(self.colors[c])}"></span>'),
                         Cell(esc(self.class_names[c]), css="name"),
                         Cell.number(100.0 * counts[c] / ex.labels.size, "{:.2f}")] for c in order])
        note = ("" if ex.matches else '<p class="note">Segmented again here, this image\'s class counts differ '
                "from those in the statistics (another machine, thread count or precision, or a changed file).</p>")
        body = [f"<h1>{esc(ex.identity)}</h1>",
                f'<p><a href="../index.html">back to the report</a> &middot; {esc(side.label)} set</p>', note,
                f'<div class="side"><h3>image, as the segmenter saw it</h3><img src="{link(Path(image).name)}" '
                f'alt="the image"></div>',
                f'<div class="side"><h3>segmentation</h3><img src="{link(Path(segmentation).name)}" '
                f'alt="its segmentation"></div>',
                "<h3>legend</h3>", legend]
        self.file(page, document(ex.identity, body, script=False).encode("utf-8"))
        return page


# -- the page --------------------------------------------------------------------------------------------
def _score_line(result: FSDResult) -> str:
    return esc(result.summary()).replace("\n", "<br>")


def _class_table(report: ClassReport, anchors: dict[int, str], table_id: str) -> str:
    level = f"{report.level * 100:g}%"
    headers = [Cell("class", css="name"), f"{report.labels[0]} %", f"{report.labels[1]} %", "change",
               "relative change", f"{level} CI of change", "p", "q", f"prevalence {report.labels[0]}",
               f"prevalence {report.labels[1]}", "verdict"]
    rows = []
    for r in report.rows:
        if not r.present:
            continue
        name = esc(r.name)
        if r.index in anchors:
            name = f'<a href="#{link(anchors[r.index])}">{name}</a>'
        ci = "" if r.difference_ci is None else f"{r.difference_ci[0]:+.3f} to {r.difference_ci[1]:+.3f}"
        css = {"too few": "verdict-few", "too many": "verdict-many"}.get(r.verdict or "", "")
        rows.append([
            Cell(name, r.name.lower(), "name"), Cell.number(r.real, "{:.3f}"), Cell.number(r.fake, "{:.3f}"),
            Cell.number(r.abs_change, "{:+.3f}"),
            Cell.number(r.rel_change, "{:+.0%}") if r.rel_change is not None else Cell("new", "inf"),
            Cell(esc(ci), "" if r.difference_ci is None else repr(r.difference_ci[0])),
            Cell.number(r.p, "{:.2g}"), Cell.number(r.q, "{:.2g}"),
            Cell.number(r.prevalence_real, "{:.0%}"), Cell.number(r.prevalence_fake, "{:.0%}"),
            Cell(esc(r.verdict or ""), r.verdict or "", css),
        ])
    return table(headers, rows, table_id=table_id, sortable=True, filterable=True)


def _chosen(report: ClassReport, k: int) -> tuple[tuple[ClassRow, ...], tuple[ClassRow, ...]]:
    too_few, too_many = report.notable_changes()
    return too_few[:k], too_many[:k]


def _class_sections(report: ClassReport, base: _Side, other: _Side, writer: _Writer, anchors: dict[int, str],
                    k: int, chosen_images: dict[tuple[str, int], list[int]], photo: bool) -> list[str]:
    too_few, too_many = _chosen(report, k)
    parts = []
    for title, chosen, empty in (
        (f"Too few in the {other.label} set", too_few, "No class is significantly rarer in the generated set."),
        (f"Too many in the {other.label} set", too_many, "No class is significantly more common in the generated set."),
    ):
        parts.append(f"<h2>{esc(title)}</h2>")
        if not chosen:
            parts.append(f"<p>{esc(empty)}</p>")
        for r in chosen:
            parts.append(f'<section id="{esc(anchors[r.index])}"><h3>{esc(r.name)}</h3>')
            parts.append(f"<p>{esc(r.sentence())}. q = {r.q:.2g}.</p>" if r.q is not None else f"<p>{esc(r.sentence())}.</p>")
            for side in (base, other):
                positions = chosen_images[side.key, r.index]
                figures = [writer.example(side, p, r.index, anchors[r.index], photo) for p in positions]
                figures = [f for f in figures if f]
                what = f"{side.label.capitalize()} images with the most {r.name}"
                if figures:
                    parts.append(f"<h4>{esc(what)}</h4><div class=\"examples\">" + "".join(figures) + "</div>")
                elif not positions:
                    parts.append(f"<h4>{esc(what)}</h4><p class=\"muted\">none of the {side.label} images holds it.</p>")
                else:
                    parts.append(f"<h4>{esc(what)}</h4><p class=\"muted\">not available: {esc(side.note)}</p>")
            parts.append("</section>")
    return parts


def _choose_images(report: ClassReport, k: int, m: int, sides: tuple[_Side, _Side],
                   chosen: dict[tuple[str, int], list[int]]) -> None:
    """The example images (row positions) of each class shown, per set: ``chosen[side key, class]``."""
    too_few, too_many = _chosen(report, k)
    for r in (*too_few, *too_many):
        for side in sides:
            if (side.key, r.index) not in chosen:
                chosen[side.key, r.index] = top_images(side.stats.rows, r.index, m)


def _figure(result: FSDResult, writer: _Writer, name: str, rule: VerdictRule, top_k: int = 30) -> str:
    try:
        from .report import plot_omissions, save_figure
        import matplotlib.pyplot as plt
    except ImportError:
        return ('<p class="note">The figure needs matplotlib: <code>pip install "pytorch-fsd[plot]"</code>.</p>')
    fig = plot_omissions(result, top_k=top_k, rule=rule, level=result.ci_level or 0.95)
    try:
        save_figure(fig, writer.folder / name)
    finally:
        plt.close(fig)
    writer.written.add(name)
    return (f'<p><a href="{link(name)}"><img class="figure" src="{link(name)}" alt="mean area of the most common '
            'real classes in both sets, and their relative change"></a></p>')


def _settings(result: FSDResult, command: str, models: Sequence[tuple[str, FSDResult]] | None = None) -> str:
    """The settings table; ``models``: (name, result) of each model of a comparison, one row each."""
    meta = result.real.meta

    def described(stats) -> str:
        return f"{stats.meta.source or 'not recorded'} ({plural(stats.n, 'image')})"

    generated = ([("generated set", described(result.fake))] if models is None
                 else [(f"model {name}", described(m.fake)) for name, m in models])
    items = [("real set", described(result.real)), *generated,
             ("segmenter", f"{meta.segmenter}, weights {meta.weights}"),
             ("preprocessing", meta.preprocessing),
             ("statistics computed with", "; ".join(result.real.environment) or "not recorded"),
             ("pytorch-fsd", __version__),
             ("command", command)]
    if result.bootstrap is not None:
        b = result.bootstrap
        items.insert(len(generated) + 3, ("intervals", f"{b.method} bootstrap, {b.samples} replicates, seed {b.seed}"))
    return "<table>" + "".join(f'<tr><th class="name">{esc(k)}</th><td class="name">{esc(v)}</td></tr>'
                               for k, v in items) + "</table>"


def write_html(
    result: FSDResult | Comparison,
    folder,
    *,
    real_images=None,
    fake_images=None,
    segmenter=None,
    classes: int = DEFAULT_CLASSES,
    examples: int = DEFAULT_EXAMPLES,
    overwrite: bool = False,
    seed: int = 1,
    rule: VerdictRule = VerdictRule(),
    command: str | None = None,
    device=None,
    weights_dir=None,
    input_options: dict | None = None,
) -> Path:
    """Write the set report of ``result`` (from `fsd.compute` or `fsd.distance`, or a `fsd.compare`
    `Comparison`) into ``folder``; return the path of its ``index.html``.

    ``real_images`` / ``fake_images`` (for a comparison: a list, one per model): where the images are,
    when not where the statistics recorded (any source `fsd.compute` takes; a generator's samples are made
    again with ``seed``, the run's seed). ``segmenter``: the one that made the statistics (default: built
    again from what they record). ``classes`` (K) omissions and K excesses get ``examples`` (M) real and M
    generated images each. Statistics without per-image rows cannot choose examples: recompute them
    without ``--no-rows``.
    """
    if classes < 0 or examples < 0:
        raise InputError(f"--html-classes and --html-examples must be >= 0, got {classes} and {examples}")
    folder = check_html_folder(folder, overwrite)
    comparison = result if isinstance(result, Comparison) else None
    models = comparison.models if comparison else (result,)
    first = models[0]
    for side_name, stats in [("real", first.real)] + [(f"generated set {j + 1}", m.fake) for j, m in enumerate(models)]:
        stats.require_rows("the HTML report (its example images)", f"the {side_name} statistics")
    fakes = list(fake_images) if comparison is not None and fake_images is not None else [fake_images]
    if comparison is not None and fake_images is not None and len(fakes) != len(models):
        raise InputError(f"fake_images gives {len(fakes)} sources for {len(models)} models")
    names = comparison.names if comparison else ("generated",)
    real = _Side("real", "real", first.real, real_images)
    sides = [_Side("fake" if comparison is None else f"model-{j + 1}", "generated" if comparison is None else names[j],
                   m.fake, fakes[j] if j < len(fakes) else None) for j, m in enumerate(models)]
    level = first.ci_level or 0.95
    reports = [class_report(first.real, m.fake, rule=rule, level=level, labels=("real", "generated"))
               for m in models]
    class_names = first.real.meta.class_names
    anchor_names = _anchors(class_names)
    if comparison is None:
        anchors = [dict(enumerate(anchor_names))]
    else:
        anchors = [{c: f"{_slug(names[j])}-{a}" for c, a in enumerate(anchor_names)} for j in range(len(models))]

    # Which images to read again, per set: only the examples shown.
    chosen: dict[tuple[str, int], list[int]] = {}
    for report, side in zip(reports, sides):
        _choose_images(report, classes, examples, (real, side), chosen)
    want: dict[str, set[int]] = {}
    for (key, _), positions in chosen.items():
        want.setdefault(key, set()).update(positions)
    notes: list[str] = []
    if any(want.values()):
        try:
            seg = segmenter if segmenter is not None else segmenter_for(first.real.meta, device=device,
                                                                        weights_dir=weights_dir)
            if segmenter is not None:
                _check_segmenter(seg, first.real.meta)
        except FSDError as exc:
            seg = None
            notes.append(f"no example images: {exc}")
        if seg is not None:
            for side in (real, *sides):
                notes += side.read(want.get(side.key, set()), seg, seed, dict(input_options or {}))
    for note in notes:
        warnings.warn(f"fsd html report: {note}", stacklevel=2)
    photo = first.real.meta.segmenter != "labelmap"

    folder.mkdir(parents=True, exist_ok=True)
    writer = _Writer(folder, class_names)
    command = command or _default_command()
    body = ["<h1>What the generator draws too little, and too much</h1>"]
    for note in dict.fromkeys(notes):
        body.append(f'<p class="note">{esc(note)}</p>')
    body.append(f"<p>Rule for a verdict: {esc(rule.describe())}. Percentages are of image pixels, as the "
                "segmenter labels them; intervals are bootstrap intervals over the images of both sets.</p>")
    if comparison is None:
        body.append(f'<p class="score">{_score_line(result)}</p>')
        body.append(_settings(result, command))
        body.append(_figure(result, writer, "figure.svg", rule))
        body += _class_sections(reports[0], real, sides[0], writer, anchors[0], classes, chosen, photo)
        writer.file("classes.csv", reports[0].csv_text().encode("utf-8"))
        body.append('<h2 id="classes">Every class</h2><p><a href="classes.csv">classes.csv</a></p>')
        body.append(_class_table(reports[0], anchors[0], "class-table"))
    else:
        body.append(_comparison_tables(comparison))
        body.append(_settings(first, command, list(zip(names, models))))
        for j, (m, side, report) in enumerate(zip(models, sides, reports)):
            slug = _slug(names[j])
            body.append(f'<h2 id="model-{esc(slug)}">Model {esc(names[j])}</h2>')
            body.append(f'<p class="score">{_score_line(m)}</p>')
            body.append(_figure(m, writer, f"figure-{slug}.svg", rule))
            body += [p.replace("<h2>", "<h3>").replace("</h2>", "</h3>") if p.startswith("<h2>") else p
                     for p in _class_sections(report, real, side, writer, anchors[j], classes, chosen, photo)]
            writer.file(f"classes-{slug}.csv", report.csv_text().encode("utf-8"))
            body.append(f'<h3>Every class</h3><p><a href="{link(f"classes-{slug}.csv")}">classes-{esc(slug)}.csv</a></p>')
            body.append(_class_table(report, anchors[j], f"class-table-{slug}"))
    page = document("FSD report", body)
    writer.file("index.html", page.encode("utf-8"))
    return folder / "index.html"


def _comparison_tables(comparison: Comparison) -> str:
    level = f"{(comparison.models[0].ci_level or 0.95) * 100:g}%"
    models = table(
        [Cell("model", css="name"), "n", "FSD", f"{level} CI", "mean term", "covariance term"],
        [[Cell(f'<a href="#model-{link(_slug(name))}">{esc(name)}</a>', name.lower(), "name"), Cell.number(m.fake.n, "{:.0f}"),
          Cell.number(m.fsd), Cell(esc("" if m.fsd_ci is None else f"{m.fsd_ci[0]:.4f} to {m.fsd_ci[1]:.4f}"),
                                   "" if m.fsd_ci is None else repr(m.fsd_ci[0])),
          Cell.number(m.mean_term), Cell.number(m.covariance_term)]
         for name, m in zip(comparison.names, comparison.models)],
        table_id="models", sortable=True)
    pairs = table(
        [Cell("a", css="name"), Cell("b", css="name"), "FSD(a) - FSD(b)", f"{level} CI", "a closer in",
         Cell("b has fewer", css="name"), Cell("b has more", css="name")],
        [[Cell(esc(comparison.names[p.a]), css="name"), Cell(esc(comparison.names[p.b]), css="name"),
          Cell.number(p.difference, "{:+.4f}"),
          Cell(esc("" if p.difference_ci is None else f"{p.difference_ci[0]:+.4f} to {p.difference_ci[1]:+.4f}"),
               "" if p.difference_ci is None else repr(p.difference_ci[0])),
          Cell.number(p.support, "{:.1%}"),
          Cell(esc(", ".join(r.name for r in p.classes.notable_changes()[0]) or "none"), css="name"),
          Cell(esc(", ".join(r.name for r in p.classes.notable_changes()[1]) or "none"), css="name")]
         for p in comparison.pairs],
        table_id="pairs", sortable=True)
    return f"<h2>Models</h2>{models}<h2>Pairs</h2>{pairs}"

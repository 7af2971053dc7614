from __future__ import annotations

import csv
import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from fsd.errors import IncompatibleStatsError, InputError
from fsd.frechet import FrechetDistance
from fsd.report import ClassReport, VerdictRule, axis_labels, class_report, plot_omissions, save_figure
from fsd.stats import Stats, StatsMeta

NAMES = ("-", "wall", "sky", "person", "car", "river", "ghost")


def make_stats(counts, names=NAMES, segmenter="demo", source="") -> Stats:
    stats = Stats(StatsMeta(tuple(names), segmenter, "none", "none", "0", source), pixels_per_image=100)
    stats.update(np.array(counts, dtype=np.int64))
    return stats


@pytest.fixture
def real() -> Stats:
    # mu = [1, 44, 35, 10, 10, 0, 0]
    return make_stats([[2, 48, 30, 10, 10, 0, 0], [0, 40, 40, 10, 10, 0, 0]], source="real")


@pytest.fixture
def fake() -> Stats:
    # mu = [2, 48, 35, 2, 9, 4, 0]: person mostly omitted, river invented, ghost absent in both.
    return make_stats([[4, 50, 30, 2, 10, 4, 0], [0, 46, 40, 2, 8, 4, 0]], source="fake")


@pytest.fixture
def report(real: Stats, fake: Stats) -> ClassReport:
    return class_report(real, fake)


def by_name(report: ClassReport) -> dict:
    return {r.name: r for r in report.rows}


# -- the table ---------------------------------------------------------------------------------------
def test_rows_hold_known_values(report: ClassReport):
    rows = by_name(report)
    assert set(rows) == set(NAMES[1:])
    wall = rows["wall"]
    assert (wall.index, wall.real, wall.fake, wall.abs_change) == (1, 44.0, 48.0, 4.0)
    assert wall.rel_change == pytest.approx(4 / 44)
    assert rows["person"].rel_change == pytest.approx(-0.8)
    assert rows["car"].rel_change == pytest.approx(-0.1)
    assert rows["sky"].rel_change == 0.0
    # Mean term = 1 + 16 + 0 + 64 + 1 + 16 + 0 = 98, label 0 included.
    assert report.mean_term == pytest.approx(98.0)
    assert rows["person"].mean_term_share == pytest.approx(64 / 98)
    assert rows["wall"].mean_term_share == pytest.approx(16 / 98)
    assert report.no_prediction.mean_term_share == pytest.approx(1 / 98)
    total = sum(r.mean_term_share for r in report.rows) + report.no_prediction.mean_term_share
    assert total == pytest.approx(1.0)
    assert (report.n_real, report.n_fake) == (2, 2)
    assert (report.real_source, report.fake_source) == ("real", "fake")


def test_label_zero_is_reported_separately(report: ClassReport):
    assert all(r.index != 0 for r in report.rows)
    zero = report.no_prediction
    assert (zero.index, zero.name, zero.real, zero.fake, zero.rel_change) == (0, "-", 1.0, 2.0, 1.0)


def test_classes_absent_from_the_real_set_have_no_relative_change(report: ClassReport):
    rows = by_name(report)
    assert rows["river"].rel_change is None and rows["river"].fake == 4.0 and rows["river"].present
    assert rows["ghost"].rel_change is None and not rows["ghost"].present
    assert rows["ghost"].mean_term_share == 0.0


def test_default_order_is_real_frequency_with_ties_by_fake(report: ClassReport):
    assert report.sort_key == "real"
    assert [r.name for r in report.rows] == ["wall", "sky", "car", "person", "river", "ghost"]


def test_sort_by_relative_puts_undefined_changes_last(real: Stats, fake: Stats, report: ClassReport):
    relative = report.sorted_by("relative")
    assert relative.sort_key == "relative"
    assert [r.name for r in relative.rows] == ["person", "car", "wall", "sky", "river", "ghost"]
    assert class_report(real, fake, sort="relative").rows == relative.rows
    assert [r.name for r in report.rows][0] == "wall"  # the original is unchanged


def test_sort_by_relative_orders_new_classes_before_absent_ones():
    names = ("-", "absent", "small new", "kept", "big new")
    real = make_stats([[0, 0, 0, 100, 0]], names=names)
    fake = make_stats([[0, 0, 10, 60, 30]], names=names)
    rows = class_report(real, fake, sort="relative").rows
    assert [r.name for r in rows] == ["kept", "big new", "small new", "absent"]


def test_sort_by_absolute_change(report: ClassReport):
    absolute = report.sorted_by("absolute")
    assert [r.name for r in absolute.rows] == ["person", "wall", "river", "car", "sky", "ghost"]


def test_unknown_sort_key_is_an_input_error(real: Stats, fake: Stats, report: ClassReport):
    with pytest.raises(InputError, match="'size'.*real, relative, absolute"):
        class_report(real, fake, sort="size")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="unknown sort key"):
        report.sorted_by("name")  # type: ignore[arg-type]


def test_incompatible_statistics_are_refused(real: Stats):
    other = make_stats([[0, 100, 0, 0, 0, 0, 0]], segmenter="other-net")
    with pytest.raises(IncompatibleStatsError, match="segmenter"):
        class_report(real, other)
    renamed = make_stats([[0, 100, 0, 0, 0, 0, 0]], names=NAMES[:-1] + ("spirit",))
    with pytest.raises(IncompatibleStatsError, match="class names"):
        class_report(real, renamed)


def test_empty_statistics_are_an_input_error(real: Stats):
    empty = Stats(real.meta, pixels_per_image=100)
    with pytest.raises(InputError, match="no images"):
        class_report(real, empty)


def test_identical_sets_have_zero_shares(real: Stats):
    same = class_report(real, real)
    assert same.mean_term == 0.0
    assert all(r.mean_term_share == 0.0 and r.abs_change == 0.0 for r in same.rows)


def test_top_skips_classes_absent_from_both_sets(report: ClassReport):
    assert [r.name for r in report.top(3)] == ["wall", "sky", "car"]
    assert [r.name for r in report.top(100)] == ["wall", "sky", "car", "person", "river"]
    with pytest.raises(InputError, match="at least 1"):
        report.top(0)


# -- the verdicts and the summary line ------------------------------------------------------------------
@pytest.fixture
def big_report() -> ClassReport:
    # The two images of each fixture set, 20 times over: every difference but sky's is significant.
    real = make_stats([[2, 48, 30, 10, 10, 0, 0], [0, 40, 40, 10, 10, 0, 0]] * 20, source="real")
    fake = make_stats([[4, 50, 30, 2, 10, 4, 0], [0, 46, 40, 2, 8, 4, 0]] * 20, source="fake")
    return class_report(real, fake)


def test_verdicts_need_significance_and_size(big_report: ClassReport):
    rows = by_name(big_report)
    assert rows["sky"].q == 1.0 and rows["sky"].verdict is None
    assert all(rows[c].q < 1e-6 for c in ("wall", "person", "car", "river"))
    # Significant, but car (-10%) and wall (+9%) changed less than 25%: no verdict.
    assert [(c, rows[c].verdict) for c in ("person", "river", "car", "wall")] == [
        ("person", "too few"), ("river", "too many"), ("car", None), ("wall", None)]
    assert big_report.summary() == "too few: person; too many: river"
    assert rows["ghost"].q is None  # absent from both sets: not tested


def test_verdict_thresholds(big_report: ClassReport):
    real_rows = {r.name: r for r in big_report.rows}
    assert real_rows["river"].real == 0.0
    rebuilt = lambda rule: class_report(*_big_sets(), rule=rule)  # noqa: E731
    # River covers 4% of pixels: below a 5% floor it is too rare to judge.
    assert rebuilt(VerdictRule(min_percent=5.0)).summary() == "too few: person; too many: none"
    # A 5% change floor lets wall (+9%) and car (-10%) in; new classes rank above any finite increase.
    five = rebuilt(VerdictRule(min_relative=0.05))
    assert five.summary() == "too few: person, car; too many: river, wall"
    assert five.summary(count=1) == "too few: person (and 1 more); too many: river (and 1 more)"
    too_few, too_many = five.notable_changes()
    assert [r.name for r in too_few] == ["person", "car"]
    assert [r.name for r in too_many] == ["river", "wall"]
    with pytest.raises(InputError, match="between 0 and 1"):
        VerdictRule(q_threshold=1.5)


def _big_sets() -> tuple[Stats, Stats]:
    real = make_stats([[2, 48, 30, 10, 10, 0, 0], [0, 40, 40, 10, 10, 0, 0]] * 20, source="real")
    fake = make_stats([[4, 50, 30, 2, 10, 4, 0], [0, 46, 40, 2, 8, 4, 0]] * 20, source="fake")
    return real, fake


def test_no_verdict_without_significance(report: ClassReport, real: Stats):
    # Two images per set: person drops 80%, but with no variance on either side the test is exact...
    assert by_name(report)["person"].verdict == "too few"
    # ...while wall's +9% from two noisy images is far from significant.
    assert by_name(report)["wall"].q > 0.05
    assert class_report(real, real).summary() == (
        "no class differs significantly between the sets (of 4 classes tested, none has q < 0.05 and a "
        "change large enough to matter)")


def test_summary_and_axis_use_full_names_unless_a_short_form_is_unique():
    names = ("-", "car, auto, automobile", "tree", "wall", "wall socket")
    real = make_stats([[0, 50, 25, 20, 5], [0, 40, 35, 15, 10]] * 10, names=names)
    fake = make_stats([[0, 10, 65, 20, 5], [0, 12, 63, 15, 10]] * 10, names=names)
    assert class_report(real, fake).summary() == "too few: car, auto, automobile; too many: tree"
    assert axis_labels(list(names[1:])) == ["car", "tree", "wall", "wall socket"]
    assert axis_labels(["shower", "shower stall", "towel", "towel rack"]) == [
        "shower", "shower stall", "towel", "towel rack"]


# -- CSV, JSON, text ----------------------------------------------------------------------------------
def test_csv_has_every_class_with_label_zero_unranked(report: ClassReport, tmp_path):
    path = tmp_path / "out" / "classes.csv"
    report.sorted_by("absolute").to_csv(path)
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["rank", "index", "name", "real", "fake", "abs_change", "rel_change", "mean_term_share",
                             "difference_low", "difference_high", "p", "q", "prevalence_real", "prevalence_fake",
                             "verdict"]
    assert len(rows) == len(NAMES)
    assert (rows[0]["rank"], rows[0]["index"], rows[0]["name"]) == ("", "0", "-")
    assert [r["name"] for r in rows[1:]] == ["person", "wall", "river", "car", "sky", "ghost"]
    assert [r["rank"] for r in rows[1:]] == ["1", "2", "3", "4", "5", "6"]
    person = rows[1]
    assert float(person["real"]) == 10.0 and float(person["fake"]) == 2.0
    assert float(person["rel_change"]) == pytest.approx(-0.8)
    assert float(person["mean_term_share"]) == pytest.approx(64 / 98)
    assert rows[3]["rel_change"] == ""  # river: undefined
    assert person["verdict"] == "too few" and float(person["prevalence_real"]) == 1.0
    assert rows[6]["q"] == "" and rows[6]["verdict"] == ""  # ghost: not tested
    assert not [p for p in path.parent.iterdir() if p.name != "classes.csv"]  # no temp file left


def test_csv_to_an_unwritable_place_is_an_input_error(report: ClassReport, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="CSV"):
        report.to_csv(blocker / "classes.csv")


def test_records_and_dict_are_strict_json(report: ClassReport):
    records = report.to_records()
    assert [r["name"] for r in records] == ["wall", "sky", "car", "person", "river", "ghost"]
    wall = {k: records[0][k] for k in ("index", "name", "real", "fake", "abs_change", "rel_change",
                                           "mean_term_share", "prevalence_real", "prevalence_fake", "verdict")}
    assert wall == {
        "index": 1, "name": "wall", "real": 44.0, "fake": 48.0, "abs_change": 4.0,
        "rel_change": pytest.approx(4 / 44), "mean_term_share": pytest.approx(16 / 98),
        "prevalence_real": 1.0, "prevalence_fake": 1.0, "verdict": None,
    }
    low, high = records[0]["difference_ci"]
    assert low < 4.0 < high and 0.05 < records[0]["q"] <= 1 and 0 < records[0]["p"] <= records[0]["q"]
    assert records[4]["rel_change"] is None
    full = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert full["sort"] == "real" and full["n_real"] == 2 and full["n_fake"] == 2
    assert full["mean_term"] == pytest.approx(98.0)
    assert full["no_prediction"]["name"] == "-" and full["no_prediction"]["fake"] == 2.0
    assert len(full["classes"]) == len(NAMES) - 1
    assert full["too_few"] == ["person"] and full["too_many"] == ["river"]
    assert full["rule"]["q_threshold"] == 0.05 and full["rule"]["classes_tested"] == 5
    assert full["summary"] == report.summary()


def test_format_table_is_aligned(report: ClassReport):
    text = report.format_table(k=3)
    lines = text.splitlines()
    assert lines[0].startswith("Top 3 of 5 classes by mean area in the real set")
    header, rule = lines[1], lines[2]
    body = lines[3:6]
    assert set(rule) == {"-"} and lines[6] == rule
    # Every cell is padded to its column: all rows as wide as the header, numbers end under headers.
    assert all(len(line) == len(header) for line in (*body, lines[7]))
    end_of_real = header.index("real %") + len("real %")
    for line in body:
        assert line[end_of_real - 1] != " " and line[end_of_real] == " "
    assert [line.split()[1] for line in body] == ["wall", "sky", "car"]
    cells = body[0].split()
    assert cells[:5] == ["1", "wall", "44.0000", "48.0000", "+4.0000"] and cells[6] == "to"
    assert cells[8:] == ["+9.1%", f"{by_name(report)['wall'].q:.4f}", "100%", "100%", "16.3%"]
    assert "q < 0.05" in lines[-1]
    assert "(no prediction)" in lines[7] and "1.0000" in lines[7] and "+100.0%" in lines[7]
    assert "ghost" not in text


def test_format_table_marks_new_classes_and_truncates_long_names():
    names = ("-", "a" * 40, "new thing")
    real = make_stats([[0, 100, 0]], names=names)
    fake = make_stats([[0, 50, 50]], names=names)
    text = class_report(real, fake).sorted_by("relative").format_table()
    lines = text.splitlines()
    assert "a" * 29 + "..." in text and "a" * 33 not in text
    assert lines[4].split()[1:3] == ["new", "thing"] and "new" in lines[4].split()[3:]
    assert "by relative change" in lines[0]


# -- the figure ----------------------------------------------------------------------------------------
FIG_NAMES = ("-", "wall", "sky", "person", "car, auto", "ghost")


@pytest.fixture
def fig_pair() -> tuple[Stats, Stats]:
    # Two identical images per set: covariances are zero, so FSD = mean term = 100 + 25 + 81 + 576 = 782.
    real = make_stats([[0, 60, 30, 9, 1, 0]] * 2, names=FIG_NAMES)
    fake = make_stats([[0, 50, 25, 0, 25, 0]] * 2, names=FIG_NAMES)
    return real, fake


def test_figure_bars_line_and_clipped_labels_match_the_statistics(fig_pair):
    real, fake = fig_pair
    fig = plot_omissions(real, fake)
    top, bottom = fig.axes
    assert [p.get_height() for p in top.patches] == pytest.approx([60.0, 30.0, 9.0, 1.0])  # ghost skipped
    line = next(l for l in top.lines if l.get_label().startswith("generated"))
    assert list(line.get_ydata()) == pytest.approx([50.0, 25.0, 0.0, 25.0])
    assert top.get_yscale() == "log"
    assert [p.get_height() for p in bottom.patches] == pytest.approx([-1 / 6, -1 / 6, -1.0, 24.0])
    assert bottom.get_ylim() == pytest.approx((-1.0, 1.1))
    # Only the clipped bar is labelled; person (-100%) and car, auto (new-ish +2400%) are significant.
    assert [t.get_text() for t in bottom.texts] == ["*", "24.0", "*"]
    assert [t.get_text() for t in bottom.get_xticklabels()] == ["wall", "sky", "person", "car"]
    assert top.get_title() == "FSD 782.00 (mean term 782.00, covariance term 0.00)"
    legend = [t.get_text() for t in top.get_legend().get_texts()]
    assert legend == ["real (n=2)", "generated (n=2)"]


def test_figure_top_k_title_and_labels(fig_pair):
    real, fake = fig_pair
    fig = plot_omissions(real, fake, top_k=2, fsd=1.5, labels=("training", "ProGAN"))
    top, bottom = fig.axes
    assert len(top.patches) == 2 and len(bottom.patches) == 2 and not [t for t in bottom.texts if t.get_text() != "*"]
    assert top.get_title() == "FSD 1.50"
    assert [t.get_text() for t in top.get_legend().get_texts()] == ["training (n=2)", "ProGAN (n=2)"]
    fig = plot_omissions(real, fake, fsd=FrechetDistance(3.0, 2.0, 1.0), title="church")
    assert fig.axes[0].get_title() == "church"


def test_figure_input_errors(fig_pair):
    real, fake = fig_pair
    with pytest.raises(InputError, match="top_k"):
        plot_omissions(real, fake, top_k=0)
    only_unlabelled = make_stats([[100, 0, 0, 0, 0, 0]] * 2, names=FIG_NAMES)
    with pytest.raises(InputError, match="nothing to plot"):
        plot_omissions(only_unlabelled, fake)


def test_figure_saved_as_png_is_not_blank(fig_pair, tmp_path):
    from PIL import Image

    fig = plot_omissions(*fig_pair)
    path = tmp_path / "omissions.png"
    save_figure(fig, path)
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = fig.get_size_inches() * 150
        assert image.size == (round(width), round(height))
        pixels = np.asarray(image.convert("RGB")).astype(int)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20
    red = (pixels[..., 0] > 180) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    assert red.sum() > 100  # the generated line and the omission bars
    assert not [p for p in tmp_path.iterdir() if p.name != "omissions.png"]


def test_figure_format_follows_the_extension(fig_pair, tmp_path):
    fig = plot_omissions(*fig_pair, top_k=2)
    save_figure(fig, tmp_path / "a.PDF")
    save_figure(fig, tmp_path / "a.svg")
    assert (tmp_path / "a.PDF").read_bytes().startswith(b"%PDF")
    assert b"<svg" in (tmp_path / "a.svg").read_bytes()[:2000]
    with pytest.raises(InputError, match=r"a\.jpg.*\.png, \.pdf, \.svg"):
        save_figure(fig, tmp_path / "a.jpg")
    assert not (tmp_path / "a.jpg").exists()


def test_missing_matplotlib_says_how_to_install(fig_pair, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'pytorch-fsd\[plot\]'"):
        plot_omissions(*fig_pair)



def test_a_long_title_fits_inside_a_narrow_figure(fig_pair):
    """The title of a run with an interval is too long for a figure of a few classes in one line: it
    breaks before the terms, and every line of it lies inside the figure once drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    real, fake = fig_pair
    result = SimpleNamespace(real=real, fake=fake, fsd=241.0659, fsd_ci=(207.8636, 270.7392), ci_level=0.95, mean_term=225.7276,
                             covariance_term=15.3383)
    fig = plot_omissions(result)
    title = fig.axes[0].title
    assert title.get_text() == "FSD 241.07, 95% CI 207.86 to 270.74\n(mean term 225.73, covariance term 15.34)"
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    box, frame = title.get_window_extent(canvas.get_renderer()), fig.bbox
    assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and box.y1 <= frame.y1

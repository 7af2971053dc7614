"""The per-class report through the command line: --report, --report-csv, --plot, --json, `fsd report`."""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fsd.cli import cli

ARGS = ["--segmenter", "labelmap", "--num-classes", "4", "--num-workers", "0", "-q"]


def write_labels(folder, fractions_per_image):
    """One 100x100 label image per entry; each gives the share of rows of classes 0..3."""
    folder.mkdir()
    for k, fractions in enumerate(fractions_per_image):
        rows = np.repeat(np.arange(4), np.round(np.array(fractions) * 100).astype(int))
        Image.fromarray(np.repeat(rows[:, None], 100, axis=1).astype(np.uint8)).save(folder / f"{k}.png")


@pytest.fixture
def folders(tmp_path):
    # class 1 ("class_1") vanishes in the fake set, class 3 appears; class 2 is unchanged.
    write_labels(tmp_path / "real", [(0.1, 0.5, 0.4, 0.0), (0.2, 0.3, 0.5, 0.0), (0.1, 0.4, 0.5, 0.0)])
    write_labels(tmp_path / "fake", [(0.1, 0.0, 0.4, 0.5), (0.2, 0.0, 0.5, 0.3), (0.1, 0.0, 0.5, 0.4)])
    return tmp_path / "real", tmp_path / "fake"


def run(args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_report_prints_table_and_summary_after_the_score(folders):
    real, fake = folders
    result = run([real, fake, *ARGS, "--report"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("FSD: ")
    assert "too few: class_1" in result.stdout and "too many: class_3" in result.stdout
    assert any("class_2" in line for line in lines)


def test_json_includes_the_full_table(folders):
    real, fake = folders
    payload = json.loads(run([real, fake, *ARGS, "--json"]).stdout)
    rows = {row["name"]: row for row in payload["report"]["classes"]}
    assert rows["class_1"]["real"] == pytest.approx(40.0, abs=0.1) and rows["class_1"]["fake"] == 0.0
    assert rows["class_3"]["rel_change"] is None  # absent from the real set
    assert payload["report"]["no_prediction"]["real"] == pytest.approx(40 / 3, abs=0.1)  # nearest-neighbour resize to 256 shifts shares slightly


def test_report_csv_has_every_class(folders, tmp_path):
    real, fake = folders
    out = tmp_path / "classes.csv"
    assert run([real, fake, *ARGS, "--report-csv", out]).exit_code == 0
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and {r["name"] for r in rows} == {"-", "class_1", "class_2", "class_3"}


def test_report_subcommand_from_saved_statistics_with_plot(folders, tmp_path):
    pytest.importorskip("matplotlib")
    real, fake = folders
    for source, name in ((real, "r.npz"), (fake, "f.npz")):
        assert run(["--save-stats", source, tmp_path / name, *ARGS]).exit_code == 0
    result = run(["report", tmp_path / "r.npz", tmp_path / "f.npz", "--plot", tmp_path / "fig.png"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("FSD: ") and "class_1" in result.stdout
    with Image.open(tmp_path / "fig.png") as image:
        assert image.size[0] > 300 and image.size[1] > 200
    bad = run(["report", tmp_path / "r.npz", tmp_path / "f.npz", "--plot", tmp_path / "fig.gif"])
    assert bad.exit_code == 2 and "gif" in bad.stderr


def test_bad_output_paths_fail_before_any_work(folders, tmp_path, monkeypatch):
    real, fake = folders
    import fsd.api

    def no_work(*args, **kwargs):
        raise AssertionError("segmentation ran before the output paths were checked")

    (real.parent / "dir.npz").mkdir()
    monkeypatch.setattr(fsd.api, "compute", no_work)
    monkeypatch.setattr(fsd.api, "compute_stats", no_work)
    for args, message in [
        ([real, fake, *ARGS, "--plot", tmp_path / "fig.jpg"], "figure format"),
        ([real, fake, *ARGS, "--report-csv", tmp_path / "missing" / "x.csv"], "does not exist"),
        (["--save-stats", real, tmp_path / "stats.bin", *ARGS], "name it like"),
        (["--save-stats", real, real.parent / "dir.npz", *ARGS], "is a folder"),
    ]:
        result = run(args)
        assert result.exit_code == 2 and message in result.stderr, (args, result.output)


def test_the_score_is_printed_before_files_are_written(folders, tmp_path, monkeypatch):
    real, fake = folders
    import fsd.report

    def failing_csv(self, path):
        raise OSError("disk full")

    monkeypatch.setattr(fsd.report.ClassReport, "to_csv", failing_csv)
    result = run([real, fake, *ARGS, "--report-csv", tmp_path / "x.csv"])
    assert result.exit_code == 1 and result.stdout.startswith("FSD: ") and "disk full" in result.stderr

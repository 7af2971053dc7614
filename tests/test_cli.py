import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fsd.cli import cli


def label_folders(tmp_path):
    real, fake = tmp_path / "real", tmp_path / "fake"
    real.mkdir(), fake.mkdir()
    Image.fromarray(np.zeros((256, 256), np.uint8)).save(real / "a.png")
    Image.fromarray(np.ones((256, 256), np.uint8)).save(real / "b.png")
    half = np.zeros((256, 256), np.uint8)
    half[:, 128:] = 1
    Image.fromarray(half).save(fake / "a.png")
    Image.fromarray(half).save(fake / "b.png")
    return real, fake


def run(args):
    return CliRunner().invoke(cli, [str(a) for a in args])


LABELMAP = ["--segmenter", "labelmap", "--num-classes", "2", "--num-workers", "0", "-q"]


def test_python_dash_m_fsd_end_to_end_prints_the_score_on_stdout(tmp_path):
    real, fake = label_folders(tmp_path)
    # mu equal; sigma_real trace 10000, sigma_fake = 0 -> FSD = 10000 (all in the covariance term)
    proc = subprocess.run([sys.executable, "-m", "fsd", str(real), str(fake), *LABELMAP, "--bootstrap", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "FSD: 10000.0000  (mean term 0.0000, covariance term 10000.0000)\n"
    # By default the interval comes with it, and with two images it says it means little.
    proc = subprocess.run([sys.executable, "-m", "fsd", str(real), str(fake), *LABELMAP],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("FSD: 10000.0000  (95% CI ")
    assert "unreliable: no more images than classes (real 2 for 2, generated 2 for 2); mean term 0.0000" in proc.stdout


def test_json_output_is_one_object(tmp_path):
    real, fake = label_folders(tmp_path)
    result = run([real, fake, *LABELMAP, "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["fsd"] == pytest.approx(10000.0)
    assert payload["mean_term"] == pytest.approx(0.0) and payload["covariance_term"] == pytest.approx(10000.0)
    environment = payload["real"].pop("environment")
    assert payload["real"] == {"n": 2, "source": str(real), "rows": True} and payload["fake"]["n"] == 2
    assert len(environment) == 1 and environment[0].startswith("torch ")
    assert payload["ci_level"] == 0.95 and payload["bootstrap"] == {"samples": 1000, "seed": 0,
                                                                    "method": "basic"}
    for key in ("fsd_ci", "mean_term_ci", "covariance_term_ci"):
        low, high = payload[key]
        assert 0 <= low <= high


def test_save_stats_then_compare_saved_files(tmp_path):
    real, fake = label_folders(tmp_path)
    assert run(["--save-stats", real, tmp_path / "r.npz", *LABELMAP]).exit_code == 0
    assert run(["--save-stats", fake, tmp_path / "f.npz", *LABELMAP]).exit_code == 0
    result = run([tmp_path / "r.npz", tmp_path / "f.npz", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["fsd"] == pytest.approx(10000.0)
    mixed = run([tmp_path / "r.npz", fake, *LABELMAP, "--json"])
    assert json.loads(mixed.stdout)["fsd"] == pytest.approx(10000.0)


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["{missing}", "{fake}", *LABELMAP], 2, "no such file or folder"),
        (["{real}", *LABELMAP], 2, "give REAL and FAKE"),
        (["{real}", "{fake}", "--segmenter", "labelmap"], 2, "needs --num-classes"),
        (["{real}", "{fake}", "--num-classes", "3"], 2, "only to --segmenter labelmap"),
        (["{real}", "{fake}", "--batch-size", "0"], 2, "batch-size"),
        (["{real}", "{fake}", *LABELMAP, "--num-samples", "5"], 2, "only 2"),
        (["{real}", "{empty}", *LABELMAP], 2, "no images found"),
        (["{real}", "{fake}", "--segmenter", "labelmap", "--num-classes", "1", "-q", "--num-workers", "0"], 2,
         "num-classes"),
        (["{real}", "{text}", *LABELMAP], 2, "not saved statistics"),
        (["--save-stats", "{real}", "{out}", "{fake}", *LABELMAP], 2, "no REAL/FAKE"),
    ],
)
def test_error_paths_exit_2_with_one_line(tmp_path, args, code, message):
    real, fake = label_folders(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "t.txt").write_text("x")
    paths = {"real": real, "fake": fake, "missing": tmp_path / "missing", "empty": tmp_path / "empty",
             "text": tmp_path / "t.txt", "out": tmp_path / "o.npz"}
    result = run([a.format(**paths) for a in args])
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_bad_image_exit_2_and_skip_option(tmp_path):
    real, fake = label_folders(tmp_path)
    (fake / "c.png").write_bytes(b"junk")
    result = run([real, fake, *LABELMAP])
    assert result.exit_code == 2 and "c.png" in result.stderr and "--skip-bad-images" in result.stderr
    result = run([real, fake, *LABELMAP, "--skip-bad-images"])
    assert result.exit_code == 0 and "skipped 1 unreadable" in result.stderr and "c.png" in result.stderr
    assert result.stdout.startswith("FSD: ")


def test_debug_shows_the_traceback_and_keeps_the_exit_status(tmp_path):
    result = run([tmp_path / "a", tmp_path / "b", "--debug", *LABELMAP])
    assert result.exit_code == 2
    assert "Traceback (most recent call last)" in result.stderr and "InputError" in result.stderr


def test_missing_weights_exit_1_with_instructions(tmp_path, monkeypatch):
    real, fake = label_folders(tmp_path)
    monkeypatch.setenv("FSD_OFFLINE", "1")
    monkeypatch.setenv("FSD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FSD_WEIGHTS_DIR", raising=False)
    result = run([real, fake, "-q", "--device", "cpu"])
    assert result.exit_code == 1, result.output
    assert "encoder_epoch_40.pth" in result.stderr and "Traceback" not in result.stderr


def test_a_missing_weights_folder_is_bad_input(tmp_path):
    real, fake = label_folders(tmp_path)
    result = run([real, fake, "-q", "--device", "cpu", "--weights-dir", tmp_path / "nowhere"])
    assert result.exit_code == 2 and "nowhere" in result.stderr and "does not exist" in result.stderr

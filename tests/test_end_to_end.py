"""`python -m fsd` on folders of photo-like images through the paper's architecture.

The weights are random (the real ones cannot be downloaded in tests) but the network, the file layout,
the loading path and every step from JPEG to printed number are the real ones.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

import fsd
from fsd.segmenters.upp import UPPSegmenter
from tests.conftest import write_folder
from tests.synthetic import write_upp_weights


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    write_upp_weights(root / "weights")
    write_folder(root / "real", 3, seed=10, sizes=((320, 240), (256, 300), (400, 400)))
    write_folder(root / "fake", 3, seed=11, sizes=((256, 256),))
    return root


def test_cli_end_to_end_matches_the_api(setup):
    root = setup
    proc = subprocess.run(
        [sys.executable, "-m", "fsd", str(root / "real"), str(root / "fake"), "--weights-dir", str(root / "weights"),
         "--device", "cpu", "--json", "--num-workers", "1", "--batch-size", "2"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["real"]["n"] == 3 and payload["fake"]["n"] == 3
    assert payload["segmenter"] == "upp-resnet50-upernet"

    segmenter = UPPSegmenter.from_folder(root / "weights" / "upp-resnet50-upernet", device="cpu")
    per_image = {
        side: fsd.class_percentages_of(root / side, segmenter=segmenter, batch_size=3, num_workers=0, progress=False)
        for side in ("real", "fake")
    }
    for side in per_image.values():
        np.testing.assert_allclose(side.percentages.sum(axis=1), 100.0)
        assert (side.percentages > 0).sum(axis=1).min() > 5  # random weights still give varied label maps
    pct_r, pct_f = per_image["real"].percentages, per_image["fake"].percentages
    expected = fsd.frechet_distance(pct_r.mean(0), np.cov(pct_r, rowvar=False), pct_f.mean(0), np.cov(pct_f, rowvar=False))
    assert payload["fsd"] == pytest.approx(expected.value, rel=1e-9)
    assert payload["mean_term"] == pytest.approx(expected.mean_term, rel=1e-9)


def test_reduced_precision_statistics_are_marked_and_never_mixed_with_float32(setup, tmp_path):
    root = setup
    common = ["--weights-dir", str(root / "weights"), "--device", "cpu", "-q", "--num-workers", "0"]
    # bfloat16 autocast runs on CPU too; the saved statistics carry the mode in their weights id
    for precision, name in (("float32", "f32.npz"), ("bfloat16", "bf16.npz")):
        proc = subprocess.run([sys.executable, "-m", "fsd", "--save-stats", str(root / "fake"), str(tmp_path / name),
                               "--precision", precision, *common], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
    assert fsd.Stats.load(tmp_path / "bf16.npz").meta.weights.endswith("+bf16")
    mixed = subprocess.run([sys.executable, "-m", "fsd", str(tmp_path / "f32.npz"), str(tmp_path / "bf16.npz")],
                           capture_output=True, text=True, timeout=600)
    assert mixed.returncode == 2 and "weights" in mixed.stderr

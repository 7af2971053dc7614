"""A real Lightning Trainer on CPU logs ``self.log("val/fsd", metric)``: the values fsd.compute gives, per
epoch, and the same values from 2 DDP processes (gloo) as from 1 (see tests/lightning_fsd.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fsd
from tests import lightning_fsd
from tests.conftest import ColorSegmenter, write_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def real_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lightning") / "real"
    write_folder(folder, 12, seed=0)
    return folder


@pytest.fixture(scope="module")
def one_process(real_folder, tmp_path_factory):
    return lightning_fsd.run(str(real_folder), 1, str(tmp_path_factory.mktemp("root")))


def test_logged_values_equal_fsd_compute_on_the_same_samples(real_folder, one_process):
    values, module = one_process
    assert len(values) == 2 and values[0] != values[1]  # two validation epochs, the generator trained between
    for value, generator in zip(values, module.snapshots):
        expected = fsd.compute(real_folder, generator=generator, z_dim=lightning_fsd.Z_DIM,
                               num_samples=lightning_fsd.NUM_SAMPLES, seed=lightning_fsd.SEED,
                               segmenter=ColorSegmenter(32), num_workers=0, progress=False, bootstrap=0)
        assert value == expected.fsd  # and the metric was reset between epochs, or the second would differ
    assert module.fsd.reference.n == 12


def test_two_ddp_processes_log_the_one_process_values(real_folder, one_process, tmp_path):
    out = tmp_path / "values.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "tests.lightning_fsd", str(real_folder), str(out), "--devices", "2"],
                          capture_output=True, text=True, timeout=240, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "distributed_backend=gloo" in done.stderr and "All distributed processes registered" in done.stderr
    assert json.loads(out.read_text()) == one_process[0]

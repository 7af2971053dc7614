"""fsd.torchmetrics.FrechetSegmentationDistance: a real torchmetrics.Metric equal to fsd.compute and FSDMetric."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torchmetrics

import fsd
from fsd.errors import InputError
from fsd.torchmetrics import FrechetSegmentationDistance
from tests.conftest import ColorSegmenter
from tests.test_metric import _feed, data, float_images  # noqa: F401  (data is a fixture)

ROOT = Path(__file__).resolve().parents[1]


def test_is_a_torchmetrics_metric_with_its_conventions():
    metric = FrechetSegmentationDistance(ColorSegmenter(32))
    assert isinstance(metric, torchmetrics.Metric)
    assert metric.higher_is_better is False and metric.full_state_update is False
    assert metric.is_differentiable is False
    sums = {f"{side}_{name}" for side in ("real", "fake") for name in ("n", "count_sum", "count_outer_sum")}
    rows = {"real_rows", "fake_rows"}
    assert set(metric._reductions) == sums | rows
    assert all(metric._reductions[name] is torchmetrics.utilities.data.dim_zero_sum for name in sums)
    assert all(metric._reductions[name] is torchmetrics.utilities.data.dim_zero_cat for name in rows)
    assert all(metric._defaults[name].dtype == torch.int64 for name in sums)
    # The segmenter is no part of the module tree nor of the state_dict (with persistent states either).
    assert dict(metric.named_children()) == {} and list(metric.parameters()) == []
    metric.persistent(True)
    assert not any("segmenter" in key or "_core" in key for key in metric.state_dict())
    assert set(FrechetSegmentationDistance(ColorSegmenter(32), keep_rows=False)._reductions) == sums


def test_equals_fsd_compute_and_fsdmetric_on_the_same_images(data):
    real, fake, _, expected = data
    metric = FrechetSegmentationDistance(ColorSegmenter(32))
    _feed(metric, real, True, (5, 1, 7))
    for part in (fake[:4], fake[4:]):
        assert metric(part, real=False) is None  # calling it adds the batch, as update does
    value = metric.compute()
    assert isinstance(value, torch.Tensor) and value.shape == () and value.dtype == torch.float64
    assert value.item() == expected.fsd
    assert metric.result.mean_term == expected.mean_term
    assert np.array_equal(metric.result.fake.sigma, expected.fake.sigma)
    assert len(metric.result.fake.rows) == 9
    # the same core as FSDMetric: the same value from other batch sizes
    other = fsd.FSDMetric(ColorSegmenter(32))
    _feed(other, real, True, (13,))
    _feed(other, fake, False, (2, 2, 5))
    assert other.compute().fsd == value.item()
    # per-class details of the last compute
    report = metric.class_report()
    assert {row.name for row in report.rows} == {"red", "green", "blue"} and report.n_fake == 9
    # intervals from the per-image rows, as fsd.distance makes them
    with_ci = FrechetSegmentationDistance(ColorSegmenter(32), bootstrap=200)
    with_ci.update(real, real=True)
    with_ci.update(fake, real=False)
    with_ci.compute()
    assert with_ci.result.fsd_ci == fsd.distance(expected.real, expected.fake, bootstrap=200).fsd_ci


def test_reset_keeps_the_real_statistics_given_up_front(data):
    real, fake, tmp_path, expected = data
    reference = fsd.compute_stats(tmp_path / "real", segmenter=ColorSegmenter(32), num_workers=0, progress=False)
    metric = FrechetSegmentationDistance(ColorSegmenter(32), real=reference)
    metric.update(fake, real=False)
    assert metric.compute().item() == expected.fsd
    metric.reset()
    assert int(metric.fake_n) == 0 and metric.fake_rows == [] and metric.reference is reference
    with pytest.raises(InputError, match="fake side has 0 images"):
        metric.compute()
    _feed(metric, fake, False, (3, 6))
    assert metric.compute().item() == expected.fsd
    # real images given with update are forgotten by reset, unless reset_real_features=False
    for keep, n_after in ((True, 0), (False, 13)):
        m = FrechetSegmentationDistance(ColorSegmenter(32), reset_real_features=keep)
        m.update(real, real=True)
        m.update(fake, real=False)
        m.reset()
        assert int(m.real_n) == n_after and int(m.fake_n) == 0
        assert sum(len(r) for r in m.real_rows) == n_after
    m.update(fake, real=False)
    assert m.compute().item() == expected.fsd


def test_bad_input_is_a_clear_error_and_adds_nothing(data):
    _, fake, _, _ = data
    metric = FrechetSegmentationDistance(ColorSegmenter(32))
    with pytest.raises(InputError, match=r"FrechetSegmentationDistance\.update\(real=False\).*value_range"):
        metric.update(fake * 127.5 + 127.5, real=False)  # 0..255 floats for the default range (-1, 1)
    with pytest.raises(InputError, match=r"\(N, 3, H, W\)"):
        metric.update(fake[0], real=False)
    assert int(metric.fake_n) == 0 and metric.fake_rows == []
    with pytest.raises(InputError, match="RGB"):
        FrechetSegmentationDistance(fsd.LabelMapSegmenter(3))
    with pytest.raises(InputError, match="compute"):
        metric.class_report()
    with pytest.raises(ValueError, match="Unexpected keyword"):
        FrechetSegmentationDistance(ColorSegmenter(32), sync_on_compte=False)


def test_state_dict_of_sums_only_gives_the_value_without_an_interval(data):
    real, fake, _, expected = data
    metric = FrechetSegmentationDistance(ColorSegmenter(32), keep_rows=False)
    metric.persistent(True)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    state = metric.state_dict()
    assert all(t.dtype == torch.int64 for t in state.values())
    restored = FrechetSegmentationDistance(ColorSegmenter(32), keep_rows=False, bootstrap=100)
    restored.persistent(True)
    restored.load_state_dict(state)
    assert restored.compute().item() == expected.fsd
    assert restored.result.fsd_ci is None and "keep_rows=False" in restored.result.ci_note + restored.result.real.rows_note


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_import_fsd_imports_none_of_the_optional_frameworks():
    done = _run("""
        import sys
        import fsd
        loaded = [m for m in ("torchmetrics", "lightning", "pytorch_lightning", "diffusers", "transformers")
                  if m in sys.modules]
        print(loaded)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_without_torchmetrics_the_import_error_says_what_to_install():
    done = _run("""
        import sys
        sys.modules["torchmetrics"] = None  # as if not installed
        import fsd
        try:
            import fsd.torchmetrics
        except ImportError as exc:
            print(exc)
    """)
    assert done.returncode == 0, done.stderr
    assert "pip install 'pytorch-fsd[torchmetrics]'" in done.stdout


def _gloo_worker(rank: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        real, fake = float_images(13, seed=0), float_images(9, seed=1, height=32, width=32)
        metric = FrechetSegmentationDistance(ColorSegmenter(32), bootstrap=100)
        # unequal shares, and one rank without any fake image: its empty rows still gather
        metric.update(real[:7] if rank == 0 else real[7:], real=True)
        if rank == 0:
            metric.update(fake, real=False)
        value = metric.compute().item()
        torch.save({"value": value, "ci": metric.result.fsd_ci, "n": (metric.result.real.n, metric.result.fake.n),
                    "local_n": int(metric.real_n)}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_give_the_one_process_value(data, tmp_path):
    import torch.multiprocessing as mp

    real, fake, _, expected = data
    mp.start_processes(_gloo_worker, args=(str(tmp_path / "init"), str(tmp_path / "out")), nprocs=2,
                       start_method="spawn")
    one = FrechetSegmentationDistance(ColorSegmenter(32), bootstrap=100)
    one.update(real, real=True)
    one.update(fake, real=False)
    one.compute()
    for rank in (0, 1):
        got = torch.load(tmp_path / f"out.{rank}")
        assert got["value"] == expected.fsd and got["n"] == (13, 9)
        assert got["ci"] == one.result.fsd_ci  # the rows were gathered too
        assert got["local_n"] == (7 if rank == 0 else 6)  # the local states are back after compute

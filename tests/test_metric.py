"""FSDMetric: equal to fsd.compute on the same images, states, reset, never in train mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import fsd
from fsd.errors import IncompatibleStatsError, InputError
from tests.conftest import ColorSegmenter


def float_images(count: int, seed: int, height: int = 40, width: int = 52) -> torch.Tensor:
    """Smooth float images in [-1, 1], (count, 3, H, W)."""
    gen = torch.Generator().manual_seed(seed)
    small = torch.rand(count, 3, 5, 6, generator=gen) * 2.4 - 1.2
    big = torch.nn.functional.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)
    return big.clamp(-1, 1)


def save_as_png(images: torch.Tensor, folder) -> None:
    """The quantization rule written out independently: round((x + 1) * 127.5)."""
    folder.mkdir(parents=True)
    as_uint8 = ((images.double() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    for k, image in enumerate(as_uint8):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{k:03d}.png")


@pytest.fixture
def data(tmp_path):
    real, fake = float_images(13, seed=0), float_images(9, seed=1, height=32, width=32)
    save_as_png(real, tmp_path / "real")
    save_as_png(fake, tmp_path / "fake")
    expected = fsd.compute(tmp_path / "real", tmp_path / "fake", segmenter=ColorSegmenter(32), num_workers=0,
                           progress=False)
    return real, fake, tmp_path, expected


def _feed(metric: fsd.FSDMetric, images: torch.Tensor, real: bool, sizes) -> None:
    start = 0
    for size in sizes:
        metric.update(images[start : start + size], real=real)
        start += size
    assert start == len(images)


def test_metric_equals_compute_on_the_same_images(data):
    real, fake, _, expected = data
    metric = fsd.FSDMetric(ColorSegmenter(32))
    _feed(metric, real, True, (5, 1, 7))
    _feed(metric, fake, False, (4, 5))
    result = metric.compute()
    assert isinstance(result, fsd.FSDResult)
    assert (result.real.n, result.fake.n) == (13, 9)
    assert result.fsd == expected.fsd and result.mean_term == expected.mean_term
    assert np.array_equal(result.real.sigma, expected.real.sigma)
    # uint8 input and the update_real / update_fake spelling give the same
    as_uint8 = fsd.FSDMetric(ColorSegmenter(32), value_range="uint8")
    as_uint8.update_real(((real.double() + 1) * 127.5).round().to(torch.uint8))
    as_uint8.update_fake(((fake.double() + 1) * 127.5).round().to(torch.uint8))
    assert as_uint8.compute().fsd == expected.fsd
    # Rows kept per image: with bootstrap= the metric gives the interval fsd.compute gives.
    with_ci = fsd.FSDMetric(ColorSegmenter(32), bootstrap=200)
    _feed(with_ci, real, True, (13,))
    _feed(with_ci, fake, False, (2, 7))
    assert len(with_ci.compute().fake.rows) == 9
    assert with_ci.compute().fsd_ci == fsd.distance(expected.real, expected.fake, bootstrap=200).fsd_ci
    assert result.fsd_ci is None  # bootstrap=0 by default in training loops


def test_reference_real_statistics_and_reset(data):
    real, fake, tmp_path, expected = data
    fsd.compute_stats(tmp_path / "real", segmenter=ColorSegmenter(32), num_workers=0,
                      progress=False).save(tmp_path / "real.npz")
    for reference in (tmp_path / "real", tmp_path / "real.npz"):
        metric = fsd.FSDMetric(ColorSegmenter(32), real=reference, num_workers=0)
        _feed(metric, fake, False, (9,))
        assert metric.compute().fsd == expected.fsd
    metric.reset()  # keeps the real side
    assert int(metric.fake_n) == 0 and metric.reference is not None
    with pytest.raises(InputError, match="fake side has 0"):
        metric.compute()
    _feed(metric, fake, False, (2, 7))
    assert metric.compute().fsd == expected.fsd
    # real updates on top of a reference are added to it
    metric.update(real[:3], real=True)
    assert metric.compute().real.n == 16
    metric.reset(keep_real=False)
    assert metric.reference is None and int(metric.real_n) == 0


def test_states_are_exact_int64_sums_in_the_state_dict(data):
    real, fake, _, expected = data
    metric = fsd.FSDMetric(ColorSegmenter(32))
    _feed(metric, real, True, (13,))
    _feed(metric, fake, False, (9,))
    state = metric.state_dict()
    assert set(state) == {f"{side}_{name}" for side in ("real", "fake") for name in ("n", "count_sum",
                                                                                     "count_outer_sum")}
    assert all(t.dtype == torch.int64 for t in state.values())
    assert int(state["real_count_sum"].sum()) == 13 * 32 * 32
    restored = fsd.FSDMetric(ColorSegmenter(32), bootstrap=100)
    restored.load_state_dict(state)
    result = restored.compute()
    assert result.fsd == expected.fsd
    # state_dict holds the sums only: no interval, and it says why.
    assert result.fsd_ci is None and "no per-image rows" in result.ci_note
    assert "state_dict" in result.real.rows_note


class BatchNormSegmenter(torch.nn.Module):
    """A segmenter that is an nn.Module with batch norm, recording its mode at each call."""

    name, weights_id = "bn-demo", "none"

    def __init__(self):
        super().__init__()
        self.inner = ColorSegmenter(32)
        self.class_names, self.preprocessing = self.inner.class_names, self.inner.preprocessing
        self.norm = torch.nn.BatchNorm2d(3)
        self.modes: list[bool] = []

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training or self.norm.training)
        return self.inner.segment(images)


def test_metric_never_enters_train_mode(data):
    real, fake, _, _ = data
    seg = BatchNormSegmenter().eval()
    model = torch.nn.Module()
    model.metric = fsd.FSDMetric(seg)
    model.train()  # a training loop switching its model (and the metric held by it) to training
    assert not seg.training and not seg.norm.training
    seg.norm.train()  # something else flipped the segmenter itself
    model.metric.update(fake[:2], real=False)
    assert seg.modes == [False] and not seg.norm.training
    assert "segmenter" not in dict(model.named_modules()).get("metric")._modules


def test_incompatible_reference_and_bad_images_are_clear_errors(data, tmp_path):
    real, fake, tmp, _ = data
    labels = tmp_path / "labels"
    labels.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(labels / "a.png")
    other = fsd.compute_stats(labels, segmenter=fsd.LabelMapSegmenter(4, ColorSegmenter().class_names),
                              num_workers=0, progress=False)
    with pytest.raises(IncompatibleStatsError, match="segmenter"):
        fsd.FSDMetric(ColorSegmenter(32), real=other)
    metric = fsd.FSDMetric(ColorSegmenter(32))
    bad = fake[:2].clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        metric.update(bad, real=False)
    with pytest.raises(InputError, match=r"\(N, 3, H, W\)"):
        metric.update(fake[0], real=False)
    with pytest.raises(InputError, match="value_range"):
        metric.update(fake * 127.5 + 127.5, real=False)
    assert int(metric.fake_n) == 0  # nothing half-added
    with pytest.raises(InputError, match="RGB"):
        fsd.FSDMetric(fsd.LabelMapSegmenter(3))


def test_uint8_real_images_and_float_fake_images_in_one_metric(tmp_path):
    """uint8 batches pass through whatever value_range says, so one metric takes both kinds."""
    rng = np.random.default_rng(5)
    real_u8 = torch.from_numpy(rng.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8))
    fake = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    metric = fsd.FSDMetric(ColorSegmenter(32))  # default value_range (-1, 1)
    metric.update(real_u8, real=True)
    metric.update(fake, real=False)
    separate = fsd.FSDMetric(ColorSegmenter(32), value_range="uint8")
    separate.update(real_u8, real=True)
    assert np.array_equal(metric.side_stats("real").count_outer_sum, separate.side_stats("real").count_outer_sum)
    assert np.isfinite(metric.compute().fsd)


def test_update_refuses_to_overflow_the_int64_sums_and_large_batches_stay_exact(monkeypatch):
    from fsd import metric as metric_module
    from fsd.stats import max_images

    images = float_images(5, seed=3, height=32, width=32)
    metric = fsd.FSDMetric(ColorSegmenter(32))
    metric.fake_n.fill_(max_images(32 * 32) - 4)
    with pytest.raises(InputError, match=r"the fake side would hold 8,796,093,022,208 images, more than the "
                                         r"8,796,093,022,207 whose sums stay exact in int64"):
        metric.update(images, real=False)
    assert int(metric.fake_n) == max_images(32 * 32) - 4  # nothing was added
    plain = fsd.FSDMetric(ColorSegmenter(32))
    plain.update(images, real=True)
    monkeypatch.setattr(metric_module, "exact_block_weight", lambda largest: 2)  # take the blocked path
    blocked = fsd.FSDMetric(ColorSegmenter(32))
    blocked.update(images, real=True)
    assert torch.equal(blocked.real_count_outer_sum, plain.real_count_outer_sum)
    assert int(blocked.real_count_outer_sum.sum()) == 5 * (32 * 32) ** 2

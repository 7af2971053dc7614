"""Labels do not depend on how the work is split: the UPP architecture (synthetic weights) on fixed
micro-batches gives the same integer sums for any batch size, worker count and input order.

The network runs at 64 x 64 here (it is fully convolutional) so that a few images take seconds; every
run uses the same thread count (one), as the invariance is claimed at equal thread counts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fsd
from fsd.segmenters import upp
from fsd.segmenters.upp import UPPSegmenter, deterministic_algorithms
from tests.conftest import write_folder
from tests.synthetic import synthetic_upp_segmenter

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 64


@pytest.fixture(scope="module")
def segmenter() -> UPPSegmenter:
    return synthetic_upp_segmenter(SIZE)  # small images, same architecture


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("images"), 7, seed=11)


@pytest.fixture(params=[1, 4], ids=["micro-batch 1 (CPU default)", "micro-batch 4 (padded)"])
def micro_batch(request, monkeypatch):
    monkeypatch.setitem(upp.MICRO_BATCH, "cpu", request.param)
    return request.param


def _per_image(stats) -> dict[str, list[int]]:
    rows = stats.rows
    dense = rows.dense()
    return {ident: dense[k].tolist() for k, ident in enumerate(rows.ids)}


def test_sums_do_not_depend_on_batch_size_workers_or_order(segmenter, paths, micro_batch):
    runs = {}
    for batch_size in (1, 5, 32):
        for workers in (0, 2):
            runs[f"batch {batch_size}, {workers} workers"] = fsd.compute_stats(
                [str(p) for p in paths], segmenter=segmenter, batch_size=batch_size, num_workers=workers,
                progress=False)
    runs["reversed, batch 5"] = fsd.compute_stats([str(p) for p in reversed(paths)], segmenter=segmenter,
                                                  batch_size=5, num_workers=0, progress=False)
    reference = runs.pop("batch 1, 0 workers")
    assert reference.n == 7 and np.count_nonzero(reference.count_sum) > 10  # varied labels
    for name, stats in runs.items():
        assert np.array_equal(stats.count_sum, reference.count_sum), name
        assert np.array_equal(stats.count_outer_sum, reference.count_outer_sum), name
        assert _per_image(stats) == _per_image(reference), name


def test_the_network_only_ever_sees_one_shape(segmenter, micro_batch):
    shapes: list[tuple[int, ...]] = []
    hook = segmenter.encoder.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    images = torch.randint(0, 256, (11, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    try:
        labels = {n: segmenter.segment(images[:n]) for n in (1, 5, 11)}
    finally:
        hook.remove()
    assert set(shapes) == {(micro_batch, 3, SIZE, SIZE)}
    assert len(shapes) == sum(-(-n // micro_batch) for n in (1, 5, 11))
    # the padding never reaches the caller, and an image's labels do not depend on its batch
    assert [tuple(v.shape) for v in labels.values()] == [(1, SIZE, SIZE), (5, SIZE, SIZE), (11, SIZE, SIZE)]
    assert torch.equal(labels[5], labels[11][:5]) and torch.equal(labels[1], labels[11][:1])
    assert torch.equal(segmenter.segment(images.flip(0)), labels[11].flip(0))


# ------------------------------------------------------------- deterministic algorithms on CUDA


def _flags():
    cudnn = torch.backends.cudnn
    return (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled())


@pytest.fixture
def restore_flags():
    saved = _flags()
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[0], saved[1]
    torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])


@pytest.mark.parametrize("user", [(False, False, False, False), (True, False, False, False),
                                  (True, True, True, False), (False, False, True, True)])
def test_deterministic_algorithms_are_on_inside_and_the_users_flags_come_back(user, restore_flags):
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = user[0], user[1]
    torch.use_deterministic_algorithms(user[2], warn_only=user[3])
    with deterministic_algorithms():
        assert _flags() == (False, True, True, True)
    assert _flags() == user
    with pytest.raises(RuntimeError, match="failed"):
        with deterministic_algorithms():
            raise RuntimeError("failed")
    assert _flags() == user


@pytest.mark.parametrize("device, precision, deterministic", [
    ("cuda", "float32", True), ("cuda", "bfloat16", False), ("cpu", "float32", False)])
def test_segmenting_on_cuda_in_float32_uses_deterministic_algorithms(segmenter, device, precision, deterministic,
                                                                     restore_flags, monkeypatch):
    # No GPU needed: which settings a call would run under depends only on the device type and precision.
    torch.backends.cudnn.benchmark = True
    monkeypatch.setattr(segmenter, "_device", torch.device(device))
    monkeypatch.setattr(segmenter, "precision", precision)
    with segmenter._numerics():
        inside = _flags()
    assert (inside[:3] == (False, True, True)) is deterministic
    assert torch.backends.cudnn.benchmark is True
    assert segmenter.micro_batch == (1 if device == "cpu" else upp.ACCELERATOR_MICRO_BATCH)

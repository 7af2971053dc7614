"""The fast path's labels equal the naive formulation's; precision modes; float32 flags restored.

Timings are never asserted here (benchmarks/ prints them). The model runs with the synthetic weights of
tests/synthetic.py on two images: a few seconds on a laptop CPU.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from fsd.errors import IncompatibleStatsError, InputError
from fsd.segmenters import upp
from fsd.segmenters.upernet import ResNet50DeepStem, UPerNetDecoder, load_state_dict_checked
from fsd.segmenters.upp import (
    UPPSegmenter,
    float32_math,
    naive_segment,
    channel_independent_kernel,
    upsample_argmax,
    winnable_classes,
)
from fsd.stats import StatsMeta
from tests.synthetic import synthetic_images, synthetic_labels, synthetic_upp_state_dicts, write_upp_weights


def _modules() -> tuple[ResNet50DeepStem, UPerNetDecoder]:
    encoder_sd, decoder_sd = synthetic_upp_state_dicts(seed=0)
    encoder, decoder = ResNet50DeepStem(), UPerNetDecoder()
    load_state_dict_checked(encoder, encoder_sd, "encoder")
    load_state_dict_checked(decoder, decoder_sd, "decoder")
    return encoder, decoder


@pytest.fixture(scope="module")
def segmenter() -> UPPSegmenter:
    return UPPSegmenter(*_modules(), synthetic_labels(), device="cpu")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return synthetic_images(3, 256, seed=5)


@pytest.fixture(scope="module")
def fast_labels(segmenter, images) -> torch.Tensor:
    return segmenter.segment(images)


def reference_labels(logits: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False).argmax(dim=1)


# ------------------------------------------------------------------------- fast path == naive path


def test_fast_path_labels_equal_the_naive_formulation(segmenter, images, fast_labels):
    naive = naive_segment(segmenter, images)  # all heads, full-resolution softmax, as the paper's code
    assert naive.shape == fast_labels.shape == (3, 256, 256)
    assert torch.equal(naive, fast_labels)
    assert len(torch.unique(fast_labels)) > 20  # a varied map, so the equality means something


def test_the_pruned_model_path_equals_the_naive_formulation(images, subset_calls):
    # Random weights keep all 336 classes winnable, so the fast path above never prunes. Here the object
    # classifier holds 8 classes far above the rest, like a trained model on a scene with 8 classes: the
    # class pruning engages on every image, and the labels must still be the naive formulation's.
    encoder, decoder = _modules()
    competing = torch.tensor([0, 1, 4, 9, 57, 150, 222, 335])
    with torch.no_grad():
        bias = decoder.object_head[1].bias
        behind = torch.ones_like(bias, dtype=torch.bool)
        behind[competing] = False
        bias[behind] -= 20.0  # the logits spread over about 8, so these never come near a winner
    seg = UPPSegmenter(encoder, decoder, synthetic_labels(), device="cpu")
    fast = seg.segment(images[:2])
    assert len(subset_calls) == 2 and all(1 <= count <= 8 for count in subset_calls), subset_calls
    assert set(torch.unique(fast).tolist()) <= set(competing.tolist()) and len(torch.unique(fast)) >= 4
    assert torch.equal(fast, naive_segment(seg, images[:2]))


def test_labels_do_not_depend_on_the_input_memory_layout(segmenter, images, fast_labels):
    # Convolutions round differently on channels-last input; a caller's strides must not change labels.
    strided = images.contiguous(memory_format=torch.channels_last)
    assert not strided.is_contiguous()
    assert torch.equal(segmenter.segment(strided), fast_labels)


# ----------------------------------------------------------------------------- upsample + argmax


def _smooth_logits(count: int, classes: int, seed: int, size: int = 64) -> torch.Tensor:
    """A few classes own large smooth regions, the rest trail far behind: like a trained segmenter."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(count, 60, size, size, generator=gen) - 50
    for i in range(count):
        chosen = torch.randperm(60, generator=gen)[:classes]
        fields = torch.randn(1, classes, 4, 4, generator=gen) * 4
        logits[i, chosen] += 50 + F.interpolate(fields, size=(size, size), mode="bicubic", align_corners=False)[0]
    return logits


def _cases() -> dict[str, tuple[torch.Tensor, int]]:
    gen = torch.Generator().manual_seed(0)
    ties = torch.randn(2, 6, 16, 16, generator=gen)
    ties[:, 4] = ties[:, 1]  # exact ties everywhere: the lower index must win
    offset = _smooth_logits(1, 4, seed=3, size=16) * 1e-3 + 1e4  # large magnitude, tiny differences
    return {
        "smooth, few classes": (_smooth_logits(2, 5, seed=1), 256),
        "iid noise": (torch.randn(2, 40, 16, 16, generator=gen), 64),
        "exact ties": (ties, 64),
        "all zero": (torch.zeros(1, 5, 8, 8), 32),
        "quantized values": ((torch.randn(1, 12, 16, 16, generator=gen) * 2).round() / 4, 64),
        "tiny magnitude": (torch.randn(1, 12, 16, 16, generator=gen) * 1e-30, 64),
        "large offset": (offset, 64),
        "scale 1": (_smooth_logits(1, 3, seed=2, size=32), 32),
        "non-integer scale": (_smooth_logits(1, 3, seed=4, size=24), 64),
        "channels-last input": (_smooth_logits(2, 4, seed=5, size=16).contiguous(memory_format=torch.channels_last), 64),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_upsample_argmax_equals_full_upsampling(name):
    logits, size = _cases()[name]
    want = reference_labels(logits.contiguous(), size)
    for prune in (True, False):
        got = upsample_argmax(logits, size, prune_classes=prune)
        assert got.dtype == torch.int64 and got.shape == want.shape
        assert torch.equal(got, want), (name, prune, int((got != want).sum()))


def test_a_class_that_wins_only_between_low_res_pixels_is_kept():
    # Class 2 is never the winner at a low-res pixel, yet wins halfway between the two columns.
    logits = torch.zeros(1, 3, 4, 4)
    logits[0, 0, :, :2], logits[0, 1, :, 2:] = 10.0, 10.0
    logits[0, 2] = 7.0
    assert 2 not in logits.argmax(1)
    want = reference_labels(logits, 16)
    assert 2 in want
    assert winnable_classes(logits, 10.0)[0].tolist() == [True, True, True]
    assert torch.equal(upsample_argmax(logits, 16), want)


def test_pruning_drops_classes_that_cannot_win():
    logits = _smooth_logits(2, 5, seed=1)
    keep = winnable_classes(logits, float(logits.abs().max()))
    assert (keep.sum(dim=1) <= 5).all()  # the 55 trailing classes are dropped (the pruned path runs)
    want = reference_labels(logits, 256)
    for i in range(2):
        assert set(torch.unique(want[i]).tolist()) <= set(keep[i].nonzero().flatten().tolist())


def test_non_finite_logits_take_the_plain_path():
    logits = _smooth_logits(1, 3, seed=6, size=16)
    logits[0, 7, 3, 3] = float("nan")
    logits[0, 9, 5, 5] = float("inf")
    assert torch.equal(upsample_argmax(logits, 64), reference_labels(logits, 64))
    assert upsample_argmax(torch.zeros(0, 4, 8, 8), 32).shape == (0, 32, 32)


@pytest.fixture
def subset_calls(monkeypatch) -> list[int]:
    """The number of classes of every pruned upsampling (`upp._upsample_subset`) while the test runs."""
    calls: list[int] = []
    original = upp._upsample_subset

    def spy(logits, classes, size):
        calls.append(len(classes))
        return original(logits, classes, size)

    monkeypatch.setattr(upp, "_upsample_subset", spy)
    return calls


@pytest.fixture(params=[1, 2], ids=["1 thread", "2 threads"])
def threads(request):
    """PyTorch picks another bilinear kernel for 3 channels at one thread: test at 1 and 2."""
    saved = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(saved)


def _near_ties(survivors: int, side: int, seed: int, channels: int = 336) -> torch.Tensor:
    """Two images whose ``survivors`` leading classes are within a few float32 ulps of each other at every
    position (so rounding decides the argmax nearly everywhere) and whose other classes trail far behind."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, channels, side, side, generator=gen) - 40
    for i in range(2):
        chosen = torch.randperm(channels, generator=gen)[:survivors]
        base = 3 + torch.rand(1, side, side, generator=gen)
        ulps = torch.randint(-3, 4, (survivors, side, side), generator=gen).float()
        logits[i, chosen] = base * (1 + ulps * 2.0**-23)
    return logits


@pytest.mark.parametrize("side", [1, 2, 16], ids=lambda side: f"{side}x{side} map")
@pytest.mark.parametrize("survivors", range(1, 9))
def test_pruned_upsampling_equals_the_full_one_label_for_label(threads, side, survivors, subset_calls):
    logits = _near_ties(survivors, side, seed=100 * side + survivors)
    want = reference_labels(logits, 96)
    if side > 1:
        assert len(torch.unique(want)) >= min(survivors, 2)  # the near-ties really split the pixels
    got = upsample_argmax(logits, 96)
    assert torch.equal(got, want), int((got != want).sum())
    # A 1 x 1 map counts as channels-last: its full resize takes another kernel, so it is never pruned.
    assert subset_calls == ([] if side == 1 else [survivors, survivors])


def test_three_survivors_at_one_thread_equal_the_full_upsampling(subset_calls):
    # The case that failed: with exactly 3 channels at one thread PyTorch resizes with its channels-last
    # kernel, which rounds differently from the channels-first kernel of the full 336-channel map.
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        logits = _near_ties(3, 64, seed=7)
        assert torch.equal(upsample_argmax(logits, 256), reference_labels(logits, 256))
    finally:
        torch.set_num_threads(saved)
    assert subset_calls == [3, 3]


def test_small_outputs_and_few_channels_are_never_pruned(subset_calls):
    # An output of 64 x 64 or less is resized by the channels-last kernel whatever the layout.
    logits = _near_ties(2, 16, seed=3)
    assert torch.equal(upsample_argmax(logits, 64), reference_labels(logits, 64))
    three = _near_ties(1, 16, seed=4, channels=3)
    assert torch.equal(upsample_argmax(three, 96), reference_labels(three, 96))
    assert subset_calls == []
    assert not channel_independent_kernel(336, 16, 16, 64) and channel_independent_kernel(336, 16, 16, 65)
    assert not channel_independent_kernel(336, 1, 1, 256) and channel_independent_kernel(2, 1, 1, 256)


# ------------------------------------------------------------------------------- precision modes


def test_precision_is_validated_and_recorded():
    encoder, decoder = _modules()
    with pytest.raises(InputError, match="precision must be one of 'float32', 'bfloat16', 'float16', 'tf32'"):
        UPPSegmenter(encoder, decoder, synthetic_labels(), device="cpu", precision="fp8")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="precision='float16' is not available on cpu"):
        UPPSegmenter(encoder, decoder, synthetic_labels(), device="cpu", precision="float16")
    with pytest.warns(UserWarning, match="precision='tf32' has no effect on cpu"):
        tf32 = UPPSegmenter(encoder, decoder, synthetic_labels(), device="cpu", precision="tf32")
    assert tf32.precision == "float32" and tf32.weights_id == "upp-resnet50-upernet/epoch_40"
    bf16 = UPPSegmenter(encoder, decoder, synthetic_labels(), device="cpu", weights_id="w/1", precision="bfloat16")
    assert bf16.precision == "bfloat16" and bf16.weights_id == "w/1+bf16"


def test_reduced_precision_statistics_refuse_float32_ones(segmenter):
    def meta(weights_id: str) -> StatsMeta:
        return StatsMeta(tuple(segmenter.class_names), segmenter.name, weights_id,
                         segmenter.preprocessing.describe(), "0")

    with pytest.raises(IncompatibleStatsError, match=r"different weights: .*'upp-resnet50-upernet/epoch_40\+bf16'"):
        meta(segmenter.weights_id).check_comparable(meta(segmenter.weights_id + "+bf16"))


def test_from_folder_and_from_pretrained_pass_precision(tmp_path):
    folder = write_upp_weights(tmp_path, seed=0)
    seg = UPPSegmenter.from_folder(folder, device="cpu", precision="bfloat16")
    assert seg.weights_id == "upp-resnet50-upernet/epoch_40+bf16"
    seg = UPPSegmenter.from_pretrained(weights_dir=tmp_path, device="cpu", progress=False, precision="bfloat16")
    assert seg.precision == "bfloat16" and seg.weights_id.endswith("+bf16")


def test_bfloat16_runs_in_bfloat16_channels_last(images, fast_labels):
    seg = UPPSegmenter(*_modules(), synthetic_labels(), device="cpu", precision="bfloat16")
    assert seg.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    seen: list[torch.dtype] = []
    hook = seg.decoder.object_head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    try:
        labels = seg.segment(images)
    finally:
        hook.remove()
    assert seen == [torch.bfloat16] * 3  # on CPU the network runs on micro-batches of one image
    assert labels.dtype == torch.int64 and labels.shape == fast_labels.shape
    # Random weights amplify rounding about 100-fold (benchmarks/README.md), so bfloat16 moves many labels;
    # far above chance agreement shows the same model ran, below 1 that the reduced precision was in effect.
    agreement = float((labels == fast_labels).double().mean())
    assert 0.2 < agreement < 1.0


# ------------------------------------------------------------------------ float32 flags on the GPU


_LEAVES = ("cudnn.conv", "cuda.matmul", "mkldnn.conv", "mkldnn.matmul")


def _leaf(name: str):
    obj = torch.backends
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _precisions() -> dict[str, str]:
    return {name: _leaf(name).fp32_precision for name in _LEAVES}


needs_new_api = pytest.mark.skipif(upp._fp32_precision_leaves() is None, reason="PyTorch < 2.9")


@pytest.fixture
def restore_flags():
    saved = _precisions() if upp._fp32_precision_leaves() is not None else {}
    yield
    for name, value in saved.items():
        _leaf(name).fp32_precision = value


@needs_new_api
@pytest.mark.parametrize("user", [
    {},  # PyTorch's defaults: TF32 allowed for cuDNN convolutions
    {"cudnn.conv": "ieee", "cuda.matmul": "tf32"},
    {"mkldnn.conv": "bf16", "mkldnn.matmul": "bf16", "cuda.matmul": "none"},
])
def test_segment_computes_in_float32_and_restores_the_flags(segmenter, images, fast_labels, user, restore_flags):
    for name, value in user.items():
        _leaf(name).fp32_precision = value
    before = _precisions()
    inside: list[dict[str, str]] = []
    hook = segmenter.encoder.register_forward_pre_hook(lambda module, args: inside.append(_precisions()))
    try:
        labels = segmenter.segment(images[:1])
    finally:
        hook.remove()
    assert inside == [{"cudnn.conv": "ieee", "cuda.matmul": "ieee", "mkldnn.conv": "ieee", "mkldnn.matmul": "ieee"}]
    assert _precisions() == before
    assert torch.equal(labels[0], fast_labels[0])


@needs_new_api
def test_flags_are_restored_when_the_network_fails(segmenter, images, restore_flags):
    before = _precisions()

    def fail(module, args):
        raise RuntimeError("out of memory, say")

    hook = segmenter.encoder.register_forward_pre_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="out of memory"):
            segmenter.segment(images[:1])
    finally:
        hook.remove()
    assert _precisions() == before


@needs_new_api
def test_float32_math_allows_tf32_only_on_request(restore_flags):
    before = _precisions()
    with float32_math(allow_tf32=True):
        assert _precisions() == {"cudnn.conv": "tf32", "cuda.matmul": "tf32", "mkldnn.conv": "ieee",
                                 "mkldnn.matmul": "ieee"}
    assert _precisions() == before


def test_float32_math_with_the_legacy_flags(monkeypatch):
    monkeypatch.setattr(upp, "_fp32_precision_leaves", lambda: None)  # as on PyTorch < 2.9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = (torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
        try:
            torch.backends.cudnn.allow_tf32 = True
            torch.set_float32_matmul_precision("medium")
            with float32_math(allow_tf32=False):
                assert torch.backends.cudnn.allow_tf32 is False
                assert torch.get_float32_matmul_precision() == "highest"
            assert torch.backends.cudnn.allow_tf32 is True
            assert torch.get_float32_matmul_precision() == "medium"
            with float32_math(allow_tf32=True):
                assert torch.backends.cudnn.allow_tf32 is True
                assert torch.get_float32_matmul_precision() == "high"
            assert torch.get_float32_matmul_precision() == "medium"
        finally:
            torch.backends.cudnn.allow_tf32 = saved[0]
            torch.set_float32_matmul_precision(saved[1])

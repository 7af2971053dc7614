"""`UPPSegmenter`: the paper's segmenter (Unified Perceptual Parsing, ResNet-50 + UPerNet, epoch 40).

Only the object head is evaluated: FSD counts the argmax over its 336 classes at 256 x 256.

Precision. The default, ``precision="float32"``, is really float32 everywhere: TF32 (which PyTorch
enables for cuDNN convolutions by default) and reduced-precision oneDNN modes are switched off while
the network runs, and the user's settings are restored afterwards. ``"tf32"`` (NVIDIA Ampere or newer),
``"bfloat16"`` and ``"float16"`` (autocast) are opt-in speed modes whose labels differ from float32;
their statistics carry a ``weights_id`` suffix (``+tf32``, ``+bf16``, ``+fp16``), so they are never
compared with float32 statistics by mistake. benchmarks/README.md has the measured speed and deviation.

Invariance. The network always runs on micro-batches of `MICRO_BATCH` images (1 on CPU, 32 on GPUs; the last
one padded), and on CUDA in float32 with cuDNN autotuning off and deterministic algorithms on
(`deterministic_algorithms`). So an image's labels are the same whatever the batch size, the number of
loader workers or processes, the shard, and the image's place in the input. They do depend on the CPU
thread count, on CPU vs GPU, on the GPU model and on library versions (README, "What is reproducible").

>>> seg = UPPSegmenter.from_pretrained()                       # doctest: +SKIP
>>> labels = seg.segment(images_uint8)                         # doctest: +SKIP
>>> class_percentages(labels, seg.num_classes).shape           # doctest: +SKIP
torch.Size([8, 336])
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from fsd.errors import InputError
from fsd.segmenters.base import PAPER_PREPROCESSING, Preprocessing
from fsd.checkpoints import read_state_dict
from fsd.devices import default_device
from fsd.segmenters.upernet import (
    HeadSizes,
    ResNet50DeepStem,
    UPerNetDecoder,
    load_state_dict_checked,
)
from fsd.hub import fetch
# The declared files and their checks live with the declaration; the segmenter only loads them.
from fsd.segmenters.weights import (  # noqa: F401 (file names and label checks, re-exported)
    DECODER_FILE,
    ENCODER_FILE,
    LABEL_KEYS,
    LABELS_FILE,
    UPP_NAME,
    UPP_WEIGHTS,
    read_labels,
    validate_labels,
)

UPP_WEIGHTS_ID = "upp-resnet50-upernet/epoch_40"
# The paper's code feeds Caffe-style input: BGR order, 0..255, these means subtracted, no std.
BGR_MEANS = (102.9801, 115.9465, 122.7717)
# Upsampled 336-channel logits cost 88 MB per image in float32; bound the batch of that step.
_UPSAMPLE_BYTES = 256 * 2**20

Precision = Literal["float32", "bfloat16", "float16", "tf32"]
PRECISIONS: tuple[str, ...] = ("float32", "bfloat16", "float16", "tf32")
# Appended to weights_id: statistics made in a reduced precision never compare equal to float32 ones.
PRECISION_SUFFIXES = {"float32": "", "bfloat16": "+bf16", "float16": "+fp16", "tf32": "+tf32"}
_AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
# The network always runs on micro-batches of exactly this many images (the last one padded), whatever the
# caller's batch: kernels then never see a shape that depends on how the work was split, so an image's
# labels do not depend on the batch size, the worker or process count, the shard or its place in a batch.
# CPU: 1, measured on a 2-core EPYC (8 images, median of 3 interleaved runs): 1.47 img/s at 1, 1.49 at 2,
# 1.16 for encoder 8 + decoder 2; 1 never pads. GPUs: 32, the default batch of the API and the CLI.
MICRO_BATCH = {"cpu": 1}
ACCELERATOR_MICRO_BATCH = 32


def _fp32_precision_leaves() -> list[object] | None:
    """The per-backend float32 precision settings of PyTorch >= 2.9 (None on older versions)."""
    backends = torch.backends
    leaves = [
        getattr(getattr(backends, "cudnn", None), "conv", None),
        getattr(getattr(backends, "cuda", None), "matmul", None),
        getattr(getattr(backends, "mkldnn", None), "conv", None),
        getattr(getattr(backends, "mkldnn", None), "matmul", None),
    ]
    if not all(leaf is not None and hasattr(leaf, "fp32_precision") for leaf in leaves):
        return None
    return leaves


@contextmanager
def float32_math(allow_tf32: bool) -> Iterator[None]:
    """Run float32 convolutions and matmuls in true float32 (``allow_tf32=False``) or allow TF32 on NVIDIA
    GPUs (``True``); oneDNN (CPU) stays float32 either way. The global flags are restored on exit.

    PyTorch allows TF32 for cuDNN convolutions by default, so without this an Ampere+ GPU would not
    compute the paper's float32 labels.
    """
    leaves = _fp32_precision_leaves()
    if leaves is not None:
        # The new API; reading the legacy allow_tf32 flags can raise once a user has set this one.
        saved = [leaf.fp32_precision for leaf in leaves]
        cudnn_conv, cuda_matmul, mkldnn_conv, mkldnn_matmul = leaves
        gpu = "tf32" if allow_tf32 else "ieee"
        try:
            cudnn_conv.fp32_precision = gpu
            cuda_matmul.fp32_precision = gpu
            mkldnn_conv.fp32_precision = "ieee"
            mkldnn_matmul.fp32_precision = "ieee"
            yield
        finally:
            for leaf, value in zip(leaves, saved):
                leaf.fp32_precision = value
        return
    saved_cudnn = torch.backends.cudnn.allow_tf32
    saved_matmul = torch.get_float32_matmul_precision()
    try:
        torch.backends.cudnn.allow_tf32 = allow_tf32
        torch.set_float32_matmul_precision("high" if allow_tf32 else "highest")
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved_cudnn
        torch.set_float32_matmul_precision(saved_matmul)


@contextmanager
def algorithm_choice(autotune: bool, deterministic: bool) -> Iterator[None]:
    """``cudnn.benchmark = autotune``; cuDNN's deterministic convolutions and PyTorch's deterministic
    algorithms (``warn_only``) on or off with ``deterministic``; the user's settings restored on exit."""
    cudnn = torch.backends.cudnn
    saved = (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        cudnn.benchmark, cudnn.deterministic = autotune, deterministic
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        yield
    finally:
        cudnn.benchmark, cudnn.deterministic = saved[0], saved[1]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])


@contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """cuDNN autotuning off, deterministic cuDNN convolutions and PyTorch's deterministic algorithms on;
    the user's settings restored on exit.

    Autotuning (``cudnn.benchmark``) times several convolution algorithms on the first call of each shape
    and keeps the fastest, so two runs, or two processes, could compute one image with different
    algorithms. ``warn_only``: an operation without a deterministic implementation warns instead of failing
    a run. PyTorch also warns that cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` for determinism; that concerns
    work spread over several CUDA streams, and segmentation runs on one, so that one warning is silenced.
    """
    with algorithm_choice(autotune=False, deterministic=True), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*CUBLAS_WORKSPACE_CONFIG")
        yield


def _bilinear(logits: torch.Tensor, size: int) -> torch.Tensor:
    """The one bilinear resize both paths use: contiguous NCHW in, ``F.interpolate`` with align_corners=False."""
    return F.interpolate(logits.contiguous(), size=(size, size), mode="bilinear", align_corners=False)


def _upsample_argmax_full(logits: torch.Tensor, size: int, out: torch.Tensor) -> None:
    """``out[:] = argmax_c bilinear_upsample(logits)``, the upsampled batch bounded by `_UPSAMPLE_BYTES`."""
    chunk = max(1, _UPSAMPLE_BYTES // (logits.shape[1] * size * size * logits.element_size()))
    for start in range(0, logits.shape[0], chunk):
        out[start : start + chunk] = _bilinear(logits[start : start + chunk], size).argmax(dim=1)


def channel_independent_kernel(channels: int, height: int, width: int, size: int) -> bool:
    """Whether PyTorch's CPU bilinear resize of a contiguous float ``(N, channels, height, width)`` map to
    ``size`` x ``size`` takes its channels-first kernel, which computes every output value alone, by the
    same arithmetic whatever the number of channels and threads.

    The rule is PyTorch's (``upsample_bilinear2d_kernel_impl_float`` in ATen's cpu/UpSampleKernel.cpp, read
    for 2.14): the channels-last kernel runs instead when the input counts as channels-last contiguous and
    has more than 3 channels (every ``(N, C, 1, 1)`` map does), when the output's height + width is at most
    128, or at one thread with exactly 3 channels. That kernel vectorizes across channels and sums the last
    ``channels % vector width`` of them in another order, so there a class's upsampled values depend on
    which and how many classes are resized with it (3 of 336 channels at one thread: 1.9e-6 apart, labels
    changed at near-ties).
    """
    counts_as_channels_last = channels == 1 or height * width == 1
    return not (
        (counts_as_channels_last and channels > 3)
        or 2 * size <= 128
        or (torch.get_num_threads() == 1 and channels == 3)
    )


def winnable_classes(logits: torch.Tensor, magnitude: float) -> torch.Tensor:
    """``(N, C)`` bool: the classes that can be the argmax somewhere after bilinear resizing
    (align_corners=False) of the finite ``(N, C, h, w)`` float logits; ``magnitude`` bounds their absolute
    values. Every other class stays below some other class at every output pixel by a margin far above
    float rounding, so dropping it cannot change a label.

    Why: an output pixel interpolates a square of at most 2 x 2 adjacent low-res positions, all inside the
    3 x 3 neighbourhood of each of them. So there, the class winning at any of those positions ``r`` scores
    at least ``floor(r)``, that class's minimum over the neighbourhood of ``r``; a class that wins the pixel
    must reach ``floor(r) - tol`` at the source ``r`` where it is largest.
    """
    n, _, h, w = logits.shape
    tol = 1e-5 * magnitude + 1e-30  # float32 rounding moves an interpolated value by < 1e-6 * magnitude
    device = logits.device
    offsets = torch.arange(-1, 2, device=device)
    rows = (torch.arange(h, device=device).unsqueeze(1) + offsets).clamp(0, h - 1)
    cols = (torch.arange(w, device=device).unsqueeze(1) + offsets).clamp(0, w - 1)
    winner = logits.argmax(dim=1)
    around = logits[
        torch.arange(n, device=device).view(n, 1, 1, 1, 1),
        winner.view(n, h, w, 1, 1),
        rows.view(1, h, 1, 3, 1),
        cols.view(1, 1, w, 1, 3),
    ]
    floor = around.amin(dim=(3, 4))
    return (logits >= (floor - tol).unsqueeze(1)).flatten(2).any(dim=2)


def _upsample_subset(logits: torch.Tensor, classes: torch.Tensor, size: int) -> torch.Tensor:
    """Labels ``(size, size)`` of one image ``(1, C, h, w)`` from the ascending ``classes`` alone.

    Three channels would switch PyTorch to another kernel at one thread (`channel_independent_kernel`), so
    a third class is resized as four channels, the last one repeated; a repeat never wins an argmax
    (ties go to the first index), and any label it could give maps back to the same class anyway.
    """
    width = 4 if len(classes) == 3 else len(classes)
    padded = torch.cat([classes, classes[-1:].expand(width - len(classes))])
    subset = logits.index_select(1, padded)
    assert channel_independent_kernel(width, *logits.shape[2:], size)  # upsample_argmax checked the full map
    return padded[_bilinear(subset, size)[0].argmax(dim=0)]


def upsample_argmax(logits: torch.Tensor, size: int, prune_classes: bool = True) -> torch.Tensor:
    """int64 ``(N, size, size)`` labels: ``F.interpolate(logits, (size, size), bilinear,
    align_corners=False).argmax(1)`` of the contiguous map, identical label for label.

    With ``prune_classes``, on CPU, only the classes that `winnable_classes` keeps are upsampled, in
    ascending order so that ties still go to the lowest index. That skips most of the work when an image
    holds few classes, as a trained segmenter's maps do. Pruning runs only where the result is provably
    the full one's: finite float logits of at least 4 classes whose resize takes PyTorch's channels-first
    kernel (`channel_independent_kernel`: outputs larger than 64 x 64 from maps larger than 1 x 1), where a
    class's upsampled values do not depend on the other channels. Everything else, and every image where
    more than half the classes survive (random weights), takes the plain path.
    """
    logits = logits.contiguous()  # F.interpolate rounds differently for channels-last tensors
    n, channels, h, w = logits.shape
    labels = torch.empty((n, size, size), dtype=torch.int64, device=logits.device)
    if n == 0:
        return labels
    prune = (
        prune_classes
        and logits.is_floating_point()
        and logits.device.type == "cpu"
        and channels >= 4
        and channel_independent_kernel(channels, h, w, size)
    )
    if prune:
        low, high = (float(v) for v in torch.aminmax(logits))
        prune = math.isfinite(low) and math.isfinite(high)  # NaN and infinity take the plain path
    if not prune:
        _upsample_argmax_full(logits, size, labels)
        return labels
    keep = winnable_classes(logits, max(abs(low), abs(high)))
    counts = keep.sum(dim=1).tolist()
    crowded = [i for i, count in enumerate(counts) if 2 * count > channels]
    if len(crowded) == n:
        _upsample_argmax_full(logits, size, labels)
        return labels
    if crowded:
        index = torch.tensor(crowded, device=logits.device)
        crowded_labels = torch.empty((len(crowded), size, size), dtype=torch.int64, device=logits.device)
        _upsample_argmax_full(logits.index_select(0, index), size, crowded_labels)
        labels[index] = crowded_labels
    for i, count in enumerate(counts):
        if 2 * count <= channels:
            labels[i] = _upsample_subset(logits[i : i + 1], keep[i].nonzero().flatten(), size)
    return labels


class UPPSegmenter:
    """The paper's segmenter behind the `fsd.segmenters.base.Segmenter` protocol.

    ``segment(images)``: uint8 ``(N, 3, 256, 256)`` RGB -> int64 object labels ``(N, 256, 256)``
    in ``[0, 336)`` on ``self.device``.

    ``precision``: ``"float32"`` (default, the paper's numbers), or an opt-in speed mode: ``"tf32"``
    (NVIDIA Ampere or newer; elsewhere it computes float32 and warns), ``"bfloat16"``, ``"float16"`` (not
    on CPU, where it is far slower than float32). A reduced precision appends its suffix to ``weights_id``.
    """

    name: str = UPP_NAME
    preprocessing: Preprocessing = PAPER_PREPROCESSING

    def __init__(
        self,
        encoder: ResNet50DeepStem,
        decoder: UPerNetDecoder,
        labels: Mapping,
        device: torch.device | str | None = None,
        weights_id: str = UPP_WEIGHTS_ID,
        precision: Precision = "float32",
    ):
        self.labels = validate_labels(labels, decoder.heads, "labels")
        self.class_names: list[str] = list(self.labels["object"])
        try:
            self._device = torch.device(device) if device is not None else default_device()
        except (RuntimeError, TypeError) as exc:
            raise InputError(
                f"device {device!r} is not a torch device (use e.g. 'cpu', 'cuda', 'cuda:1', 'mps')"
            ) from exc
        self.precision: Precision = self._check_precision(precision)
        self.weights_id = weights_id + PRECISION_SUFFIXES[self.precision]
        # Reduced precision runs channels-last: measured 1.5x faster than NCHW under bfloat16 autocast on CPU.
        self._memory_format = torch.channels_last if self.precision in _AUTOCAST_DTYPES else torch.contiguous_format
        self.encoder = encoder.to(self._device, memory_format=self._memory_format).eval()
        self.decoder = decoder.to(self._device, memory_format=self._memory_format).eval()
        self._means = torch.tensor(BGR_MEANS, dtype=torch.float32, device=self._device).view(1, 3, 1, 1)

    def _check_precision(self, precision: object) -> Precision:
        if precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}; got {precision!r}")
        kind = self._device.type
        if precision == "float16" and kind == "cpu":
            raise InputError(
                "precision='float16' is not available on cpu (CPUs without native float16 convolutions run it "
                "far slower than float32); use 'float32', or 'bfloat16' on a CPU with native bfloat16"
            )
        if precision == "tf32" and kind != "cuda":
            warnings.warn(
                f"precision='tf32' has no effect on {kind} (TF32 exists on NVIDIA GPUs from Ampere on); "
                "computing in float32",
                stacklevel=3,
            )
            return "float32"
        return precision  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def device(self) -> torch.device:
        return self._device

    @classmethod
    def from_folder(
        cls,
        folder: Path | str,
        *,
        device: torch.device | str | None = None,
        weights_id: str = UPP_WEIGHTS_ID,
        precision: Precision = "float32",
    ) -> UPPSegmenter:
        """Load ``encoder_epoch_40.pth``, ``decoder_epoch_40.pth`` and ``labels.json`` from ``folder``."""
        folder = Path(folder)
        heads = HeadSizes()
        labels = read_labels(folder / LABELS_FILE, heads)
        encoder = ResNet50DeepStem()
        encoder_path = folder / ENCODER_FILE
        load_state_dict_checked(encoder, read_state_dict(encoder_path, str(encoder_path)), str(encoder_path))
        decoder = UPerNetDecoder(heads)
        decoder_path = folder / DECODER_FILE
        load_state_dict_checked(decoder, read_state_dict(decoder_path, str(decoder_path)), str(decoder_path))
        return cls(encoder, decoder, labels, device=device, weights_id=weights_id, precision=precision)

    @classmethod
    def from_pretrained(
        cls,
        *,
        weights_dir: Path | str | None = None,
        device: torch.device | str | None = None,
        progress: bool = True,
        precision: Precision = "float32",
    ) -> UPPSegmenter:
        """Fetch the published files (or find them in ``weights_dir``) and load them."""
        folder = fetch(UPP_WEIGHTS, weights_dir=weights_dir, progress=progress)
        return cls.from_folder(folder, device=device, weights_id=UPP_WEIGHTS_ID, precision=precision)

    def _check_images(self, images: object) -> torch.Tensor:
        size = self.preprocessing.size
        if not isinstance(images, torch.Tensor):
            raise InputError(f"segment: images must be a torch.Tensor, got {type(images).__name__}")
        if images.dtype != torch.uint8:
            raise InputError(
                f"segment: images must be uint8 (0..255), got {images.dtype}; "
                "quantize generator output first, e.g. ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)"
            )
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise InputError(
                f"segment: images must have shape (N, 3, {size}, {size}), got {tuple(images.shape)}; "
                f"resize and center-crop them as {self.preprocessing.describe()}"
            )
        return images

    def network_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 RGB -> the network's float32 input on ``self.device``: BGR, 0..255, means subtracted.

        Always contiguous (NCHW): convolutions round differently on channels-last input, and the labels
        must not depend on the memory layout of the caller's tensor.
        """
        return (images.to(self._device).float().flip(1) - self._means).contiguous()

    def _autocast(self) -> AbstractContextManager:
        dtype = _AUTOCAST_DTYPES.get(self.precision)
        return torch.autocast(self._device.type, dtype=dtype) if dtype is not None else nullcontext()

    @property
    def micro_batch(self) -> int:
        """How many images the network runs on at a time, always (`MICRO_BATCH`)."""
        return MICRO_BATCH.get(self._device.type, ACCELERATOR_MICRO_BATCH)

    @contextmanager
    def _numerics(self) -> Iterator[None]:
        """The float settings of one `segment` call: true float32 (or TF32 on request) and, on CUDA in
        float32, deterministic algorithms without cuDNN autotuning; the user's settings restored after."""
        with float32_math(allow_tf32=self.precision == "tf32"):
            if self._device.type == "cuda" and self.precision == "float32":
                with deterministic_algorithms():
                    yield
            else:
                yield

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 RGB ``(N, 3, 256, 256)`` on any device -> int64 labels ``(N, 256, 256)`` on ``self.device``.

        The network runs on fixed micro-batches of `micro_batch` images, the last one padded with
        zeros, so each image's labels are the same however the caller batches the images.
        """
        images = self._check_images(images)
        size = self.preprocessing.size
        count = images.shape[0]
        # Allocated outside inference mode so that callers may modify the result in place.
        labels = torch.empty((count, size, size), dtype=torch.int64, device=self._device)
        step = self.micro_batch
        with self._numerics(), torch.inference_mode():
            for start in range(0, count, step):
                x = self.network_input(images[start : start + step])
                real = x.shape[0]
                if real < step:
                    x = torch.cat([x, x.new_zeros((step - real, *x.shape[1:]))])
                with self._autocast():
                    features = self.encoder(x.contiguous(memory_format=self._memory_format))
                    logits = self.decoder.forward_object(features)
                # Upsampling and argmax in float32 always: bfloat16 logits would tie classes that differ.
                # No softmax: it is monotonic and cannot change the argmax. Each output value of the
                # upsampling is computed alone, so the padding can be cut off before it.
                labels[start : start + real] = upsample_argmax(
                    logits[:real].float(), size, prune_classes=self._device.type == "cpu"
                )
        return labels


def naive_segment(segmenter: UPPSegmenter, images: torch.Tensor, paper_outputs: bool = True) -> torch.Tensor:
    """The straightforward float32 formulation, the way the paper's code runs the model: all four heads,
    logits upsampled to full resolution, softmax, argmax of the object head. With ``paper_outputs`` the
    material and part heads are also turned into full-resolution probabilities (parts per owning object),
    as the paper's segmenter does although FSD never reads them. The benchmarks' yardstick, and the
    reference the fast path must equal label for label."""
    images = segmenter._check_images(images)
    size = (segmenter.preprocessing.size,) * 2
    with float32_math(allow_tf32=False), torch.no_grad():
        outputs = segmenter.decoder(segmenter.encoder(segmenter.network_input(images)))
        objects = F.softmax(F.interpolate(outputs.object, size=size, mode="bilinear", align_corners=False), dim=1)
        if paper_outputs:
            F.softmax(F.interpolate(outputs.material, size=size, mode="bilinear", align_corners=False), dim=1)
            parts = F.interpolate(outputs.part, size=size, mode="bilinear", align_corners=False)
            for owner_parts in parts.split([len(p) for p in segmenter.labels["object_part"].values()], dim=1):
                F.softmax(owner_parts, dim=1)
        return objects.argmax(dim=1)

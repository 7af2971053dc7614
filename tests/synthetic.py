"""Synthetic stand-ins for the paper's segmenter files, for tests.

`write_upp_weights` writes ``encoder_epoch_40.pth``, ``decoder_epoch_40.pth`` and ``labels.json``
in the official layout, with random weights of the exact architecture. Batch-norm statistics are
calibrated on a few synthetic images, so activations stay well scaled through the network and
the object argmax varies from pixel to pixel and image to image (a label map that is one class
everywhere would make end-to-end tests meaningless). Files are generated once per
(seed, flags) per process and copied, because building them costs seconds.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from fsd.segmenters.base import Preprocessing
from fsd.segmenters.upernet import HeadSizes, ResNet50DeepStem, UPerNetDecoder, load_state_dict_checked

UPP_DIRNAME = "upp-resnet50-upernet"
ENCODER_FILE = "encoder_epoch_40.pth"
DECODER_FILE = "decoder_epoch_40.pth"
LABELS_FILE = "labels.json"

_FIRST_OBJECTS = ["wall", "sky", "floor", "tree", "building", "person", "road", "grass", "ceiling", "car"]
_PARTS_PER_OWNER = 7  # 61 owners x 7 parts (each list starting with "-") = 427 part channels


def synthetic_labels(heads: HeadSizes = HeadSizes()) -> dict:
    """A labels.json-shaped dict whose lengths fit ``heads`` (the paper's sizes by default)."""
    objects = ["-"] + _FIRST_OBJECTS[: heads.object - 1]
    objects += [f"class_{i}" for i in range(len(objects), heads.object)]
    materials = ["-"] + [f"material_{i}" for i in range(1, heads.material)]
    scenes = [f"scene_{i}" for i in range(heads.scene)]
    part_names = ["-"] + [f"part_{i}" for i in range(1, 153)]
    object_part: dict[str, list[str]] = {}
    remaining = heads.part
    owner_index = 1
    while remaining > 0:
        if owner_index >= len(objects):
            raise ValueError(f"cannot spread {heads.part} part channels over {heads.object} objects")
        count = min(_PARTS_PER_OWNER, remaining)
        object_part[objects[owner_index]] = ["-"] + [
            part_names[1 + (owner_index * 5 + k) % (len(part_names) - 1)] for k in range(count - 1)
        ]
        remaining -= count
        owner_index += 1
    return {
        "object": objects,
        "material": materials,
        "scene": scenes,
        "part": part_names,
        "object_part": object_part,
    }


def synthetic_images(count: int, size: int, seed: int) -> torch.Tensor:
    """Photo-like uint8 ``(count, 3, size, size)``: colour gradients and waves plus noise of random strength."""
    gen = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, size).view(1, 1, size, 1)
    xs = torch.linspace(0, 1, size).view(1, 1, 1, size)
    a = torch.rand(count, 3, 1, 1, generator=gen)
    b = torch.rand(count, 3, 1, 1, generator=gen)
    c = torch.rand(count, 3, 1, 1, generator=gen) * 6
    base = 255 * (a * ys + b * xs + 0.3 * torch.sin(c * (xs + ys) * 3.14159)) / 1.6
    noise = torch.rand(count, 1, 1, 1, generator=gen) * 80 * torch.randn(count, 3, size, size, generator=gen)
    return (base + noise).clamp(0, 255).to(torch.uint8)


def _paper_input(images: torch.Tensor) -> torch.Tensor:
    means = torch.tensor([102.9801, 115.9465, 122.7717]).view(1, 3, 1, 1)
    return images.float().flip(1) - means


def _randomize(module: nn.Module, gen: torch.Generator) -> None:
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            fan_in = sub.in_channels * sub.kernel_size[0] * sub.kernel_size[1]
            sub.weight.data = torch.randn(sub.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5
            if sub.bias is not None:
                sub.bias.data = 0.05 * torch.randn(sub.bias.shape, generator=gen)
        elif isinstance(sub, nn.BatchNorm2d):
            sub.weight.data = 0.5 + torch.rand(sub.weight.shape, generator=gen)
            sub.bias.data = 0.2 * torch.randn(sub.bias.shape, generator=gen)
            sub.momentum = None  # cumulative average over the calibration batches
            sub.reset_running_stats()


@lru_cache(maxsize=2)
def _state_dicts(seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        encoder, decoder = ResNet50DeepStem(), UPerNetDecoder()
    encoder.to_empty(device="cpu")
    decoder.to_empty(device="cpu")
    _randomize(encoder, gen)
    _randomize(decoder, gen)
    encoder.train()
    decoder.train()
    classifiers = [decoder.object_head[1], decoder.part_head[1], decoder.material_head[1], decoder.scene_head[2]]
    classifier_inputs: dict[nn.Module, torch.Tensor] = {}
    hooks = [
        conv.register_forward_pre_hook(lambda module, args: classifier_inputs.__setitem__(module, args[0]))
        for conv in classifiers
    ]
    with torch.no_grad():
        # Train-mode BN records the batch statistics, so activations stay normalized in eval mode.
        decoder.forward(encoder(_paper_input(synthetic_images(4, 96, seed))))
        # Centre each class's logit on the calibration images: the argmax then follows the
        # features from pixel to pixel instead of one class winning everywhere.
        for conv in classifiers:
            mean_input = classifier_inputs[conv].mean(dim=(0, 2, 3))
            centre = conv.weight.flatten(1) @ mean_input
            conv.bias.copy_(0.05 * torch.randn(centre.shape, generator=gen) - centre)
    for hook in hooks:
        hook.remove()
    for sub in list(encoder.modules()) + list(decoder.modules()):
        if isinstance(sub, nn.BatchNorm2d):
            sub.momentum = 0.1
            # Channels that barely vary on four small images would blow up on other images.
            sub.running_var += 0.1 * sub.running_var.mean()
    return encoder.state_dict(), decoder.state_dict()


def synthetic_upp_state_dicts(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(encoder, decoder) state dicts as a model of this package saves them (no SyncBN buffers).

    Fresh dicts each call; the tensors are shared across calls, so do not modify them in place.
    """
    encoder, decoder = _state_dicts(seed)
    return dict(encoder), dict(decoder)


def synthetic_upp_segmenter(size: int | None = None, seed: int = 0, device: str | torch.device = "cpu",
                            precision: str = "float32"):
    """The UPP segmenter (the exact architecture) with synthetic weights (weights id ``synthetic/<seed>``).

    ``size`` replaces the paper's 256 x 256 input by ``size x size`` (the network is fully
    convolutional), so that a few images take seconds.
    """
    from fsd.segmenters.upp import UPPSegmenter  # the segmenter module imports torchvision

    encoder_sd, decoder_sd = synthetic_upp_state_dicts(seed)
    encoder, decoder = ResNet50DeepStem(), UPerNetDecoder()
    load_state_dict_checked(encoder, encoder_sd, "synthetic encoder")
    load_state_dict_checked(decoder, decoder_sd, "synthetic decoder")
    seg = UPPSegmenter(encoder, decoder, synthetic_labels(), device=device, weights_id=f"synthetic/{seed}",
                       precision=precision)  # type: ignore[arg-type]
    if size is not None:
        seg.preprocessing = Preprocessing("rgb", size, "bilinear")
    return seg


def official_layout(state_dict: dict[str, torch.Tensor], syncbn_buffers: bool, num_batches_tracked: bool) -> dict:
    """``state_dict`` rewritten as the published files hold it: SyncBN buffers after each BN's
    running_var, and optionally without ``num_batches_tracked``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith(".num_batches_tracked"):
            if num_batches_tracked:
                out[key] = value
            continue
        out[key] = value
        if syncbn_buffers and key.endswith(".running_var"):
            bn = key[: -len(".running_var")]
            out[f"{bn}._tmp_running_mean"] = torch.zeros_like(value)
            out[f"{bn}._tmp_running_var"] = torch.ones_like(value)
            out[f"{bn}._running_iter"] = torch.ones(1)
    return out


_CACHE_ROOT: Path | None = None
_CACHED: dict[tuple[int, bool, bool, bool], Path] = {}


def _cache_root() -> Path:
    global _CACHE_ROOT
    if _CACHE_ROOT is None:
        _CACHE_ROOT = Path(tempfile.mkdtemp(prefix="fsd-synthetic-upp-"))
        atexit.register(shutil.rmtree, _CACHE_ROOT, True)
    return _CACHE_ROOT


def _write(folder: Path, seed: int, syncbn_buffers: bool, num_batches_tracked: bool, legacy_format: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    encoder, decoder = _state_dicts(seed)
    for name, state_dict in ((ENCODER_FILE, encoder), (DECODER_FILE, decoder)):
        # The published files come from an old PyTorch: the pre-1.6 (non-zip) serialization.
        torch.save(
            official_layout(state_dict, syncbn_buffers, num_batches_tracked),
            folder / name,
            _use_new_zipfile_serialization=not legacy_format,
        )
    (folder / LABELS_FILE).write_text(json.dumps(synthetic_labels()))


def write_upp_weights(
    folder: Path,
    seed: int = 0,
    syncbn_buffers: bool = True,
    num_batches_tracked: bool = True,
    legacy_format: bool = True,
) -> Path:
    """Write ``folder/upp-resnet50-upernet/{encoder_epoch_40.pth, decoder_epoch_40.pth, labels.json}``.

    Random weights of the exact architecture (same ``seed`` -> same weights), the SyncBN extra
    buffers the published files carry, and `synthetic_labels`. Returns the
    ``upp-resnet50-upernet`` folder. The files are private copies: tests may damage them.
    """
    key = (seed, syncbn_buffers, num_batches_tracked, legacy_format)
    if key not in _CACHED:
        cached = _cache_root() / "-".join(str(int(k)) for k in key)
        _write(cached, seed, syncbn_buffers, num_batches_tracked, legacy_format)
        _CACHED[key] = cached
    target = Path(folder) / UPP_DIRNAME
    target.mkdir(parents=True, exist_ok=True)
    for name in (ENCODER_FILE, DECODER_FILE, LABELS_FILE):
        shutil.copyfile(_CACHED[key] / name, target / name)
    return target

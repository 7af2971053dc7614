"""The Progressive GAN generator (Karras et al. 2018) as converted to PyTorch for the paper.

The network is an ``nn.Sequential`` with children ``layer1`` .. ``layerK`` and ``output_<R>x<R>``, so
its module names match the published checkpoints and any layer can be named as a split point
(see `fsd.invert.split`). Channel sizes are not hard-coded: `ProGAN.from_state_dict` reads them from
the checkpoint, which is how the 256 px scene models and the 1024 px face model load alike.

Example (a tiny random generator; the published ones load with ``fsd.invert.proggan("church")``)::

    >>> import torch
    >>> from fsd.invert.proggan import ProGAN, seeded_latents
    >>> g = ProGAN([8, 8, 4, 4], z_dim=8).eval()
    >>> g(seeded_latents(2, seed=1, z_dim=8)).shape
    torch.Size([2, 3, 8, 8])
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from fsd.checkpoints import load_state_dict_checked, read_checkpoint
from fsd.generators import seeded_latents  # noqa: F401 (the paper's latent rule, re-exported)
from fsd.errors import InputError, WeightsError

__all__ = [
    "PixelNorm",
    "WScale",
    "ConvBlock",
    "OutputBlock",
    "ProGAN",
    "standard_channels",
    "normalize_state_dict",
    "load_proggan",
    "seeded_latents",
]


class PixelNorm(nn.Module):
    """x / sqrt(mean over channels of x^2 + eps)."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)


class WScale(nn.Module):
    """Equalized learning rate: ``x * gain / sqrt(fan_in) + b``, the factor a constant (not saved)."""

    def __init__(self, fan_in: int, gain: float, channels: int):
        super().__init__()
        self.scale = gain / math.sqrt(fan_in)
        self.b = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.b.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"scale={self.scale:.6g}, channels={self.b.numel()}"


class ConvBlock(nn.Module):
    """PixelNorm, [2x nearest upsampling], conv without bias, wscale, LeakyReLU(0.2).

    wscale uses fan_in = ``in_channels`` and gain sqrt(2) / k, so the effective factor is He's
    constant sqrt(2 / (in_channels k^2)), as in the converted checkpoints.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, padding: int, upsample: bool
    ):
        super().__init__()
        self.norm = PixelNorm()
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest") if upsample else nn.Identity()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=False)
        self.wscale = WScale(in_channels, math.sqrt(2.0) / kernel_size, out_channels)
        self.relu = nn.LeakyReLU(0.2)
        nn.init.normal_(self.conv.weight)  # equalized learning rate: N(0, 1) weights, scaled at run time

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.wscale(self.conv(self.upsample(self.norm(x)))))


class OutputBlock(nn.Module):
    """PixelNorm, 1x1 conv to RGB without bias, wscale with gain 1, hard clamp to [-1, 1]."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.norm = PixelNorm()
        self.conv = nn.Conv2d(in_channels, 3, 1, bias=False)
        self.wscale = WScale(in_channels, 1.0, 3)
        self.clamp = nn.Hardtanh()
        nn.init.normal_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clamp(self.wscale(self.conv(self.norm(x))))


def standard_channels(resolution: int) -> list[int]:
    """Per-layer output channels of the published generators: 512 up to 16 px, then halved per level.

    >>> standard_channels(256)
    [512, 512, 512, 512, 512, 512, 256, 256, 128, 128, 64, 64, 32, 32]
    """
    levels = _levels(resolution, "resolution")
    channels: list[int] = []
    for level in range(levels + 1):  # level 0 is 4x4
        width = min(512, 512 // 2 ** max(0, level - 2))
        channels += [width, width]
    return channels


def _levels(resolution: int, what: str) -> int:
    if resolution < 4 or resolution & (resolution - 1):
        raise InputError(f"{what} must be a power of two >= 4, got {resolution}")
    return int(math.log2(resolution)) - 2


class ProGAN(nn.Sequential):
    """Progressive GAN generator: z ``(N, z_dim)`` in, image ``(N, 3, R, R)`` in [-1, 1] out.

    ``channels`` lists the output channels of ``layer1`` .. ``layerK``; K = 2 + 2 log2(R / 4).
    ``layer1`` is a 4x4 conv with padding 3 (1x1 -> 4x4, standing in for a dense layer), ``layer2``
    a 3x3 conv, then every resolution adds an upsampling conv block and a conv block.
    """

    def __init__(self, channels: Sequence[int], z_dim: int = 512):
        channels = [int(c) for c in channels]
        if len(channels) < 2 or len(channels) % 2:
            raise InputError(
                f"channels must list an even number (>= 2) of layer widths, got {len(channels)}"
            )
        if z_dim < 1 or min(channels) < 1:
            raise InputError(f"z_dim and channels must be positive, got {z_dim} and {channels}")
        resolution = 4 * 2 ** (len(channels) // 2 - 1)
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        previous = z_dim
        for index, width in enumerate(channels, start=1):
            if index == 1:
                block = ConvBlock(previous, width, kernel_size=4, padding=3, upsample=False)
            else:
                block = ConvBlock(previous, width, 3, padding=1, upsample=index % 2 == 1)
            blocks[f"layer{index}"] = block
            previous = width
        blocks[f"output_{resolution}x{resolution}"] = OutputBlock(previous)
        super().__init__(blocks)
        self.z_dim = z_dim
        self.resolution = resolution
        self.channels = tuple(channels)

    @classmethod
    def standard(cls, resolution: int = 256) -> ProGAN:
        """The published architecture at ``resolution`` (weights uninitialized)."""
        return cls(standard_channels(resolution))

    @classmethod
    def from_state_dict(
        cls, state_dict: Mapping[str, object], *, source: str = "the state dict"
    ) -> ProGAN:
        """Build a generator shaped by ``state_dict`` (either published key layout) and load it strictly.

        Raises `WeightsError` naming ``source`` and the offending keys or shapes.
        """
        state = normalize_state_dict(state_dict, source=source)
        channels, z_dim = _infer_shape(state, source)
        model = cls(channels, z_dim=z_dim)
        load_state_dict_checked(
            model, state, source,
            hint="it does not fit the Progressive GAN architecture: use a checkpoint converted for this "
                 "generator (keys layerN.conv.weight, layerN.wscale.b, output_<R>x<R>.*)")
        return model

    def __getitem__(self, index: int | slice) -> nn.Module:
        """A slice is a plain ``nn.Sequential`` of those children (no latent reshaping)."""
        if isinstance(index, slice):
            return nn.Sequential(OrderedDict(list(self.named_children())[index]))
        return super().__getitem__(index)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:
            z = z.view(z.shape[0], z.shape[1], 1, 1)
        if z.dim() != 4 or z.shape[1:] != (self.z_dim, 1, 1):
            raise InputError(
                f"latents must have shape (N, {self.z_dim}) or (N, {self.z_dim}, 1, 1), "
                f"got {tuple(z.shape)}"
            )
        return super().forward(z)


_LAYER_KEY = re.compile(r"^layer(\d+)\.(.+)$")
_FEATURE_KEY = re.compile(r"^features\.(\d+)\.(.+)$")
_OUTPUT_KEY = re.compile(r"^output(?:_(\d+)x\1)?\.(.+)$")


def normalize_state_dict(
    state_dict: Mapping[str, object], *, source: str = "the state dict"
) -> dict[str, torch.Tensor]:
    """Bring a published checkpoint into the ``layerN.*`` / ``output_<R>x<R>.*`` key layout.

    Accepts an optional ``{"state_dict": ...}`` wrapper and the older layout with ``features.<i>``
    (i from 0, so ``features.0`` is ``layer1``) and ``output.*``.
    """
    if not isinstance(state_dict, Mapping):
        raise WeightsError(
            f"{source} holds a {type(state_dict).__name__}, not a state dict of tensors"
        )
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]
    layers: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}
    output_sizes: set[int] = set()
    others: list[str] = []
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"{source}: key {key!r} holds a {type(value).__name__}, not a tensor")
        match = _LAYER_KEY.match(key) or _FEATURE_KEY.match(key)
        output_match = _OUTPUT_KEY.match(key)
        if match:
            index = int(match.group(1)) + (1 if key.startswith("features.") else 0)
            name, target = f"layer{index}.{match.group(2)}", layers
        elif output_match:
            if output_match.group(1):
                output_sizes.add(int(output_match.group(1)))
            name, target = output_match.group(2), outputs
        else:
            others.append(key)
            continue
        if name in target:
            raise WeightsError(
                f"{source} holds {key!r} twice under different layouts (layerN.* and features.<i>.*, "
                "or output_<R>x<R>.* and output.*); keep one layout"
            )
        target[name] = value
    if others:
        raise WeightsError(
            f"{source} has keys that belong to no Progressive GAN layer: {', '.join(sorted(others))}"
        )
    if not layers or not outputs:
        raise WeightsError(
            f"{source} has no generator layers (layerN.* or features.<i>.*) or no output layer "
            "(output_<R>x<R>.* or output.*); is it a Progressive GAN generator checkpoint?"
        )
    count = len({key.split(".", 1)[0] for key in layers})
    if count % 2:
        raise WeightsError(
            f"{source} has {count} generator layers; a Progressive GAN has an even number "
            "(two per resolution)"
        )
    resolution = 4 * 2 ** (count // 2 - 1)
    if output_sizes and output_sizes != {resolution}:
        raise WeightsError(
            f"{source} names its output layer for {sorted(output_sizes)} px, but its {count} "
            f"layers make {resolution} px images; the checkpoint is inconsistent"
        )
    state = dict(layers)
    for name, value in outputs.items():
        state[f"output_{resolution}x{resolution}.{name}"] = value
    return state


def _infer_shape(state: Mapping[str, torch.Tensor], source: str) -> tuple[list[int], int]:
    """Per-layer output channels and z_dim read from the ``layerN.conv.weight`` tensors."""
    channels: list[int] = []
    z_dim = 0
    index = 1
    while f"layer{index}.conv.weight" in state:
        weight = state[f"layer{index}.conv.weight"]
        if weight.dim() != 4:
            raise WeightsError(
                f"{source}: layer{index}.conv.weight has shape {tuple(weight.shape)}, "
                "expected a 4-d conv weight (out, in, k, k)"
            )
        if index == 1:
            z_dim = int(weight.shape[1])
        channels.append(int(weight.shape[0]))
        index += 1
    if len(channels) < 2 or len(channels) % 2:
        raise WeightsError(
            f"{source}: found conv weights for layer1..layer{len(channels)}; a Progressive GAN "
            "has an even number (>= 2) of consecutive layers (layer1.conv.weight, ...)"
        )
    return channels, z_dim


def load_proggan(path: str | Path, *, map_location: str | torch.device = "cpu") -> ProGAN:
    """Load a Progressive GAN checkpoint file (any published layout) into a new `ProGAN`.

    The returned module is in training mode with gradients enabled, like any fresh module;
    `fsd.invert.proggan` gives frozen, eval-mode published models.
    """
    state = read_checkpoint(path, "generator checkpoint")
    return ProGAN.from_state_dict(state, source=str(path)).to(map_location)




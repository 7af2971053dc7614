"""The paper's segmenter network: a deep-stem ResNet-50 encoder and a UPerNet decoder.

Module and parameter names reproduce the published checkpoint's state-dict keys exactly
(``encoder_epoch_40.pth``: 23,631,808 parameters; ``decoder_epoch_40.pth``: 50,546,818), so the
files load with ``strict=True`` through `load_state_dict_checked`, which first verifies the
structure and names the first key that does not fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from fsd.checkpoints import check_state_dict, expected_shapes
from fsd.checkpoints import load_state_dict_checked as load_checked
from fsd.errors import InputError
from fsd.segmenters.prroi import prroi_pool_whole

BN_EPS = 1e-5
# Extra buffers of the synchronized BatchNorm the checkpoints were saved from; unused at inference.
SYNCBN_SUFFIXES = ("._tmp_running_mean", "._tmp_running_var", "._running_iter")
STAGE_CHANNELS = (256, 512, 1024, 2048)


# ----------------------------------------------------------------------------------------- encoder


class Bottleneck(nn.Module):
    """ResNet bottleneck (expansion 4); the stride sits on the 3x3 conv."""

    def __init__(self, inplanes: int, planes: int, stride: int, project: bool):
        super().__init__()
        width = planes * 4
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.conv3 = nn.Conv2d(planes, width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width, eps=BN_EPS)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Sequential | None = None
        if project:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, width, 1, stride=stride, bias=False),
                nn.BatchNorm2d(width, eps=BN_EPS),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


class ResNet50DeepStem(nn.Module):
    """ResNet-50 with a three-conv stem, no avgpool or fc.

    ``forward(x)`` returns the four stage outputs: strides 4, 8, 16, 32 and channels
    256, 512, 1024, 2048 (64, 32, 16, 8 pixels square for a 256 input).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=BN_EPS)
        self.conv2 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64, eps=BN_EPS)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(128, eps=BN_EPS)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 128
        layers = []
        for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            stage = [Bottleneck(inplanes, planes, stride, project=True)]
            stage += [Bottleneck(planes * 4, planes, 1, project=False) for _ in range(blocks - 1)]
            layers.append(nn.Sequential(*stage))
            inplanes = planes * 4
        self.layer1, self.layer2, self.layer3, self.layer4 = layers

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.relu(self.bn3(self.conv3(x)))
        x = self.maxpool(x)
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return c2, c3, c4, c5


# ----------------------------------------------------------------------------------------- decoder


@dataclass(frozen=True)
class HeadSizes:
    """Output channels of the four decoder heads (the paper's labels.json gives these defaults)."""

    object: int = 336
    part: int = 427
    material: int = 26
    scene: int = 365

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class DecoderOutputs:
    """Logits of all four heads: object and part at stride 4 (fusion), material at stride 4 (P2),
    scene ``(N, scene)`` from the pooled P5."""

    object: torch.Tensor
    part: torch.Tensor
    material: torch.Tensor
    scene: torch.Tensor


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """``[conv (no bias, same padding), BatchNorm, ReLU]``; keys ``0.weight``, ``1.*``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels, eps=BN_EPS),
        nn.ReLU(inplace=True),
    )


def _upsample(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class UPerNetDecoder(nn.Module):
    """UPerNet (fpn_dim 512) with pyramid pooling over precise RoI pooling, and four heads.

    ``forward_object(features)`` computes only what the object head needs (the metric's path);
    ``forward(features)`` computes all four heads.
    """

    def __init__(
        self,
        heads: HeadSizes = HeadSizes(),
        pool_scales: tuple[int, ...] = (1, 2, 3, 6),
        fpn_dim: int = 512,
    ):
        super().__init__()
        self.heads = heads
        self.pool_scales = pool_scales
        top = STAGE_CHANNELS[-1]
        self.ppm_conv = nn.ModuleList(conv_bn_relu(top, fpn_dim, 1) for _ in pool_scales)
        self.ppm_last_conv = conv_bn_relu(top + len(pool_scales) * fpn_dim, fpn_dim, 3)
        self.fpn_in = nn.ModuleList(conv_bn_relu(c, fpn_dim, 1) for c in STAGE_CHANNELS[:-1])
        # The doubled Sequential reproduces the checkpoint's keys ``fpn_out.i.0.0.weight``.
        self.fpn_out = nn.ModuleList(
            nn.Sequential(conv_bn_relu(fpn_dim, fpn_dim, 3)) for _ in STAGE_CHANNELS[:-1]
        )
        self.conv_fusion = conv_bn_relu(len(STAGE_CHANNELS) * fpn_dim, fpn_dim, 3)
        self.object_head = self._classifier(fpn_dim, heads.object)
        self.part_head = self._classifier(fpn_dim, heads.part)
        self.material_head = self._classifier(fpn_dim, heads.material)
        self.scene_head = nn.Sequential(
            conv_bn_relu(fpn_dim, fpn_dim, 3),
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(fpn_dim, heads.scene, 1, bias=True),
        )

    @staticmethod
    def _classifier(fpn_dim: int, classes: int) -> nn.Sequential:
        return nn.Sequential(conv_bn_relu(fpn_dim, fpn_dim, 3), nn.Conv2d(fpn_dim, classes, 1, bias=True))

    def _pyramid_pooling(self, top: torch.Tensor) -> torch.Tensor:
        size = top.shape[-2:]
        pooled = [top]
        for scale, conv in zip(self.pool_scales, self.ppm_conv):
            pooled.append(conv(_upsample(prroi_pool_whole(top, scale), size)))
        return self.ppm_last_conv(torch.cat(pooled, dim=1))

    def _fused(self, features: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (fusion output, P2, P5)."""
        if len(features) != len(STAGE_CHANNELS):
            raise InputError(f"UPerNetDecoder expects the 4 encoder stage outputs, got {len(features)} tensors")
        p5 = self._pyramid_pooling(features[-1])
        f = p5
        pyramid = [p5]
        for i in reversed(range(len(STAGE_CHANNELS) - 1)):
            lateral = self.fpn_in[i](features[i])
            f = lateral + _upsample(f, lateral.shape[-2:])
            pyramid.insert(0, self.fpn_out[i](f))
        size = pyramid[0].shape[-2:]
        fusion_in = torch.cat([pyramid[0]] + [_upsample(p, size) for p in pyramid[1:]], dim=1)
        return self.conv_fusion(fusion_in), pyramid[0], p5

    def forward_object(self, features: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Object logits ``(N, heads.object, H/4, W/4)``; the part, material and scene heads are skipped."""
        fusion, _, _ = self._fused(features)
        return self.object_head(fusion)

    def forward(self, features: tuple[torch.Tensor, ...]) -> DecoderOutputs:
        fusion, p2, p5 = self._fused(features)
        return DecoderOutputs(
            object=self.object_head(fusion),
            part=self.part_head(fusion),
            material=self.material_head(p2),
            scene=self.scene_head(p5).flatten(1),
        )


# ------------------------------------------------------------------------------ checkpoint loading


@lru_cache(maxsize=8)
def _meta_shapes(kind: str, heads: HeadSizes) -> tuple[tuple[str, tuple[int, ...]], ...]:
    with torch.device("meta"):
        module = ResNet50DeepStem() if kind == "encoder" else UPerNetDecoder(heads)
    return tuple(expected_shapes(module).items())


def encoder_shapes() -> dict[str, tuple[int, ...]]:
    """Expected encoder state-dict shapes, from a model built on the meta device (no memory)."""
    return dict(_meta_shapes("encoder", HeadSizes()))


def decoder_shapes(heads: HeadSizes = HeadSizes()) -> dict[str, tuple[int, ...]]:
    """Expected decoder state-dict shapes, from a model built on the meta device (no memory)."""
    return dict(_meta_shapes("decoder", heads))


def check_structure(
    state_dict: Mapping[str, object], expected: Mapping[str, tuple[int, ...]], what: str
) -> dict[str, torch.Tensor]:
    """Verify a segmenter checkpoint: the SyncBN buffers dropped, then `fsd.checkpoints.check_state_dict`."""
    return check_state_dict(state_dict, expected, what, drop_suffixes=SYNCBN_SUFFIXES)


def load_state_dict_checked(module: nn.Module, state_dict: Mapping[str, object], what: str) -> None:
    """Load a segmenter checkpoint strictly, after dropping the SyncBN buffers and verifying it."""
    load_checked(module, state_dict, what, drop_suffixes=SYNCBN_SUFFIXES)

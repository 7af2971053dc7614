"""The segmenter protocol: what every segmenter gives the rest of the package.

A segmenter turns a batch of preprocessed images into per-pixel class labels. The statistics only
ever see the per-image class percentages computed from those labels by `class_percentages`, so any
model (or a folder of label maps) that follows this protocol gives an FSD-style metric.
"""

from __future__ import annotations

from dataclasses import dataclass, asdict
from typing import Literal, Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class Preprocessing:
    """How an image file (or a generated image) becomes the segmenter's input.

    ``kind="rgb"``: PIL ``convert('RGB')``, shorter side resized to ``size`` (long side truncated,
    as torchvision computes it), centred ``size`` x ``size`` crop; ``resample`` names the PIL filter.
    ``kind="labels"``: single-channel images whose pixel values are class ids, resized with
    nearest neighbour and never converted to RGB.
    """

    kind: Literal["rgb", "labels"] = "rgb"
    size: int = 256
    resample: Literal["bilinear", "nearest"] = "bilinear"

    def describe(self) -> str:
        """A stable one-line identifier stored with statistics and compared on load."""
        return f"{self.kind}:short-side-{self.resample}-{self.size}:center-crop-{self.size}"

    def as_dict(self) -> dict:
        return asdict(self)


PAPER_PREPROCESSING = Preprocessing("rgb", 256, "bilinear")


@runtime_checkable
class Segmenter(Protocol):
    """What the metric needs from a segmenter.

    - ``class_names``: list of names, index 0 is "no prediction" (counted like any class).
    - ``num_classes``: ``len(class_names)``.
    - ``name``: identifies the model (architecture), e.g. ``"upp-resnet50-upernet"``.
    - ``weights_id``: identifies the weights, stored with statistics so that statistics made
      with different weights are never compared.
    - ``preprocessing``: the `Preprocessing` its inputs must go through.
    - ``segment(images)``: uint8 images ``(N, 3, S, S)`` (``(N, 1, S, S)`` integer labels for
      ``kind="labels"``) on any device -> int64 labels ``(N, S, S)`` in ``[0, num_classes)``.
    """

    class_names: list[str]
    name: str
    weights_id: str
    preprocessing: Preprocessing

    @property
    def num_classes(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    def segment(self, images: torch.Tensor) -> torch.Tensor: ...


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-image pixel count of each class: ``(N, H, W)`` labels -> ``(N, C)`` int64.

    Vectorized over the batch: one ``bincount`` of ``image_index * C + label``.
    """
    if labels.dim() != 3:
        raise ValueError(f"labels must have shape (N, H, W), got {tuple(labels.shape)}")
    n, h, w = labels.shape
    flat = labels.reshape(n, h * w).long()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got values in "
            f"[{int(flat.min())}, {int(flat.max())}]"
        )
    offsets = torch.arange(n, device=flat.device).unsqueeze(1) * num_classes
    counts = torch.bincount((flat + offsets).reshape(-1), minlength=n * num_classes)
    return counts.reshape(n, num_classes)


def class_percentages(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-image share of pixels of each class, in percent: ``(N, H, W)`` -> ``(N, C)`` float64.

    Each row sums to 100 (up to rounding).
    """
    h, w = labels.shape[-2:]
    return class_counts(labels, num_classes).to(torch.float64) * (100.0 / (h * w))

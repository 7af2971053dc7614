"""A segmenter whose inputs already are segmentations: single-channel images of class ids.

Use it for annotations (semantic image synthesis: compare the label maps a model was conditioned on
with the segmentation of its outputs), or for label maps another segmenter wrote. It runs offline,
needs no weights, and goes through the same statistics and distance as the UPP segmenter.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import InputError
from .base import Preprocessing

LABELMAP_PREPROCESSING = Preprocessing("labels", 256, "nearest")


class LabelMapSegmenter:
    """Passes label maps through, checking every id is below ``num_classes``."""

    name = "labelmap"
    preprocessing = LABELMAP_PREPROCESSING

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None, size: int = 256):
        if num_classes < 1:
            raise InputError(f"num_classes must be at least 1, got {num_classes}")
        if class_names is None:
            class_names = ["-"] + [f"class_{i}" for i in range(1, num_classes)]
        if len(class_names) != num_classes:
            raise InputError(f"got {len(class_names)} class names for {num_classes} classes")
        self.class_names = list(class_names)
        self.weights_id = f"labelmap-{num_classes}"
        self.preprocessing = Preprocessing("labels", size, "nearest")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 1 or images.dtype.is_floating_point:
            raise InputError(
                f"label maps must be an integer tensor of shape (N, 1, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        labels = images[:, 0].long()
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise InputError(
                f"label map holds class id {int(labels.max())}, but --num-classes is {self.num_classes}: "
                "raise --num-classes or check the label images"
            )
        return labels

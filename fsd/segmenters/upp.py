"""`UPPSegmenter`: the paper's segmenter (Unified Perceptual Parsing, ResNet-50 + UPerNet, epoch 40).

Only the object head is evaluated: FSD counts the argmax over its 336 classes at 256 x 256.

>>> seg = UPPSegmenter.from_pretrained()                       # doctest: +SKIP
>>> labels = seg.segment(images_uint8)                         # doctest: +SKIP
>>> class_percentages(labels, seg.num_classes).shape           # doctest: +SKIP
torch.Size([8, 336])
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from fsd.errors import InputError, WeightsError
from fsd.segmenters.base import PAPER_PREPROCESSING, Preprocessing
from fsd.segmenters.upernet import (
    HeadSizes,
    ResNet50DeepStem,
    UPerNetDecoder,
    load_state_dict_checked,
    read_state_dict,
)

UPP_NAME = "upp-resnet50-upernet"
UPP_WEIGHTS_ID = "upp-resnet50-upernet/epoch_40"
ENCODER_FILE = "encoder_epoch_40.pth"
DECODER_FILE = "decoder_epoch_40.pth"
LABELS_FILE = "labels.json"
LABEL_KEYS = ("object", "material", "scene", "part", "object_part")
# The paper's code feeds Caffe-style input: BGR order, 0..255, these means subtracted, no std.
BGR_MEANS = (102.9801, 115.9465, 122.7717)
# Upsampled 336-channel logits cost 88 MB per image in float32; bound the batch of that step.
_UPSAMPLE_BYTES = 256 * 2**20


def default_device() -> torch.device:
    """cuda if available, else mps if available, else cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _string_list(labels: Mapping, key: str, source: str) -> list[str]:
    value = labels[key]
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise WeightsError(f"{source}: {key!r} must be a list of class names (strings)")
    return value


def validate_labels(labels: object, heads: HeadSizes, source: str) -> dict:
    """Check a labels.json dict against the decoder's head sizes; raise `WeightsError` naming the
    key that does not fit. Returns ``labels`` unchanged."""
    if not isinstance(labels, Mapping):
        raise WeightsError(f"{source}: must hold a JSON object, got {type(labels).__name__}")
    for key in LABEL_KEYS:
        if key not in labels:
            raise WeightsError(f"{source}: key {key!r} is missing (expected keys {list(LABEL_KEYS)})")
    objects = _string_list(labels, "object", source)
    _string_list(labels, "part", source)
    for key, size in (("object", heads.object), ("material", heads.material), ("scene", heads.scene)):
        found = len(_string_list(labels, key, source))
        if found != size:
            raise WeightsError(f"{source}: {key!r} lists {found} names, the {key} head has {size} outputs")
    object_part = labels["object_part"]
    if not isinstance(object_part, Mapping):
        raise WeightsError(f"{source}: 'object_part' must map object names to lists of part names")
    known = set(objects)
    total = 0
    for owner, parts in object_part.items():
        if owner not in known:
            raise WeightsError(f"{source}: 'object_part' owner {owner!r} is not in 'object'")
        if not isinstance(parts, list) or not all(isinstance(part, str) for part in parts):
            raise WeightsError(f"{source}: 'object_part'[{owner!r}] must be a list of part names")
        total += len(parts)
    if total != heads.part:
        raise WeightsError(
            f"{source}: the 'object_part' lists hold {total} names in all, the part head has {heads.part} outputs"
        )
    return dict(labels)


def read_labels(path: Path | str, heads: HeadSizes = HeadSizes()) -> dict:
    """Read and validate labels.json; every failure is a `WeightsError` naming the file."""
    path = Path(path)
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(
            f"cannot read {path} ({type(exc).__name__}: {exc}); delete it and download it again"
        ) from exc
    return validate_labels(labels, heads, str(path))


class UPPSegmenter:
    """The paper's segmenter behind the `fsd.segmenters.base.Segmenter` protocol.

    ``segment(images)``: uint8 ``(N, 3, 256, 256)`` RGB -> int64 object labels ``(N, 256, 256)``
    in ``[0, 336)`` on ``self.device``.
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
    ):
        self.labels = validate_labels(labels, decoder.heads, "labels")
        self.class_names: list[str] = list(self.labels["object"])
        self.weights_id = weights_id
        try:
            self._device = torch.device(device) if device is not None else default_device()
        except (RuntimeError, TypeError) as exc:
            raise InputError(
                f"device {device!r} is not a torch device (use e.g. 'cpu', 'cuda', 'cuda:1', 'mps')"
            ) from exc
        self.encoder = encoder.to(self._device).eval()
        self.decoder = decoder.to(self._device).eval()
        self._means = torch.tensor(BGR_MEANS, dtype=torch.float32, device=self._device).view(1, 3, 1, 1)

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
        return cls(encoder, decoder, labels, device=device, weights_id=weights_id)

    @classmethod
    def from_pretrained(
        cls,
        *,
        weights_dir: Path | str | None = None,
        device: torch.device | str | None = None,
        progress: bool = True,
    ) -> UPPSegmenter:
        """Fetch the published files (or find them in ``weights_dir``) and load them."""
        # Imported here because fsd.segmenters.weights imports this module (labels checks).
        from fsd.hub import fetch
        from fsd.segmenters.weights import UPP_WEIGHTS

        folder = fetch(UPP_WEIGHTS, weights_dir=weights_dir, progress=progress)
        return cls.from_folder(folder, device=device, weights_id=UPP_WEIGHTS_ID)

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

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 RGB ``(N, 3, 256, 256)`` on any device -> int64 labels ``(N, 256, 256)`` on ``self.device``."""
        images = self._check_images(images)
        size = self.preprocessing.size
        # Allocated outside inference mode so that callers may modify the result in place.
        labels = torch.empty((images.shape[0], size, size), dtype=torch.int64, device=self._device)
        if images.shape[0] == 0:
            return labels
        with torch.inference_mode():
            x = images.to(self._device).float().flip(1) - self._means
            logits = self.decoder.forward_object(self.encoder(x))
            chunk = max(1, _UPSAMPLE_BYTES // (logits.shape[1] * size * size * logits.element_size()))
            for start in range(0, images.shape[0], chunk):
                upsampled = F.interpolate(
                    logits[start : start + chunk], size=(size, size), mode="bilinear", align_corners=False
                )
                # No softmax: it is monotonic and cannot change the argmax.
                labels[start : start + chunk] = upsampled.argmax(dim=1)
        return labels

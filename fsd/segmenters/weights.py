"""The published files of the paper's segmenter, declared once for `fsd.hub.fetch`, and their checks.

No checksum has ever been published for them, so each file is verified by structure instead:
the checkpoints must hold exactly the architecture's keys and shapes, and labels.json must fit the
head sizes (`read_labels`, `validate_labels`). `fsd.segmenters.upp` loads what is declared here; this
module never imports it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from fsd.errors import WeightsError
from fsd.hub import Artifact, RemoteFile
from fsd.checkpoints import read_state_dict
from fsd.segmenters.upernet import (
    HeadSizes,
    check_structure,
    decoder_shapes,
    encoder_shapes,
)

UPP_NAME = "upp-resnet50-upernet"
ENCODER_FILE = "encoder_epoch_40.pth"
DECODER_FILE = "decoder_epoch_40.pth"
LABELS_FILE = "labels.json"
LABEL_KEYS = ("object", "material", "scene", "part", "object_part")


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
            f"cannot read {path} as labels.json ({type(exc).__name__}: {exc})"
        ) from exc
    return validate_labels(labels, heads, str(path))


ENCODER_PARAMETERS = 23_631_808
DECODER_PARAMETERS = 50_546_818


def verify_upp_file(path: Path, remote_file: RemoteFile) -> None:
    """Raise `WeightsError` unless ``path`` has the structure of the declared file it claims to be."""
    heads = HeadSizes()
    what = f"{remote_file.name} ({path})"
    if remote_file.name == ENCODER_FILE:
        check_structure(read_state_dict(path, what), encoder_shapes(), what)
    elif remote_file.name == DECODER_FILE:
        check_structure(read_state_dict(path, what), decoder_shapes(heads), what)
    elif remote_file.name == LABELS_FILE:
        read_labels(path, heads)
    else:
        raise WeightsError(f"{what}: not a file of {UPP_NAME}")


UPP_WEIGHTS = Artifact(
    name=UPP_NAME,
    files=(
        # Published sizes: about 95 MB and 202 MB (float32 payload 94.74 MB and 202.25 MB).
        RemoteFile(ENCODER_FILE, min_bytes=90_000_000),
        RemoteFile(DECODER_FILE, min_bytes=190_000_000),
        RemoteFile(LABELS_FILE, min_bytes=1_000),
    ),
    mirrors=(
        "http://netdissect.csail.mit.edu/data/segmodel/upp-resnet50-upernet",
        "https://dissect.csail.mit.edu/models/segmodel/upp-resnet50-upernet",
        # Weights only: labels.json is not there, the hub takes it from the mirrors above.
        "http://sceneparsing.csail.mit.edu/model/unified_perceptual_parsing/upp-resnet50-upernet",
    ),
    description="the paper's segmenter: Unified Perceptual Parsing, ResNet-50 + UPerNet, Broden+, epoch 40",
    meta={
        "paper": "Bau et al., Seeing What a GAN Cannot Generate, ICCV 2019 (segmenter: Xiao et al., "
        "Unified Perceptual Parsing for Scene Understanding, ECCV 2018)",
        "architecture": "ResNet-50 (deep stem) encoder + UPerNet decoder, fpn_dim 512, PrRoI pyramid pooling",
        "parameters": {"encoder": ENCODER_PARAMETERS, "decoder": DECODER_PARAMETERS},
        "heads": HeadSizes().as_dict(),
        "input": "BGR 0..255 minus means (102.9801, 115.9465, 122.7717), 256 x 256",
    },
    verify=verify_upp_file,
)

"""The published files of the paper's segmenter, declared once for `fsd.hub.fetch`.

No checksum has ever been published for them, so each file is verified by structure instead:
the checkpoints must hold exactly the architecture's keys and shapes, and labels.json must fit the
head sizes.
"""

from __future__ import annotations

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
from fsd.segmenters.upp import DECODER_FILE, ENCODER_FILE, LABELS_FILE, UPP_NAME, read_labels

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

"""Layer inversion: find the closest image a generator can make to a real photo.

- `proggan` (a published Progressive GAN by name), `ProGAN`, `load_proggan`, `seeded_latents`
- `LayerSplit`, `SplitGenerator`, `PROGGAN_SPLIT`: cut any generator at a named layer
- `invert_layer` (the paper's per-image inversion of one layer), `invert_z` (z-only L-BFGS baseline)
- `encoder` (a published hybrid encoder by name), `HybridEncoder`, `SmallEncoder`, `load_encoder`,
  `save_encoder`: image -> z encoders that start the inversion
- `train_encoder`, `encoder_for`, `EncoderTrainingConfig`, `StageSchedule`: train an encoder for
  any split generator (the paper's recipe)
- `invert_folder`, `invert_photos`, `OmissionReport`, `omissions_from_labels`: what the generator
  drops from real photos, per photo and over a folder, with panels (`fsd.invert.pictures`) and an
  HTML page; ``python -m fsd.invert PHOTOS --generator proggan:church --out DIR``

Note: ``fsd.invert.proggan`` is the loader function; the module is ``fsd.invert.proggan`` too, so
import from it with ``from fsd.invert.proggan import ...`` (as torchvision does with
``torchvision.models.alexnet``). The same holds for ``fsd.invert.encoder``.
"""

from __future__ import annotations

# The submodule is imported before the function of the same name, which then takes the attribute.
from fsd.invert.proggan import ProGAN, load_proggan, seeded_latents, standard_channels
from fsd.invert.inversion import (
    ImageNetNormalize,
    InversionConfig,
    InversionResult,
    LossHistory,
    ZInversionConfig,
    ZInversionResult,
    invert_layer,
    invert_z,
    learning_rate,
    vgg16_relu4_2,
)
from fsd.invert.split import PROGGAN_SPLIT, LayerSplit, SplitGenerator
from fsd.invert.weights import PROGGAN_ARTIFACTS, proggan, proggan_artifact
from fsd.invert.encoder import (
    ENCODER_ARTIFACTS,
    HybridEncoder,
    LayerEncoder,
    SmallEncoder,
    encoder,
    encoder_artifact,
    load_encoder,
    save_encoder,
)
from fsd.invert.train import (
    PAPER_BACKBONE,
    PAPER_JOINT,
    PAPER_LAYERS,
    EncoderTraining,
    EncoderTrainingConfig,
    StageSchedule,
    encoder_for,
    train_encoder,
)
from fsd.invert.omissions import (
    OmissionReport,
    PhotoInversion,
    ReportOptions,
    invert_folder,
    invert_photos,
    omissions_from_labels,
)

__all__ = [
    "ProGAN",
    "load_proggan",
    "seeded_latents",
    "standard_channels",
    "proggan",
    "proggan_artifact",
    "PROGGAN_ARTIFACTS",
    "LayerSplit",
    "SplitGenerator",
    "PROGGAN_SPLIT",
    "InversionConfig",
    "InversionResult",
    "LossHistory",
    "ZInversionConfig",
    "ZInversionResult",
    "ImageNetNormalize",
    "invert_layer",
    "invert_z",
    "learning_rate",
    "vgg16_relu4_2",
    "LayerEncoder",
    "HybridEncoder",
    "SmallEncoder",
    "encoder",
    "encoder_artifact",
    "ENCODER_ARTIFACTS",
    "load_encoder",
    "save_encoder",
    "EncoderTraining",
    "EncoderTrainingConfig",
    "StageSchedule",
    "PAPER_BACKBONE",
    "PAPER_LAYERS",
    "PAPER_JOINT",
    "encoder_for",
    "train_encoder",
    "OmissionReport",
    "PhotoInversion",
    "ReportOptions",
    "invert_folder",
    "invert_photos",
    "omissions_from_labels",
]

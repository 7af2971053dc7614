"""Layer inversion: find the closest image a generator can make to a real photo.

- `proggan` (a published Progressive GAN by name), `ProGAN`, `load_proggan`, `seeded_latents`
- `LayerSplit`, `SplitGenerator`, `PROGGAN_SPLIT`: cut any generator at a named layer
- `invert_layer` (the paper's per-image inversion of one layer), `invert_z` (z-only L-BFGS baseline)

Note: ``fsd.invert.proggan`` is the loader function; the module is ``fsd.invert.proggan`` too, so
import from it with ``from fsd.invert.proggan import ...`` (as torchvision does with
``torchvision.models.alexnet``).
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
]

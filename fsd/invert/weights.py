"""The published Progressive GAN generators, declared once each, and the loader `proggan`.

Each model is an `fsd.hub.Artifact`: its file, the hash prefix from its file name, a size floor,
the mirror, and a structural check (the file must load strictly into a `ProGAN` of the declared
resolution). `fsd.hub.fetch_file` finds, downloads, caches and checks it.

Example (needs the network or a folder holding ``proggan-church/proggan_churchoutdoor-7e701dd5.pth``)::

    >>> import fsd.invert
    >>> g = fsd.invert.proggan("church", weights_dir="/data/fsd-weights")  # doctest: +SKIP
    >>> g(fsd.invert.seeded_latents(4, seed=1)).shape  # doctest: +SKIP
    torch.Size([4, 3, 256, 256])
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from types import MappingProxyType

import torch

from fsd.errors import InputError, WeightsError
from fsd.hub import Artifact, RemoteFile, fetch_file
from fsd.invert.proggan import ProGAN, load_proggan

__all__ = ["PROGGAN_MIRRORS", "PROGGAN_ARTIFACTS", "proggan_artifact", "proggan"]

PROGGAN_MIRRORS = ("http://gandissect.csail.mit.edu/models",)

# Float32 state dicts of the 256 px and 1024 px architectures hold about 18.3 M parameters (73 MB);
# half that floor still rejects error pages and truncated transfers if a file were stored as float16.
_MIN_BYTES = 2 * 18_300_000


def _verify_proggan(resolution: int, path: Path, remote_file: RemoteFile) -> None:
    """Structural check run by `fsd.hub`: strict load into a ProGAN of the declared resolution."""
    model = load_proggan(path)
    if model.resolution != resolution:
        raise WeightsError(
            f"{remote_file.name} holds a {model.resolution} px generator, expected {resolution} px"
        )


def _declare(name: str, file_name: str, resolution: int, domain: str) -> Artifact:
    # The 8 hex digits in the file name follow torch.hub's convention (a prefix of the file's SHA-256);
    # nobody has verified them against the published files, so a mismatch may be the pin's fault.
    return Artifact(
        name=f"proggan-{name}",
        files=(RemoteFile.hub_named(file_name, min_bytes=_MIN_BYTES),),
        mirrors=PROGGAN_MIRRORS,
        description=f"Progressive GAN generator, {domain}, {resolution}x{resolution}",
        meta={
            "architecture": "proggan",
            "resolution": resolution,
            "z_dim": 512,
            "domain": domain,
            "file": file_name,
            "paper": "Karras et al., Progressive Growing of GANs, ICLR 2018; "
            "PyTorch conversion by Bau et al., ICCV 2019",
        },
        verify=partial(_verify_proggan, resolution),
    )


PROGGAN_ARTIFACTS: MappingProxyType[str, Artifact] = MappingProxyType(
    {
        "bedroom": _declare("bedroom", "proggan_bedroom-d8a89ff1.pth", 256, "LSUN bedroom"),
        "church": _declare(
            "church", "proggan_churchoutdoor-7e701dd5.pth", 256, "LSUN church_outdoor"
        ),
        "conferenceroom": _declare(
            "conferenceroom", "proggan_conferenceroom-21e85882.pth", 256, "LSUN conference_room"
        ),
        "diningroom": _declare(
            "diningroom", "proggan_diningroom-3aa0ab80.pth", 256, "LSUN dining_room"
        ),
        "kitchen": _declare("kitchen", "proggan_kitchen-67f1e16c.pth", 256, "LSUN kitchen"),
        "livingroom": _declare(
            "livingroom", "proggan_livingroom-5ef336dd.pth", 256, "LSUN living_room"
        ),
        "restaurant": _declare(
            "restaurant", "proggan_restaurant-b8578299.pth", 256, "LSUN restaurant"
        ),
        "celebhq": _declare("celebhq", "proggan_celebhq-620d161c.pth", 1024, "CelebA-HQ faces"),
    }
)


def proggan_artifact(name: str) -> Artifact:
    """The declared artifact of the published generator ``name`` (see `PROGGAN_ARTIFACTS`)."""
    try:
        return PROGGAN_ARTIFACTS[name]
    except KeyError:
        raise InputError(
            f"unknown Progressive GAN {name!r}; choose one of: {', '.join(PROGGAN_ARTIFACTS)}"
        ) from None


def proggan(
    name: str,
    *,
    weights_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> ProGAN:
    """A published Progressive GAN generator, frozen (``requires_grad=False``) and in eval mode.

    ``name``: one of ``bedroom``, ``church``, ``conferenceroom``, ``diningroom``, ``kitchen``,
    ``livingroom``, ``restaurant`` (256 px LSUN) or ``celebhq`` (1024 px faces).
    ``weights_dir``: a folder holding ``proggan-<name>/<file>`` (or the file directly); nothing is
    downloaded then. Otherwise the file is downloaded into the cache (see `fsd.hub`).
    ``device``: where to put the model; ``None`` keeps it on the CPU.
    """
    artifact = proggan_artifact(name)
    path = fetch_file(
        artifact, artifact.files[0].name, weights_dir=weights_dir, progress=progress
    )
    model = load_proggan(path)
    model.eval().requires_grad_(False)
    if device is not None:
        model.to(device)
    return model

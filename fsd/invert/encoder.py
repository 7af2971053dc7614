"""Encoders for layer inversion: image -> estimate of r (the split layer's output) -> ... -> z.

A `LayerEncoder` is an ``nn.Sequential`` whose first child (the *backbone*) estimates r from an image in
[-1, 1], and whose other children (the *inverters*) each undo one generator layer, last layer first:
for the paper's Progressive GAN split after ``layer4`` they are ``inv4`` (layer4 output -> layer3
output), ``inv3``, ``inv2`` and ``inv1`` (layer1 output -> z). Its output is the latent estimate z0 that
`fsd.invert.invert_layer` starts from.

- `HybridEncoder`: the paper's published architecture, module for module, so the published church and
  bedroom encoders load strictly (`load_encoder`, `fsd.invert.encoder`). Its backbone ``resnet`` is a
  ResNet-18 (children named as in torchvision) whose average pool and classifier are replaced by
  ``layer5`` (1x1 conv with bias, LeakyReLU(0.2)); its inverters are the spec's "layer-norm encoders".
  The channel widths are options (read from a checkpoint), so smaller copies exist for tests and for
  narrower Progressive GANs.
- `SmallEncoder`: a generic, small encoder for generators that are not the 256 px Progressive GAN,
  shaped from the generator's own layer shapes (see `fsd.invert.train.encoder_for`).

Files: `save_encoder` writes ``{"state_dict": ..., "architecture": {...}}``; `load_encoder` reads those
and the published files (optionally wrapped in ``state_dict``, keys optionally prefixed ``model.``).

Example (the published encoder; needs the network or a folder holding
``encoder-church/church_invert_hybrid_cse-43e52428.pth``)::

    >>> import fsd.invert
    >>> E = fsd.invert.encoder("church", weights_dir="/data/fsd-weights")  # doctest: +SKIP
    >>> E(images).shape  # images (N, 3, 256, 256) in [-1, 1]                # doctest: +SKIP
    torch.Size([N, 512, 1, 1])
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from fsd._io import atomic_write
from fsd.checkpoints import load_state_dict_checked, read_checkpoint
from fsd.errors import InputError, WeightsError
from fsd.hub import Artifact, RemoteFile, fetch_file
from fsd.invert.proggan import PixelNorm

__all__ = [
    "LayerEncoder",
    "HybridEncoder",
    "SmallEncoder",
    "build_encoder",
    "normalize_encoder_state_dict",
    "load_encoder",
    "save_encoder",
    "ENCODER_MIRRORS",
    "ENCODER_ARTIFACTS",
    "encoder_artifact",
    "encoder",
]

ARCHITECTURE_KEY = "architecture"


class LayerEncoder(nn.Sequential):
    """Backbone (image -> r) followed by inverters (one per generator layer, last layer first).

    ``forward(images)`` gives the latent estimate; `estimates` gives every intermediate estimate.
    ``architecture`` is a JSON-able dict from which `build_encoder` rebuilds the same module.
    """

    def __init__(self, parts: Mapping[str, nn.Module], architecture: Mapping[str, object]):
        if len(parts) < 2:
            raise InputError("a layer encoder needs a backbone and at least one inverter")
        super().__init__(OrderedDict(parts))
        self.architecture = dict(architecture)

    @property
    def backbone(self) -> nn.Module:
        return next(iter(self.children()))

    @property
    def inverters(self) -> list[tuple[str, nn.Module]]:
        """``(name, module)`` of the inverters in the order they run (last generator layer first)."""
        return list(self.named_children())[1:]

    def representation(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's estimate of r."""
        return self.backbone(images)

    def estimates(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``[r, ..., z]``: the backbone's output, then each inverter's output in turn."""
        outputs = [self.backbone(images)]
        for _, inverter in self.inverters:
            outputs.append(inverter(outputs[-1]))
        return outputs


def _resnet18_trunk(width: int, out_channels: int, activation: bool) -> nn.Sequential:
    """ResNet-18 with torchvision's child names; ``layer5`` (1x1 conv, LeakyReLU) instead of pool + fc."""

    def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or cin != cout:
            downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        return nn.Sequential(BasicBlock(cin, cout, stride, downsample), BasicBlock(cout, cout))

    head: OrderedDict[str, nn.Module] = OrderedDict(conv5=nn.Conv2d(8 * width, out_channels, 1))
    if activation:
        head["relu5"] = nn.LeakyReLU(0.2)
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False),
            bn1=nn.BatchNorm2d(width),
            relu=nn.ReLU(inplace=True),
            maxpool=nn.MaxPool2d(3, stride=2, padding=1),
            layer1=stage(width, width, 1),
            layer2=stage(width, 2 * width, 2),
            layer3=stage(2 * width, 4 * width, 2),
            layer4=stage(4 * width, 8 * width, 2),
            layer5=nn.Sequential(head),
        )
    )


def _layer_norm_inverter(cin: int, cout: int, conv3_stride: int | None) -> nn.Sequential:
    """The spec's layer-norm encoder: PixelNorm, 2 x (3x3 conv, BN, LeakyReLU), optional 1x1 ``conv3``."""
    parts: OrderedDict[str, nn.Module] = OrderedDict(
        pnorm=PixelNorm(),
        conv1=nn.Conv2d(cin, cout, 3, padding=1),
        bn1=nn.BatchNorm2d(cout),
        relu1=nn.LeakyReLU(0.2),
        conv2=nn.Conv2d(cout, cout, 3, padding=1),
        bn2=nn.BatchNorm2d(cout),
        relu2=nn.LeakyReLU(0.2),
    )
    if conv3_stride is not None:
        parts["conv3"] = nn.Conv2d(cout, cout, 1, stride=conv3_stride)
    return nn.Sequential(parts)


def _to_latent_inverter(cin: int, z_dim: int, kernel: int) -> nn.Sequential:
    """``inv1``: PixelNorm, kxk conv without padding (k x k -> 1 x 1), BN, LeakyReLU, 1x1 conv, PixelNorm."""
    return nn.Sequential(
        OrderedDict(
            pnorm=PixelNorm(),
            conv1=nn.Conv2d(cin, z_dim, kernel),
            bn1=nn.BatchNorm2d(z_dim),
            relu1=nn.LeakyReLU(0.2),
            conv2=nn.Conv2d(z_dim, z_dim, 1),
            pnormout=PixelNorm(),
        )
    )


class HybridEncoder(LayerEncoder):
    """The paper's hybrid encoder for a Progressive GAN split after ``layer4`` (256 px input).

    ``layer_channels``: output channels of generator layer1..layer4 (512 each in the published
    models); ``width``: the ResNet's first width (64 in ResNet-18). The published layout is
    ``HybridEncoder()``; output z has shape ``(N, z_dim, 1, 1)`` and RMS 1 (a PixelNorm ends ``inv1``).
    """

    def __init__(
        self,
        z_dim: int = 512,
        layer_channels: Sequence[int] = (512, 512, 512, 512),
        width: int = 64,
    ):
        channels = tuple(int(c) for c in layer_channels)
        if len(channels) != 4 or min(channels) < 1 or z_dim < 1 or width < 1:
            raise InputError(
                "HybridEncoder needs four positive layer widths (layer1..layer4), z_dim >= 1 and "
                f"width >= 1; got layer_channels={layer_channels}, z_dim={z_dim}, width={width}"
            )
        c1, c2, c3, c4 = channels
        parts = OrderedDict(
            resnet=_resnet18_trunk(width, c4, activation=True),
            inv4=_layer_norm_inverter(c4, c3, conv3_stride=1),
            inv3=_layer_norm_inverter(c3, c2, conv3_stride=2),
            inv2=_layer_norm_inverter(c2, c1, conv3_stride=None),
            inv1=_to_latent_inverter(c1, z_dim, kernel=4),
        )
        architecture = {"kind": "hybrid", "z_dim": z_dim, "layer_channels": list(channels), "width": width}
        super().__init__(parts, architecture)

    @classmethod
    def from_state_dict(
        cls, state_dict: Mapping[str, object], *, source: str = "the state dict"
    ) -> HybridEncoder:
        """Build an encoder shaped like ``state_dict`` (published layout) and load it strictly."""
        state = normalize_encoder_state_dict(state_dict, source=source)
        needed = ("resnet.conv1.weight", "inv4.conv1.weight", "inv3.conv1.weight", "inv2.conv1.weight",
                  "inv1.conv1.weight")
        shapes = {key: state[key].shape for key in needed if key in state and state[key].dim() == 4}
        if len(shapes) < len(needed):
            raise WeightsError(
                f"{source} is not a hybrid inversion encoder: it lacks the 4-d tensors "
                f"{', '.join(key for key in needed if key not in shapes)} "
                "(expected keys resnet.*, inv4.*, inv3.*, inv2.*, inv1.*)"
            )
        c4 = int(shapes["inv4.conv1.weight"][1])
        c3 = int(shapes["inv4.conv1.weight"][0])
        c2 = int(shapes["inv3.conv1.weight"][0])
        c1 = int(shapes["inv2.conv1.weight"][0])
        z_dim = int(shapes["inv1.conv1.weight"][0])
        width = int(shapes["resnet.conv1.weight"][0])
        model = cls(z_dim, (c1, c2, c3, c4), width)
        _load_strictly(model, state, source, "the hybrid encoder (resnet, inv4, inv3, inv2, inv1)")
        return model


def _adapt(cin_size: tuple[int, int], target: tuple[int, int]) -> nn.Module:
    if cin_size == target:
        return nn.Identity()
    if target[0] <= cin_size[0] and target[1] <= cin_size[1]:
        return nn.AdaptiveAvgPool2d(target)
    return nn.Upsample(size=target, mode="nearest")


class _Reshape(nn.Module):
    """``(N, ...) -> (N, *shape)``; no parameters."""

    def __init__(self, shape: Sequence[int]):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


def _as_chw(shape: Sequence[int]) -> tuple[int, int, int]:
    """A per-sample shape as (C, H, W): (D,) -> (D, 1, 1)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 1:
        return (shape[0], 1, 1)
    if len(shape) == 3:
        return shape  # type: ignore[return-value]
    raise InputError(
        f"layer inversion needs latents shaped (D,) or (D, 1, 1) and layer outputs shaped (C, H, W); "
        f"got a per-sample shape {shape}"
    )


class SmallEncoder(LayerEncoder):
    """A generic encoder shaped from a generator's layer shapes; the recipe for non-ProGAN generators.

    ``image_shape``: (3, H, W) of the generator's output. ``layer_shapes``: per-sample output shapes
    of the generator's layers up to the split, in the order they run (the last one is r's shape).
    ``latent_shape``: per-sample shape of z. ``width``: the backbone's first width (doubled at
    each stride-2 conv, up to 8 x ``width``).

    Backbone: stride-2 (3x3 conv, BN, LeakyReLU) blocks down to r's size, an adaptive average pool
    and a 1x1 conv to r's channels. Inverter for layer i (output shape -> input shape): 3x3 conv,
    BN, LeakyReLU, resampling to the input's size, 3x3 conv, BN, LeakyReLU, 1x1 conv; the one that
    reaches z uses a conv covering the whole map instead, and reshapes to z's shape.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        layer_shapes: Sequence[Sequence[int]],
        latent_shape: Sequence[int],
        width: int = 32,
    ):
        image = tuple(int(s) for s in image_shape)
        layers = [_as_chw(s) for s in layer_shapes]
        latent = tuple(int(s) for s in latent_shape)
        latent_chw = _as_chw(latent)
        if len(image) != 3 or image[0] != 3 or not layers or width < 1:
            raise InputError(
                f"SmallEncoder needs image_shape (3, H, W), at least one layer shape and width >= 1; "
                f"got {image_shape}, {len(layers)} layer shapes, width {width}"
            )
        if latent_chw[1:] != (1, 1):
            raise InputError(f"SmallEncoder needs a latent of shape (D,) or (D, 1, 1), got {latent}")
        r_channels, r_height, r_width = layers[-1]
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        channels, height, widthpx = 3, image[1], image[2]
        out = width
        index = 1
        while height // 2 >= r_height and widthpx // 2 >= r_width and height > 1:
            blocks[f"down{index}"] = nn.Sequential(
                nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.BatchNorm2d(out), nn.LeakyReLU(0.2)
            )
            channels, height, widthpx = out, (height + 1) // 2, (widthpx + 1) // 2
            out = min(2 * out, 8 * width)
            index += 1
        blocks["pool"] = _adapt((height, widthpx), (r_height, r_width))
        blocks["project"] = nn.Conv2d(channels, r_channels, 1)
        parts: OrderedDict[str, nn.Module] = OrderedDict(trunk=nn.Sequential(blocks))
        inputs = [latent_chw, *layers[:-1]]
        for number in range(len(layers), 0, -1):
            cout, hout, wout = layers[number - 1]
            cin, hin, win = inputs[number - 1]
            hidden = max(cin, cout)
            if number == 1:
                parts[f"inv{number}"] = nn.Sequential(
                    OrderedDict(
                        conv1=nn.Conv2d(cout, hidden, (hout, wout)),
                        bn1=nn.BatchNorm2d(hidden),
                        relu1=nn.LeakyReLU(0.2),
                        conv2=nn.Conv2d(hidden, cin, 1),
                        reshape=_Reshape(latent),
                    )
                )
            else:
                parts[f"inv{number}"] = nn.Sequential(
                    OrderedDict(
                        conv1=nn.Conv2d(cout, hidden, 3, padding=1),
                        bn1=nn.BatchNorm2d(hidden),
                        relu1=nn.LeakyReLU(0.2),
                        resample=_adapt((hout, wout), (hin, win)),
                        conv2=nn.Conv2d(hidden, hidden, 3, padding=1),
                        bn2=nn.BatchNorm2d(hidden),
                        relu2=nn.LeakyReLU(0.2),
                        conv3=nn.Conv2d(hidden, cin, 1),
                    )
                )
        architecture = {
            "kind": "small",
            "image_shape": list(image),
            "layer_shapes": [list(s) for s in layers],
            "latent_shape": list(latent),
            "width": width,
        }
        super().__init__(parts, architecture)


def build_encoder(architecture: Mapping[str, object]) -> LayerEncoder:
    """A fresh encoder from an ``architecture`` dict (as `LayerEncoder.architecture` gives it)."""
    kind = architecture.get("kind") if isinstance(architecture, Mapping) else None
    try:
        if kind == "hybrid":
            return HybridEncoder(
                int(architecture["z_dim"]),
                [int(c) for c in architecture["layer_channels"]],
                int(architecture["width"]),
            )
        if kind == "small":
            return SmallEncoder(
                architecture["image_shape"],
                architecture["layer_shapes"],
                architecture["latent_shape"],
                int(architecture["width"]),
            )
    except (KeyError, TypeError, ValueError) as error:
        raise WeightsError(f"encoder architecture {dict(architecture)!r} is incomplete: {error}") from None
    raise WeightsError(
        f"unknown encoder architecture kind {kind!r}; expected 'hybrid' or 'small'"
    )


def normalize_encoder_state_dict(
    state_dict: Mapping[str, object], *, source: str = "the state dict"
) -> dict[str, torch.Tensor]:
    """Unwrap ``{"state_dict": ...}`` and strip ``model.`` (or DataParallel's ``module.``) prefixes."""
    while isinstance(state_dict, Mapping) and isinstance(state_dict.get("state_dict"), Mapping):
        state_dict = state_dict["state_dict"]
    if not isinstance(state_dict, Mapping):
        raise WeightsError(f"{source} holds a {type(state_dict).__name__}, not a state dict of tensors")
    state: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise WeightsError(
                f"{source}: key {key!r} holds a {type(value).__name__}, not a tensor; "
                "is this an inversion encoder checkpoint?"
            )
        name = key
        for prefix in ("model.", "module."):
            if name.startswith(prefix):
                name = name[len(prefix):]
        if name in state:
            raise WeightsError(f"{source} holds {name!r} twice (with and without a prefix)")
        state[name] = value
    return state


def _load_strictly(model: nn.Module, state: dict[str, torch.Tensor], source: str, what: str) -> None:
    load_state_dict_checked(
        model, state, source,
        hint=f"it does not fit {what}: use an encoder checkpoint saved by fsd.invert.save_encoder or a "
             "published hybrid encoder file")


def load_encoder(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> LayerEncoder:
    """Load an encoder file: one written by `save_encoder`, a training checkpoint of
    `fsd.invert.train_encoder` (the encoder as last saved), or a published hybrid encoder.

    The returned module is in training mode with gradients enabled, like any fresh module;
    `fsd.invert.encoder` gives frozen, eval-mode published encoders.
    """
    path = Path(path)
    content = read_checkpoint(path, "encoder checkpoint")
    if isinstance(content, Mapping) and isinstance(content.get(ARCHITECTURE_KEY), Mapping):
        model = build_encoder(content[ARCHITECTURE_KEY])
        # "encoder": a training checkpoint of fsd.invert.train_encoder, at whatever step it was saved.
        weights = content.get("state_dict", content.get("encoder"))
        if not isinstance(weights, Mapping):
            raise WeightsError(f"{path} declares an encoder architecture but holds no state_dict")
        state = normalize_encoder_state_dict(weights, source=str(path))
        _load_strictly(model, state, str(path), f"its declared architecture {dict(content[ARCHITECTURE_KEY])}")
        return model.to(map_location)
    if not isinstance(content, Mapping):
        raise WeightsError(f"{path} holds a {type(content).__name__}, not an encoder state dict")
    return HybridEncoder.from_state_dict(content, source=str(path)).to(map_location)


def save_encoder(encoder: LayerEncoder, path: str | os.PathLike[str]) -> Path:
    """Write ``{"state_dict", "architecture"}`` atomically (temporary file, then rename)."""
    if not isinstance(encoder, LayerEncoder):
        raise InputError(f"save_encoder takes a LayerEncoder, got {type(encoder).__name__}")
    path = Path(path)
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
        ARCHITECTURE_KEY: encoder.architecture,
    }
    _atomic_save(payload, path)
    return path


def _atomic_save(payload: object, path: Path) -> None:
    atomic_write(path, lambda handle: torch.save(payload, handle))


# -- the published encoders ---------------------------------------------------------------------------

ENCODER_MIRRORS = ("http://gandissect.csail.mit.edu/models/encoders",)


def _published_parameter_count() -> int:
    # Counted on the meta device: no memory is allocated for the 30 M parameters.
    with torch.device("meta"):
        return sum(p.numel() for p in HybridEncoder().parameters())


def _verify_encoder(path: Path, remote_file: RemoteFile) -> None:
    """Structural check run by `fsd.hub`: strict load into the published hybrid layout."""
    model = HybridEncoder.from_state_dict(read_checkpoint(path, "encoder checkpoint"), source=remote_file.name)
    if model.architecture != HybridEncoder().architecture:
        raise WeightsError(
            f"{remote_file.name} holds a hybrid encoder of shape {model.architecture}, "
            f"expected the published {HybridEncoder().architecture}"
        )


def _declare(domain: str, file_name: str, description: str) -> Artifact:
    # As for the generators: the 8 hex digits follow torch.hub's convention (a sha256 prefix), unverified.
    return Artifact(
        name=f"encoder-{domain}",
        files=(RemoteFile.hub_named(file_name, min_bytes=_MIN_BYTES),),
        mirrors=ENCODER_MIRRORS,
        description=f"hybrid inversion encoder for the Progressive GAN {description}",
        meta={
            "architecture": "hybrid",
            "generator": f"proggan:{domain}",
            "split": "layer4",
            "input": "(N, 3, 256, 256) in [-1, 1]",
            "output": "z (N, 512, 1, 1)",
            "parameters": _PARAMETERS,
            "file": file_name,
            "paper": "Bau et al., Seeing What a GAN Cannot Generate, ICCV 2019",
        },
        verify=_verify_encoder,
    )


_PARAMETERS = _published_parameter_count()
# Half the float32 size, so a float16 copy passes while error pages and truncated files do not.
_MIN_BYTES = 2 * _PARAMETERS

ENCODER_ARTIFACTS: MappingProxyType[str, Artifact] = MappingProxyType(
    {
        "church": _declare("church", "church_invert_hybrid_cse-43e52428.pth", "LSUN church_outdoor"),
        "bedroom": _declare("bedroom", "bedroom_invert_hybrid_cse-b943528e.pth", "LSUN bedroom"),
    }
)


def encoder_artifact(name: str) -> Artifact:
    """The declared artifact of the published encoder for generator ``name`` (church or bedroom)."""
    try:
        return ENCODER_ARTIFACTS[name]
    except KeyError:
        raise InputError(
            f"no published inversion encoder for {name!r}; published: {', '.join(ENCODER_ARTIFACTS)}. "
            "Train one with `python -m fsd.invert train-encoder` (fsd.invert.train_encoder)"
        ) from None


def encoder(
    name: str,
    *,
    weights_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> HybridEncoder:
    """The published hybrid encoder for ``proggan(name)``, frozen and in eval mode.

    ``name``: ``church`` or ``bedroom``. ``weights_dir``: a folder holding ``encoder-<name>/<file>``
    (or the file directly); nothing is downloaded then. Otherwise the file is downloaded into the
    cache (see `fsd.hub`). ``device``: where to put the model; ``None`` keeps it on the CPU.
    """
    artifact = encoder_artifact(name)
    path = fetch_file(artifact, artifact.files[0].name, weights_dir=weights_dir, progress=progress)
    model = HybridEncoder.from_state_dict(read_checkpoint(path, "encoder checkpoint"), source=str(path))
    model.eval().requires_grad_(False)
    if device is not None:
        model.to(device)
    return model

"""Per-image layer inversion (the paper's "optimize residuals") and a z-only L-BFGS baseline.

For target images x in [-1, 1], `invert_layer` starts from latents z0 (given, or an encoder's
estimate E(x)) and optimizes zero-initialized offsets d_i added to the outputs of the split's offset
layers, so that r = head(z0, d) and the reconstruction G_f(r) match x:

    loss = L1(x, G_f(r)) + L1(VGG(x), VGG(G_f(r))) + sum_i mean(d_i^2)

with Adam (lr 0.01, halved after steps 800, 1200, 1800) for 3000 steps: the paper's settings, each
an option of `InversionConfig`. r is never free: it stays the split layer's output. VGG is the
``features=`` argument: ``"vgg16"`` (the paper's), ``"none"`` (no feature term: pixels only), or
any feature network.

Every term is a mean over one image, and the optimized loss is the sum over images, so a batch
behaves as independent runs (Adam is elementwise and eval-mode networks do not mix samples).

Example (tiny random networks; real use passes a published generator and the VGG default)::

    >>> import torch
    >>> from fsd.invert.proggan import ProGAN
    >>> g = ProGAN([8, 8, 8, 8, 4, 4], z_dim=8)
    >>> vgg_like = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    >>> z = torch.randn(2, 8)
    >>> x = g(z).detach()
    >>> result = invert_layer(g, x, z, features=vgg_like,
    ...                       config=InversionConfig(steps=5), progress=False)
    >>> float(result.losses.total[0].max()) < 1e-6, result.reconstruction.shape
    (True, torch.Size([2, 3, 16, 16]))
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from fsd._text import plural
from fsd.errors import InputError, WeightsError
from fsd.invert.split import PROGGAN_SPLIT, LayerSplit, SplitGenerator

__all__ = [
    "InversionConfig",
    "LossHistory",
    "InversionResult",
    "ZInversionConfig",
    "ZInversionResult",
    "learning_rate",
    "feature_network",
    "vgg16_relu4_2",
    "ImageNetNormalize",
    "invert_layer",
    "check_layer_inversion",
    "invert_z",
]

Start = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]
# The perceptual network of the loss: "vgg16" (the paper's), "none" (pixel loss only), or a module.
Features = Literal["vgg16", "none"] | nn.Module


@dataclass(frozen=True)
class InversionConfig:
    """Settings of `invert_layer`; the defaults are the paper's.

    ``lr`` is multiplied by ``lr_decay`` once for every milestone m with step >= m (steps count
    from 0), so steps 0..799 use 0.01 and steps 800..1199 use 0.005. ``snapshot_steps`` lists the
    steps whose reconstruction is kept (step s = after s updates; steps beyond ``steps`` are
    skipped). ``imagenet_normalization`` feeds the feature network ImageNet-normalized [0, 1]
    images instead of the paper's raw [-1, 1] images.
    """

    steps: int = 3000
    lr: float = 0.01
    lr_milestones: tuple[int, ...] = (800, 1200, 1800)
    lr_decay: float = 0.5
    pixel_weight: float = 1.0
    feature_weight: float = 1.0
    offset_weight: float = 1.0
    snapshot_steps: tuple[int, ...] = (0, 1000, 2000, 3000)
    imagenet_normalization: bool = False

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise InputError(f"InversionConfig.steps must be >= 0, got {self.steps}")
        if not self.lr > 0 or not self.lr_decay > 0:
            raise InputError(
                f"InversionConfig.lr and lr_decay must be > 0, got {self.lr} and {self.lr_decay}"
            )
        if list(self.lr_milestones) != sorted(self.lr_milestones) or any(
            m < 0 for m in self.lr_milestones
        ):
            raise InputError(
                f"InversionConfig.lr_milestones must be increasing and >= 0, got {self.lr_milestones}"
            )
        weights = (self.pixel_weight, self.feature_weight, self.offset_weight)
        if any(w < 0 for w in weights):
            raise InputError(f"InversionConfig loss weights must be >= 0, got {weights}")
        if any(s < 0 for s in self.snapshot_steps):
            raise InputError(
                f"InversionConfig.snapshot_steps must be >= 0, got {self.snapshot_steps}"
            )


def learning_rate(step: int, config: InversionConfig = InversionConfig()) -> float:
    """The learning rate of update ``step`` (from 0) under ``config``'s step schedule."""
    drops = sum(1 for milestone in config.lr_milestones if step >= milestone)
    return config.lr * config.lr_decay**drops


@dataclass
class LossHistory:
    """Per-image loss terms, float64 arrays ``(steps + 1, B)``; row s is the loss after s updates."""

    total: np.ndarray
    pixel: np.ndarray
    feature: np.ndarray
    offset: np.ndarray


@dataclass
class InversionResult:
    """What `invert_layer` returns; tensors are detached and on the CPU.

    ``reconstruction``: G_f(r*) after the last step; ``initial_reconstruction``: the step-0
    reconstruction from z0 alone (the encoder's, when z0 came from one); ``representation``: r*;
    ``latents``: z0; ``offsets``: layer name -> optimized offset; ``losses``: per-image history;
    ``learning_rates``: the lr of each update ``(steps,)``; ``snapshots``: step -> reconstruction.
    """

    reconstruction: torch.Tensor
    initial_reconstruction: torch.Tensor
    representation: torch.Tensor
    latents: torch.Tensor
    offsets: dict[str, torch.Tensor]
    losses: LossHistory
    learning_rates: np.ndarray
    snapshots: dict[int, torch.Tensor]
    config: InversionConfig = field(default_factory=InversionConfig)


class ImageNetNormalize(nn.Module):
    """[-1, 1] images -> [0, 1] -> ImageNet mean/std normalization (torchvision's constants)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x + 1) / 2 - self.mean.to(x.dtype)) / self.std.to(x.dtype)


def vgg16_relu4_2(*, progress: bool = True) -> nn.Module:
    """torchvision's ImageNet VGG16 ``features[:21]`` (through relu4_2), frozen and in eval mode.

    The weights come through torchvision's weights API and its cache (``$TORCH_HOME``). Offline
    (``$FSD_OFFLINE=1``) they must already be in that cache: nothing is downloaded.
    """
    from torchvision.models import VGG16_Weights, vgg16

    from fsd._hints import option
    from fsd.hub import offline_mode

    weights = VGG16_Weights.IMAGENET1K_V1
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    instead = option("pass features='none' (pixel loss only) or your own feature network (an nn.Module) as features=",
                     "pass --features none (pixel loss only) or your own feature network as --features MODULE:NAME")
    if offline_mode() and not (cache / Path(urlparse(weights.url).path).name).is_file():
        raise WeightsError(
            f"offline ($FSD_OFFLINE): torchvision's VGG16 ImageNet weights are not in {cache}, and are not "
            f"downloaded; {instead}, or put {weights.url} there"
        )
    try:
        network = vgg16(weights=weights, progress=progress).features[:21]
    except (OSError, RuntimeError) as error:
        raise WeightsError(
            f"cannot load torchvision's VGG16 ImageNet weights: {error}; {instead}, or download "
            f"{weights.url} into $TORCH_HOME/hub/checkpoints/ (default ~/.cache/torch)"
        ) from error
    return network.eval().requires_grad_(False)


@contextmanager
def _frozen(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Eval mode and no parameter gradients inside; the modules' own settings restored after."""
    saved = [
        (module, module.training, [(p, p.requires_grad) for p in module.parameters()])
        for module in modules
    ]
    try:
        for module in modules:
            module.eval().requires_grad_(False)
        yield
    finally:
        for module, training, flags in saved:
            module.train(training)
            for parameter, requires_grad in flags:
                parameter.requires_grad_(requires_grad)


def _placement(
    generator: nn.Module, device: str | torch.device | None
) -> tuple[torch.device, torch.dtype]:
    """The device to run on (``device``, else the generator's) and the generator's dtype."""
    parameter = next(generator.parameters(), None)
    dtype = parameter.dtype if parameter is not None else torch.get_default_dtype()
    if device is not None:
        return torch.device(device), dtype
    return (parameter.device if parameter is not None else torch.device("cpu")), dtype


def _check_images(images: object) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"images must be a tensor (B, 3, H, W), got {shape}")
    if not images.is_floating_point():
        raise InputError(
            f"images must be float in [-1, 1], got dtype {images.dtype}; "
            "convert uint8 images with x.float() / 127.5 - 1"
        )
    if images.numel() == 0:
        raise InputError("images is empty: nothing to invert")
    low, high = float(images.min()), float(images.max())
    if low < -1.001 or high > 1.001 or not np.isfinite([low, high]).all():
        raise InputError(
            f"images must lie in [-1, 1] like the generator's output, got values in "
            f"[{low:.4g}, {high:.4g}]; convert [0, 1] images with 2 * x - 1"
        )
    return images


def _start_latents(
    start: Start, images: torch.Tensor, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """z0: ``start`` itself when it is a tensor, else ``start(images)`` (an encoder), detached."""
    if isinstance(start, torch.Tensor):
        z0 = start
    elif callable(start):
        with torch.no_grad():
            z0 = start(images)
        if not isinstance(z0, torch.Tensor):
            raise InputError(
                f"the encoder returned a {type(z0).__name__}; it must return a latent tensor"
            )
    else:
        raise InputError(
            f"start must be a latent tensor or an encoder (images -> latents), got {type(start).__name__}"
        )
    if z0.dim() == 0 or z0.shape[0] != images.shape[0]:
        raise InputError(
            f"start gives latents of shape {tuple(z0.shape)} for {plural(images.shape[0], 'image')}; "
            "need one latent per image (first dimension)"
        )
    return z0.detach().to(device=device, dtype=dtype)


def feature_network(features: Features = "vgg16", *, progress: bool = True) -> nn.Module | None:
    """The perceptual network a ``features=`` argument names: ``"vgg16"`` the paper's (`vgg16_relu4_2`,
    downloaded by torchvision on first use), ``"none"`` no network (``None``: the loss is pixels only),
    or an ``nn.Module`` (any images -> features network), returned as is."""
    if isinstance(features, nn.Module):
        return features
    if features == "vgg16":
        return vgg16_relu4_2(progress=progress)
    if features == "none":
        return None
    if features is None:
        raise InputError(
            "features=None is ambiguous: pass features='vgg16' (the paper's VGG16 to relu4_2), features='none' "
            "(pixel loss only), or a feature network (an nn.Module)"
        )
    raise InputError(
        f"features must be 'vgg16', 'none' or an nn.Module, got {features!r}"
    )


def _feature_network(features: Features, imagenet_normalization: bool, progress: bool) -> nn.Module | None:
    network = feature_network(features, progress=progress)
    if network is None:
        if imagenet_normalization:
            raise InputError(
                "imagenet_normalization normalizes the feature network's input, but features='none' has no "
                "feature network; drop one of them"
            )
        return None
    return nn.Sequential(ImageNetNormalize(), network) if imagenet_normalization else network


def _modules(generator: nn.Module, feature_net: nn.Module | None, start: Start) -> list[nn.Module]:
    """The networks a run moves to its device and freezes."""
    return [generator, *([feature_net] if feature_net is not None else []),
            *([start] if isinstance(start, nn.Module) else [])]


def _check_offset_layers(split: LayerSplit) -> None:
    if not split.offset_layers:
        raise InputError(
            f"the split after {split.split_after!r} names no offset layers, so layer inversion has nothing to "
            "optimize: give LayerSplit(..., offset_layers=(...)), or use invert_z for a latent-only inversion"
        )


def _calling(what: str, call: Callable[[], object]) -> object:
    """``call()``, its failure an `InputError` that says which part failed (out of memory stays itself)."""
    try:
        return call()
    except torch.cuda.OutOfMemoryError:  # torch.OutOfMemoryError from 2.5 on; this name in 2.1 too
        raise
    except InputError as error:
        raise InputError(f"{what}: {error}") from error
    except Exception as error:
        raise InputError(f"{what} failed: {type(error).__name__}: {error}") from error


def check_layer_inversion(
    generator: nn.Module,
    images: torch.Tensor,
    start: Start,
    *,
    split: LayerSplit = PROGGAN_SPLIT,
    features: Features = "vgg16",
    config: InversionConfig = InversionConfig(),
    device: str | torch.device | None = None,
    progress: bool = True,
) -> None:
    """Step 0 of `invert_layer` without optimizing: each network is called once and the shapes checked.

    Arguments as `invert_layer`. Raises `InputError` naming the part that failed (the split, the
    encoder, the generator, the feature network), so a long run can check its inputs before its
    first step (`fsd.invert.invert_folder` checks the first photo before it writes anything).
    """
    images = _check_images(images)
    _check_offset_layers(split)
    splitter = SplitGenerator(generator, split)
    feature_net = _feature_network(features, config.imagenet_normalization, progress)
    modules = _modules(generator, feature_net, start)
    run_device, dtype = _placement(generator, device)
    for module in modules:
        module.to(run_device)
    with _frozen(modules), torch.no_grad():
        x = images.detach().to(device=run_device, dtype=dtype)
        z0 = _calling("the encoder (start)", lambda: _start_latents(start, x, run_device, dtype))

        def generate() -> torch.Tensor:
            return splitter(z0, splitter.zero_offsets(z0))[1]

        reconstruction = _calling(f"the generator (split after {split.split_after!r})", generate)
        if not isinstance(reconstruction, torch.Tensor) or reconstruction.shape != x.shape:
            shape = tuple(reconstruction.shape) if isinstance(reconstruction, torch.Tensor) else type(reconstruction)
            raise InputError(
                f"the generator makes images of shape {shape}, but the targets have shape {tuple(x.shape)}; "
                "resize the images to the generator's resolution"
            )
        if feature_net is not None:
            target, made = _calling("the feature network", lambda: (feature_net(x), feature_net(reconstruction)))
            if not isinstance(target, torch.Tensor) or target.shape != made.shape:
                raise InputError("the feature network must return one tensor per image, of one shape for both")


def _per_image_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().flatten(1).mean(dim=1)


def invert_layer(
    generator: nn.Module,
    images: torch.Tensor,
    start: Start,
    *,
    split: LayerSplit = PROGGAN_SPLIT,
    features: Features = "vgg16",
    config: InversionConfig = InversionConfig(),
    device: str | torch.device | None = None,
    progress: bool = True,
) -> InversionResult:
    """Invert ``generator`` at ``split`` for each image; see the module docstring.

    ``images``: ``(B, 3, H, W)`` in [-1, 1], H x W the generator's output size.
    ``start``: latents z0 ``(B, ...)``, or an encoder callable mapping the images (on ``device``)
    to them. ``features``: the perceptual network (`feature_network`): ``"vgg16"``, torchvision's
    VGG16 to relu4_2 (downloads on first use); ``"none"``, no feature term (pixel loss only, its
    history zeros); or your ``nn.Module``. ``device``: where to run; ``None`` uses the generator's.
    The generator, feature network and (module) encoder are moved there (in place) and run frozen
    in eval mode; their training flags and ``requires_grad`` are restored afterwards.
    """
    images = _check_images(images)
    _check_offset_layers(split)
    feature_net = _feature_network(features, config.imagenet_normalization, progress)
    modules = _modules(generator, feature_net, start)
    run_device, dtype = _placement(generator, device)
    for module in modules:
        module.to(run_device)
    splitter = SplitGenerator(generator, split)
    names = list(split.offset_layers)
    snapshot_steps = {s for s in config.snapshot_steps if s <= config.steps}

    with _frozen(modules):
        x = images.detach().to(device=run_device, dtype=dtype)
        z0 = _start_latents(start, x, run_device, dtype)
        with torch.no_grad():
            x_features = feature_net(x) if feature_net is not None else None
        offsets = [d.requires_grad_(True) for d in splitter.zero_offsets(z0)]
        optimizer = torch.optim.Adam(offsets, lr=config.lr) if offsets else None
        history = torch.zeros(config.steps + 1, 4, x.shape[0], dtype=torch.float64, device=run_device)
        rates = np.array([learning_rate(s, config) for s in range(config.steps)], dtype=np.float64)
        snapshots: dict[int, torch.Tensor] = {}
        bar = tqdm(total=config.steps, desc="layer inversion", file=sys.stderr, disable=not progress)
        try:
            for step in range(config.steps + 1):
                optimizing = step < config.steps and optimizer is not None
                with torch.set_grad_enabled(optimizing):
                    r, reconstruction = splitter(z0, offsets)
                    if reconstruction.shape != x.shape:
                        raise InputError(
                            f"the generator makes images of shape {tuple(reconstruction.shape)}, "
                            f"but the targets have shape {tuple(x.shape)}; resize the images to "
                            "the generator's resolution"
                        )
                    pixel = _per_image_l1(x, reconstruction)
                    feature = (_per_image_l1(x_features, feature_net(reconstruction)) if feature_net is not None
                               else torch.zeros_like(pixel))
                    penalty = sum(
                        (d.pow(2).flatten(1).mean(dim=1) for d in offsets),
                        torch.zeros_like(pixel),
                    )
                    total = (
                        config.pixel_weight * pixel
                        + config.feature_weight * feature
                        + config.offset_weight * penalty
                    )
                history[step] = torch.stack([total, pixel, feature, penalty]).detach()
                if step == 0:
                    initial = reconstruction.detach().cpu()
                if step in snapshot_steps:
                    snapshots[step] = reconstruction.detach().cpu()
                if step == config.steps:
                    break
                if optimizer is not None:
                    for group in optimizer.param_groups:
                        group["lr"] = float(rates[step])
                    optimizer.zero_grad(set_to_none=True)
                    total.sum().backward()
                    optimizer.step()
                bar.update(1)
                if step % 50 == 0:
                    bar.set_postfix(loss=f"{float(total.detach().mean()):.4f}")
        finally:
            bar.close()

    values = history.cpu().numpy()
    return InversionResult(
        reconstruction=reconstruction.detach().cpu(),
        initial_reconstruction=initial,
        representation=r.detach().cpu(),
        latents=z0.cpu(),
        offsets={name: d.detach().cpu() for name, d in zip(names, offsets)},
        losses=LossHistory(values[:, 0], values[:, 1], values[:, 2], values[:, 3]),
        learning_rates=rates,
        snapshots=dict(sorted(snapshots.items())),
        config=config,
    )


@dataclass(frozen=True)
class ZInversionConfig:
    """Settings of the z-only baseline `invert_z`. The paper gives no values; these are ours.

    ``iterations`` L-BFGS iterations per image (each may evaluate the loss several times during
    its line search), ``lr`` L-BFGS's initial step length, ``history_size`` its memory. On small
    random generators lr 1.0 stalled after a few iterations (the L1 loss is not smooth) where 0.1
    kept descending.
    """

    iterations: int = 500
    lr: float = 0.1
    history_size: int = 100
    line_search: Literal["strong_wolfe"] | None = "strong_wolfe"
    pixel_weight: float = 1.0
    feature_weight: float = 1.0
    imagenet_normalization: bool = False

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.history_size < 1 or not self.lr > 0:
            raise InputError(
                "ZInversionConfig needs iterations >= 0, history_size >= 1 and lr > 0, got "
                f"{self.iterations}, {self.history_size}, {self.lr}"
            )
        if self.pixel_weight < 0 or self.feature_weight < 0:
            raise InputError(
                f"ZInversionConfig loss weights must be >= 0, got {self.pixel_weight}, "
                f"{self.feature_weight}"
            )


@dataclass
class ZInversionResult:
    """What `invert_z` returns (CPU tensors): G(z*), G(z0), z*, z0, and the per-image loss
    ``(iterations + 1, B)`` float64, row i the loss after i L-BFGS iterations."""

    reconstruction: torch.Tensor
    initial_reconstruction: torch.Tensor
    latents: torch.Tensor
    initial_latents: torch.Tensor
    losses: np.ndarray
    config: ZInversionConfig = field(default_factory=ZInversionConfig)


def invert_z(
    generator: nn.Module,
    images: torch.Tensor,
    start: Start,
    *,
    features: Features = "vgg16",
    config: ZInversionConfig = ZInversionConfig(),
    device: str | torch.device | None = None,
    progress: bool = True,
) -> ZInversionResult:
    """The baseline the paper compares against: optimize z alone with L-BFGS, to
    L1(x, G(z)) + L1(VGG(x), VGG(G(z))).

    Arguments as `invert_layer`. L-BFGS is not elementwise (its line search and memory span all of
    its variables), so each image is optimized on its own to keep the runs independent.
    """
    images = _check_images(images)
    feature_net = _feature_network(features, config.imagenet_normalization, progress)
    modules = _modules(generator, feature_net, start)
    run_device, dtype = _placement(generator, device)
    for module in modules:
        module.to(run_device)

    with _frozen(modules):
        x_all = images.detach().to(device=run_device, dtype=dtype)
        z0_all = _start_latents(start, x_all, run_device, dtype)
        with torch.no_grad():
            initial = generator(z0_all)
        if initial.shape != x_all.shape:
            raise InputError(
                f"the generator makes images of shape {tuple(initial.shape)}, but the targets "
                f"have shape {tuple(x_all.shape)}; resize the images to the generator's resolution"
            )
        losses = np.zeros((config.iterations + 1, x_all.shape[0]), dtype=np.float64)
        found: list[torch.Tensor] = []
        bar = tqdm(
            total=config.iterations * x_all.shape[0],
            desc="z inversion (L-BFGS)",
            file=sys.stderr,
            disable=not progress,
        )
        try:
            for index in range(x_all.shape[0]):
                x = x_all[index : index + 1]
                with torch.no_grad():
                    x_features = feature_net(x) if feature_net is not None else None
                z = z0_all[index : index + 1].clone().requires_grad_(True)
                optimizer = torch.optim.LBFGS(
                    [z],
                    lr=config.lr,
                    max_iter=1,
                    history_size=config.history_size,
                    line_search_fn=config.line_search,
                )

                def loss_of_z() -> torch.Tensor:
                    image = generator(z)
                    loss = config.pixel_weight * _per_image_l1(x, image).sum()
                    if feature_net is not None:
                        loss = loss + config.feature_weight * _per_image_l1(x_features, feature_net(image)).sum()
                    return loss

                def closure() -> torch.Tensor:
                    optimizer.zero_grad(set_to_none=True)
                    loss = loss_of_z()
                    loss.backward()
                    return loss

                for iteration in range(config.iterations):
                    losses[iteration, index] = float(optimizer.step(closure).detach())
                    bar.update(1)
                with torch.no_grad():
                    losses[config.iterations, index] = float(loss_of_z())
                found.append(z.detach())
        finally:
            bar.close()
        z_star = torch.cat(found)
        with torch.no_grad():
            reconstruction = generator(z_star)

    return ZInversionResult(
        reconstruction=reconstruction.cpu(),
        initial_reconstruction=initial.cpu(),
        latents=z_star.cpu(),
        initial_latents=z0_all.cpu(),
        losses=losses,
        config=config,
    )

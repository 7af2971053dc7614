"""Training an inversion encoder for any split generator, on generated images only.

The recipe is the paper's (see `EncoderTrainingConfig` for every number, defaults the paper's), for a
generator cut at ``split`` into layers g_1 .. g_k up to the representation r (the offset layers, then
the split layer) and the rest G_f:

1. Per-layer stage, each part alone, with z ~ N(0, I) and Adam:

   - the backbone learns r from x = G_f(r) with MSE (lr 0.01, 10k steps);
   - the inverter of layer i learns its input s from its output g_i(s) with
     ``cos_err(s, e(g_i(s))) + 0.01 * cos_err(g_i(s), g_i(e(g_i(s))))`` (lr 1e-4, 10k steps,
     lr x 0.1 at 20% and 60% of the steps), where ``cos_err(a, b)`` is the mean over positions of
     1 - cosine similarity over channels.

2. Joint fine-tuning of the chained encoder E:
   ``cos_err(r, backbone(x)) + cos_err(z, E(x)) + cos_err(r, g_k..g_1(E(x))) + MSE(x, G(E(x)))``
   (lr 1e-5, 100k steps, halved at 5%, 15% and 35%). Gradients flow through the frozen generator.

Gradients are zeroed before every step (the paper's code never zeroes them; we do on purpose). The
latents of step s of stage j come from a generator seeded by ``(seed, j, s)``, so a run resumed from
a checkpoint (`train_encoder` with ``checkpoint=`` and ``resume=True``) continues exactly as an
uninterrupted run would. Progress goes to stderr.

`encoder_for` picks the architecture: the paper's `HybridEncoder` for a 256 px Progressive GAN split
after ``layer4``, else the generic `SmallEncoder` shaped from the generator's layer shapes.

Example (a tiny random generator; real use trains on a published one for hours on a GPU)::

    >>> from fsd.invert.proggan import ProGAN
    >>> g = ProGAN([8, 8, 8, 8, 4, 4], z_dim=8)
    >>> short = StageSchedule(steps=2, lr=1e-3)
    >>> config = EncoderTrainingConfig(batch_size=4, backbone=short, layers=short, joint=short)
    >>> result = train_encoder(g, config=config, progress=False)
    >>> list(result.history)
    ['backbone', 'inv4', 'inv3', 'inv2', 'inv1', 'joint']
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from fsd.checkpoints import read_checkpoint
from fsd.generators import derived_seed
from fsd.errors import InputError, WeightsError
from fsd.invert.encoder import (
    HybridEncoder,
    LayerEncoder,
    SmallEncoder,
    _atomic_save,
)
from fsd.invert.inversion import _frozen, _placement
from fsd.invert.split import PROGGAN_SPLIT, LayerSplit, SplitGenerator

__all__ = [
    "StageSchedule",
    "PAPER_BACKBONE",
    "PAPER_LAYERS",
    "PAPER_JOINT",
    "EncoderTrainingConfig",
    "EncoderTraining",
    "GeneratorLayers",
    "cos_err",
    "encoder_for",
    "train_encoder",
]

CHECKPOINT_FORMAT = "fsd-encoder-training/1"


@dataclass(frozen=True)
class StageSchedule:
    """Steps and learning rate of one stage: ``lr`` times ``decay`` once per milestone passed.

    ``milestones`` are fractions of ``steps``, so a shortened stage keeps the schedule's shape:
    update s (from 0) uses ``lr * decay**n`` where n counts the milestones passed, milestone m being
    passed from update ``round(m * steps)`` on (halves rounded up, and never before update 1, so the
    first update always uses ``lr``; see `milestone_steps`). ``steps=0`` skips the stage.
    `with_steps` shortens (or lengthens) a stage, milestones kept in proportion.
    """

    steps: int
    lr: float
    milestones: tuple[float, ...] = ()
    decay: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, (int, np.integer)) or self.steps < 0:
            raise InputError(f"StageSchedule.steps must be an integer >= 0, got {self.steps!r}")
        object.__setattr__(self, "steps", int(self.steps))
        if not _is_number(self.lr) or not _is_number(self.decay) or not self.lr > 0 or not self.decay > 0:
            raise InputError(f"StageSchedule.lr and decay must be numbers > 0, got {self.lr!r} and {self.decay!r}")
        if isinstance(self.milestones, (str, bytes)) or not all(_is_number(m) for m in self.milestones):
            raise InputError(f"StageSchedule.milestones must be fractions of the steps, got {self.milestones!r}")
        object.__setattr__(self, "milestones", tuple(float(m) for m in self.milestones))
        if list(self.milestones) != sorted(self.milestones) or any(not 0 <= m <= 1 for m in self.milestones):
            raise InputError(
                f"StageSchedule.milestones must be increasing fractions in [0, 1], got {self.milestones}"
            )

    @property
    def milestone_steps(self) -> tuple[int, ...]:
        """The update from which each milestone's decay applies (the paper's 10k-step layer stage:
        2000 and 6000; the same stage with 10 steps: 2 and 6)."""
        return tuple(0 if m == 0 else max(1, math.floor(m * self.steps + 0.5)) for m in self.milestones)

    def learning_rate(self, step: int) -> float:
        drops = sum(1 for first in self.milestone_steps if step >= first)
        return self.lr * self.decay**drops

    def with_steps(self, steps: int) -> StageSchedule:
        """This schedule over ``steps`` updates: the same lr, decay and milestone fractions."""
        return replace(self, steps=steps)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(value)


# The paper's stages (see the module docstring).
PAPER_BACKBONE = StageSchedule(10_000, 0.01)
PAPER_LAYERS = StageSchedule(10_000, 1e-4, (0.2, 0.6), 0.1)
PAPER_JOINT = StageSchedule(100_000, 1e-5, (0.05, 0.15, 0.35), 0.5)


@dataclass(frozen=True)
class EncoderTrainingConfig:
    """Every number of the training recipe; the defaults are the paper's (Adam, batch 32).

    ``backbone``: the image -> r stage; ``layers``: each per-layer inverter's stage; ``joint``: the
    fine-tuning of the chained encoder. Each is a `StageSchedule`, or a number of steps: the paper's
    schedule of that stage shortened (or lengthened) to that many steps, milestones in proportion, so
    ``EncoderTrainingConfig(backbone=100, layers=100, joint=1000)`` is the paper's recipe in
    miniature. ``cycle_weight``: weight of the re-generation term of the per-layer loss. ``seed``:
    seeds the latents of every step. ``checkpoint_every``: steps between checkpoints (stage ends
    are always saved).
    """

    batch_size: int = 32
    backbone: StageSchedule | int = PAPER_BACKBONE
    layers: StageSchedule | int = PAPER_LAYERS
    joint: StageSchedule | int = PAPER_JOINT
    cycle_weight: float = 0.01
    seed: int = 1
    checkpoint_every: int = 1000

    def __post_init__(self) -> None:
        for name, paper in (("backbone", PAPER_BACKBONE), ("layers", PAPER_LAYERS), ("joint", PAPER_JOINT)):
            value = getattr(self, name)
            if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                object.__setattr__(self, name, paper.with_steps(int(value)))
            elif not isinstance(value, StageSchedule):
                raise InputError(
                    f"EncoderTrainingConfig.{name} must be a StageSchedule or a number of steps (the paper's "
                    f"schedule, shortened in proportion), got {type(value).__name__} {value!r}; e.g. "
                    f"{name}=100 or {name}=StageSchedule(steps=100, lr={paper.lr:g})"
                )
        for name in ("batch_size", "seed", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InputError(f"EncoderTrainingConfig.{name} must be an integer, got {value!r}")
        if self.batch_size < 2:
            # Batch norm in train mode needs two samples to estimate a variance.
            raise InputError(f"EncoderTrainingConfig.batch_size must be >= 2, got {self.batch_size}")
        if not _is_number(self.cycle_weight) or self.cycle_weight < 0:
            raise InputError(f"EncoderTrainingConfig.cycle_weight must be a number >= 0, got {self.cycle_weight!r}")
        if self.checkpoint_every < 1:
            raise InputError(
                f"EncoderTrainingConfig.checkpoint_every must be >= 1, got {self.checkpoint_every}"
            )
        if not 0 <= self.seed < 2**32:
            raise InputError(f"EncoderTrainingConfig.seed must be in [0, 2**32), got {self.seed}")

    def with_steps(self, *, backbone: int | None = None, layers: int | None = None,
                   joint: int | None = None) -> EncoderTrainingConfig:
        """This config with the named stages shortened (or lengthened), milestones in proportion."""
        changes = {name: getattr(self, name).with_steps(steps)
                   for name, steps in (("backbone", backbone), ("layers", layers), ("joint", joint))
                   if steps is not None}
        return replace(self, **changes)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class EncoderTraining:
    """What `train_encoder` returns: the trained encoder (on the CPU, eval mode) and per-stage losses.

    ``history[stage]``: float64 ``(steps,)``, the loss of each update of that stage; the stages are
    ``"backbone"``, the inverters by name (``"inv4"`` .. ``"inv1"`` for the paper's split) and ``"joint"``.
    """

    encoder: LayerEncoder
    history: dict[str, np.ndarray]
    config: EncoderTrainingConfig = field(default_factory=EncoderTrainingConfig)


def cos_err(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over samples and positions of 1 - cosine similarity over channels (dimension 1).

    Latents ``(N, D)`` and ``(N, D, 1, 1)`` compare as one position of D channels.
    """
    a = a.reshape(a.shape[0], a.shape[1], -1)
    b = b.reshape(b.shape[0], b.shape[1], -1)
    if a.shape != b.shape:
        raise InputError(f"cos_err compares tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return (1 - F.cosine_similarity(a, b, dim=1)).mean()


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the wanted layer has run."""


class GeneratorLayers:
    """A generator's layers up to the split as a chain z -> a_1 -> ... -> a_k = r, then G_f.

    The layers are ``split.offset_layers`` followed by ``split.split_after`` (named as in
    ``generator.named_modules()``). `stage` runs one layer on a given input: directly when the
    generator is an ``nn.Sequential`` holding those layers as children, otherwise through the
    generator's own forward with hooks (the earlier layers then run too, on ``z``).
    """

    def __init__(self, generator: nn.Module, split: LayerSplit):
        self.generator = generator
        self.split = split
        self.splitter = SplitGenerator(generator, split)
        self.names: tuple[str, ...] = (*split.offset_layers, split.split_after)
        modules = dict(generator.named_modules())
        self._modules = [modules[name] for name in self.names]
        self._direct: list[nn.Module | None] = [None] * len(self.names)
        if isinstance(generator, nn.Sequential):
            children = list(generator.named_children())
            order = [name for name, _ in children]
            if all(name in order for name in self.names):
                positions = [order.index(name) for name in self.names]
                if positions == sorted(positions):
                    for index in range(1, len(self.names)):
                        between = [m for _, m in children[positions[index - 1] + 1 : positions[index] + 1]]
                        self._direct[index] = nn.Sequential(*between)

    def __len__(self) -> int:
        return len(self.names)

    def activations(self, z: torch.Tensor) -> list[torch.Tensor]:
        """``[a_1, ..., a_k]``: the outputs of the layers for latents ``z`` (a_k is r)."""
        outputs: dict[str, torch.Tensor] = {}

        def recorder(name: str):
            def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
                outputs.setdefault(name, output)

            return hook

        handles = [
            module.register_forward_hook(recorder(name))
            for name, module in zip(self.names[:-1], self._modules[:-1])
        ]
        try:
            r = self.splitter.head(z)
        finally:
            for handle in handles:
                handle.remove()
        return [outputs[name] for name in self.names[:-1]] + [r]

    def stage(self, index: int, inputs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The output of layer ``names[index]`` when its input is ``inputs`` (latents for index 0).

        ``z``: latents of the same batch, used only when the layer must be reached through the
        generator's forward.
        """
        direct = self._direct[index]
        if direct is not None:
            return direct(inputs)
        captured: dict[str, torch.Tensor] = {}

        def capture(module: nn.Module, args: object, output: torch.Tensor) -> None:
            captured["out"] = output
            raise _StopForward

        def replace(module: nn.Module, args: object, output: torch.Tensor) -> torch.Tensor:
            if output.shape != inputs.shape:
                raise InputError(
                    f"layer {self.names[index - 1]!r} outputs {tuple(output.shape)}, "
                    f"but the stage input has shape {tuple(inputs.shape)}"
                )
            return inputs

        handles = [self._modules[index].register_forward_hook(capture)]
        if index > 0:
            handles.append(self._modules[index - 1].register_forward_hook(replace))
        try:
            self.generator(inputs if index == 0 else z)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        if "out" not in captured:
            raise InputError(f"layer {self.names[index]!r} never ran in the generator's forward pass")
        return captured["out"]

    def image(self, r: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """G_f(r): the generator's output from the representation."""
        return self.splitter.tail(r, z)


def _latent_shape(generator: nn.Module, z_dim: int | None) -> tuple[int, ...]:
    if z_dim is None:
        z_dim = getattr(generator, "z_dim", None)
    if isinstance(z_dim, bool) or not isinstance(z_dim, int) or z_dim < 1:
        raise InputError(
            "cannot tell the generator's latent size: it has no integer z_dim attribute; pass z_dim="
            " (--z-dim) to sample standard normal latents of that size"
        )
    return (z_dim,)


def _probe_shapes(
    layers: GeneratorLayers, latent: tuple[int, ...], device: torch.device
) -> tuple[list[tuple[int, ...]], tuple[int, ...]]:
    """Per-sample shapes of the layer outputs and of the generated image."""
    z = torch.randn(2, *latent, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        activations = layers.activations(z)
        image = layers.image(activations[-1], z)
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InputError(f"the generator must return images (N, 3, H, W), got {shape}")
    return [tuple(a.shape[1:]) for a in activations], tuple(image.shape[1:])


def _hybrid_fits(layer_shapes: list[tuple[int, ...]], image_shape: tuple[int, ...]) -> bool:
    if len(layer_shapes) != 4 or image_shape != (3, 256, 256):
        return False
    spatial = [s[1:] for s in layer_shapes]
    return all(len(s) == 3 for s in layer_shapes) and spatial == [(4, 4), (4, 4), (8, 8), (8, 8)]


def encoder_for(
    generator: nn.Module,
    split: LayerSplit = PROGGAN_SPLIT,
    *,
    kind: str = "auto",
    width: int | None = None,
    z_dim: int | None = None,
    device: str | torch.device | None = None,
    seed: int | None = None,
) -> LayerEncoder:
    """A fresh (untrained) encoder fitting ``generator`` cut at ``split``.

    ``kind``: ``"hybrid"`` (the paper's; needs 256 px images and layers shaped like the Progressive
    GAN's layer1..layer4: 4x4, 4x4, 8x8, 8x8), ``"small"`` (`SmallEncoder`, any generator) or
    ``"auto"`` (hybrid where it fits). ``width``: the backbone's first width (default 64 for hybrid,
    as ResNet-18, and 32 for small). ``z_dim``: latent size if the generator has no ``z_dim``.
    ``seed``: seeds the initial weights (without touching the global random state); ``None``
    draws them from the global generator, as any fresh module does.
    """
    if kind not in ("auto", "hybrid", "small"):
        raise InputError(f"unknown encoder kind {kind!r}; use 'auto', 'hybrid' or 'small'")
    latent = _latent_shape(generator, z_dim)
    layers = GeneratorLayers(generator, split)
    with _frozen([generator]):
        layer_shapes, image_shape = _probe_shapes(layers, latent, _placement(generator, device)[0])
    hybrid = kind == "hybrid" or (kind == "auto" and _hybrid_fits(layer_shapes, image_shape))
    if hybrid and not _hybrid_fits(layer_shapes, image_shape):
        raise InputError(
            "the hybrid encoder needs 256 px images and four layers with outputs 4x4, 4x4, 8x8, 8x8 "
            f"(a Progressive GAN split after layer4); this generator makes {image_shape} with layer "
            f"outputs {layer_shapes}: use kind='small'"
        )
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        if hybrid:
            return HybridEncoder(latent[0], [s[0] for s in layer_shapes], width or 64)
        return SmallEncoder(image_shape, layer_shapes, latent, width or 32)


def _check_fits(encoder: LayerEncoder, layer_shapes: list[tuple[int, ...]], latent: tuple[int, ...],
                image_shape: tuple[int, ...], device: torch.device) -> None:
    """Raise `InputError` unless the encoder's estimates have the generator's shapes."""
    if len(encoder.inverters) != len(layer_shapes):
        raise InputError(
            f"the encoder has {len(encoder.inverters)} inverters, but the split has {len(layer_shapes)} "
            "layers up to r (offset layers + split layer); build one with fsd.invert.encoder_for"
        )
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            estimates = encoder.estimates(torch.zeros(2, *image_shape, device=device))
    except RuntimeError as error:
        raise InputError(f"the encoder cannot read the generator's {image_shape} images: {error}") from None
    finally:
        encoder.train(was_training)
    expected = [layer_shapes[-1], *reversed(layer_shapes[:-1]), latent]
    got = [tuple(e.shape[1:]) for e in estimates]
    for want, have in zip(expected, got):
        if have != want and not (len(want) == 1 and have == (want[0], 1, 1)):
            raise InputError(
                f"the encoder's estimates have shapes {got}, but the generator's r, earlier layers and "
                f"z have {expected}; build a fitting encoder with fsd.invert.encoder_for"
            )


def _step_generator(seed: int, stage: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(derived_seed(seed, stage, step))


@contextmanager
def _training(module: nn.Module) -> Iterator[None]:
    previous = module.training
    module.train()
    try:
        yield
    finally:
        module.train(previous)


def _stage_names(encoder: LayerEncoder) -> list[str]:
    return ["backbone", *(name for name, _ in encoder.inverters), "joint"]


def train_encoder(
    generator: nn.Module,
    *,
    split: LayerSplit = PROGGAN_SPLIT,
    encoder: LayerEncoder | None = None,
    z_dim: int | None = None,
    config: EncoderTrainingConfig = EncoderTrainingConfig(),
    device: str | torch.device | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> EncoderTraining:
    """Train an inversion encoder for ``generator`` cut at ``split``; see the module docstring.

    ``encoder``: the encoder to train (default `encoder_for` the generator). ``z_dim``: latent size
    when the generator has no ``z_dim`` attribute. ``device``: where to train (default: the
    generator's). ``checkpoint``: a file saved every ``config.checkpoint_every`` steps and at each
    stage's end; with ``resume=True`` an existing one is continued (it must come from the same
    architecture, split and config), without it an existing file is an error. The generator is
    moved to ``device`` and runs frozen in eval mode (its flags are restored afterwards); the
    encoder is trained in place and returned on the CPU.
    """
    run_device = _placement(generator, device)[0]
    latent = _latent_shape(generator, z_dim)
    layers = GeneratorLayers(generator, split)
    generator.to(run_device)
    with _frozen([generator]):
        layer_shapes, image_shape = _probe_shapes(layers, latent, run_device)
        if encoder is None:
            encoder = encoder_for(generator, split, z_dim=latent[0], device=run_device)
        if not isinstance(encoder, LayerEncoder):
            raise InputError(f"encoder must be a LayerEncoder, got {type(encoder).__name__}")
        encoder.to(run_device)
        _check_fits(encoder, layer_shapes, latent, image_shape, run_device)

        stages = _stage_names(encoder)
        history = {name: np.zeros(0, dtype=np.float64) for name in stages}
        start_stage, start_step, optimizer_state = 0, 0, None
        checkpoint_path = Path(checkpoint) if checkpoint is not None else None
        identity = {
            "architecture": encoder.architecture,
            "split": [split.split_after, list(split.offset_layers)],
            # checkpoint_every may change between runs; every other setting must not.
            "config": {k: v for k, v in config.to_dict().items() if k != "checkpoint_every"},
        }
        if checkpoint_path is not None and checkpoint_path.exists():
            if not resume:
                raise InputError(
                    f"checkpoint {checkpoint_path} exists; pass resume=True (--resume) to continue it, "
                    "or delete it to start over"
                )
            saved = _load_checkpoint(checkpoint_path, identity)
            encoder.load_state_dict(saved["encoder"])
            history = {name: saved["history"][name].numpy().astype(np.float64) for name in stages}
            start_stage, start_step = int(saved["stage"]), int(saved["step"])
            optimizer_state = saved.get("optimizer")

        def save(stage: int, step: int, optimizer: torch.optim.Optimizer | None) -> None:
            if checkpoint_path is None:
                return
            _atomic_save(
                {
                    "format": CHECKPOINT_FORMAT,
                    **identity,
                    "encoder": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
                    "stage": stage,
                    "step": step,
                    "optimizer": optimizer.state_dict() if optimizer is not None else None,
                    "history": {k: torch.from_numpy(v.copy()) for k, v in history.items()},
                },
                checkpoint_path,
            )

        for stage_index in range(start_stage, len(stages)):
            name = stages[stage_index]
            module, schedule, loss_of = _stage_plan(
                name, stage_index, encoder, layers, config
            )
            first = start_step if stage_index == start_stage else 0
            optimizer = torch.optim.Adam(module.parameters(), lr=schedule.lr)
            if stage_index == start_stage and optimizer_state is not None and first > 0:
                optimizer.load_state_dict(optimizer_state)
            losses = list(history[name][:first])
            bar = tqdm(total=schedule.steps, initial=first, desc=f"encoder {name}", file=sys.stderr,
                       disable=not progress)
            try:
                with _training(module):
                    for step in range(first, schedule.steps):
                        z = torch.randn(
                            config.batch_size, *latent, generator=_step_generator(config.seed, stage_index, step)
                        ).to(run_device)
                        for group in optimizer.param_groups:
                            group["lr"] = schedule.learning_rate(step)
                        optimizer.zero_grad(set_to_none=True)
                        loss = loss_of(z)
                        loss.backward()
                        optimizer.step()
                        losses.append(float(loss.detach()))
                        # this step's loss, shown with the count it completes (not at the next redraw)
                        bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
                        bar.update(1)
                        history[name] = np.asarray(losses, dtype=np.float64)
                        if (step + 1) % config.checkpoint_every == 0 and step + 1 < schedule.steps:
                            save(stage_index, step + 1, optimizer)
            finally:
                bar.close()
            history[name] = np.asarray(losses, dtype=np.float64)
            save(stage_index + 1, 0, None)

    encoder.eval()
    encoder.cpu()
    return EncoderTraining(encoder=encoder, history=history, config=config)


def _stage_plan(
    name: str, stage_index: int, encoder: LayerEncoder, layers: GeneratorLayers, config: EncoderTrainingConfig
) -> tuple[nn.Module, StageSchedule, Callable[[torch.Tensor], torch.Tensor]]:
    """The module a stage trains, its schedule, and its loss as a function of the latents."""
    if name == "backbone":
        backbone = encoder.backbone

        def backbone_loss(z: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                r = layers.activations(z)[-1]
                x = layers.image(r, z)
            return F.mse_loss(backbone(x), r)

        return backbone, config.backbone, backbone_loss
    if name == "joint":

        def joint_loss(z: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                r = layers.activations(z)[-1]
                x = layers.image(r, z)
            estimates = encoder.estimates(x)
            z_hat = estimates[-1]
            r_again, x_again = layers.splitter(z_hat)
            return (
                cos_err(r, estimates[0])
                + cos_err(z, z_hat)
                + cos_err(r, r_again)
                + F.mse_loss(x_again, x)
            )

        return encoder, config.joint, joint_loss
    # Inverter j (in run order, from the backbone's end) undoes layer k - j, counted from 0.
    position = stage_index - 1
    layer = len(layers) - 1 - position
    inverter = encoder.inverters[position][1]

    def layer_loss(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            activations = layers.activations(z)
        source = z if layer == 0 else activations[layer - 1]
        target = activations[layer]
        estimate = inverter(target)
        regenerated = layers.stage(layer, estimate, z)
        return cos_err(source, estimate) + config.cycle_weight * cos_err(target, regenerated)

    return inverter, config.layers, layer_loss


def _load_checkpoint(path: Path, identity: dict[str, object]) -> dict:
    saved = read_checkpoint(path, "training checkpoint (delete it to start over)")
    if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(f"{path} is not an encoder training checkpoint ({CHECKPOINT_FORMAT})")
    for key, value in identity.items():
        if _plain(saved.get(key)) != _plain(value):
            raise InputError(
                f"checkpoint {path} was made with another {key} ({saved.get(key)!r}, now {value!r}); "
                "resume with the same settings, or use another checkpoint file"
            )
    return saved


def _plain(value: object) -> object:
    """Tuples as lists, so settings compare equal after a save/load round trip."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


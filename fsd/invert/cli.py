"""``python -m fsd.invert``: which objects a generator cannot draw in real photos, and encoder training.

  python -m fsd.invert PHOTOS --generator proggan:church --out DIR
  python -m fsd.invert train-encoder --generator SPEC --out encoder.pth

Click commands only: parse, call `fsd.invert.omissions.invert_folder` / `fsd.invert.train.train_encoder`,
print. Results on stdout, progress and warnings on stderr; exit status 0, 2 for bad input, 1 for
other failures (`fsd.cli.run_guarded`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from fsd import __version__
from fsd._io import check_output_folder
from fsd._text import plural
from fsd.cli import DefaultCommandGroup, run_guarded
from fsd.errors import InputError, WeightsError


class _DefaultToInvert(DefaultCommandGroup):
    """``python -m fsd.invert PHOTOS ...`` runs ``invert``; a first argument naming a subcommand runs it,
    unless a file or folder of that name exists (then it is the photos)."""

    default_command = "invert"
    default_usage = "python -m fsd.invert PHOTOS"


@click.group(cls=_DefaultToInvert, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="python -m fsd.invert")
def cli() -> None:
    """Layer inversion: which objects a generator cannot draw in real photos.

    \b
      python -m fsd.invert PHOTOS --generator proggan:church --out DIR
      python -m fsd.invert train-encoder --generator SPEC --out encoder.pth

    The first inverts every photo through the generator (the paper's layer inversion), segments
    the photo and its reconstruction, and writes reconstructions, panels, tables and an HTML page
    to DIR. The second trains an inversion encoder, for a generator that has no published one
    (inverting needs an encoder's first estimate of each photo's latent).
    """


def _generator_option(f):
    return click.option(
        "--generator", "generator_spec", required=True, metavar="SPEC",
        help="proggan:NAME (a published Progressive GAN: church, bedroom, ...), a Progressive GAN "
             "checkpoint file (.pth), or MODULE:NAME / path/to/file.py:NAME (an nn.Module, or a class / "
             "no-argument function building one).",
    )(f)


def _split_options(f):
    f = click.option("--offset-layers", default=None, metavar="A,B,...",
                     help="Layers whose outputs get optimized offsets, in run order (with --split-after). "
                          "Default for the Progressive GAN: layer1,layer2,layer3.")(f)
    f = click.option("--split-after", default=None, metavar="LAYER",
                     help="The layer whose output is the representation r (a name from "
                          "generator.named_modules()). Default: layer4, the paper's split.")(f)
    return f


def _common_options(f):
    f = click.option("--debug", is_flag=True, help="Show tracebacks.")(f)
    f = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")(f)
    f = click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")(f)
    f = click.option("--weights-dir", type=click.Path(file_okay=False),
                     help="Folder of downloaded model files (upp-resnet50-upernet/, proggan-NAME/, "
                          "encoder-NAME/); used as is, never downloaded into. Default: $FSD_WEIGHTS_DIR, "
                          "else the cache.")(f)
    f = click.option("--device", help="torch device, e.g. cuda, cuda:1, cpu, mps. Default: CUDA, else MPS, else CPU.")(f)
    return f


def _parse_split(split_after: str | None, offset_layers: str | None):
    from fsd.invert.split import PROGGAN_SPLIT, LayerSplit

    if split_after is None:
        if offset_layers is not None:
            raise click.UsageError("--offset-layers needs --split-after")
        return PROGGAN_SPLIT
    layers = tuple(name.strip() for name in offset_layers.split(",") if name.strip()) if offset_layers else ()
    if not layers:
        raise click.UsageError("--split-after needs --offset-layers: the layers (before the split) whose "
                               "outputs get the optimized offsets, e.g. layer1,layer2,layer3")
    return LayerSplit(split_after, layers)


def _load_generator(spec: str, device, weights_dir: str | None, progress: bool):
    """The generator as an ``nn.Module`` (layer inversion hooks into its submodules)."""
    import torch

    from fsd.generators import load_generator
    from fsd.invert.proggan import load_proggan

    path = Path(spec)
    if path.is_file() and path.suffix.lower() != ".py":
        if path.suffix.lower() in (".pt2", ".ts", ".jit", ".torchscript"):
            raise InputError(
                f"{spec}: layer inversion hooks into the generator's layers, which torch.export and "
                "TorchScript models do not expose; pass the generator as MODULE:NAME or file.py:NAME"
            )
        try:
            generator = load_proggan(path)
        except WeightsError as error:
            raise InputError(
                f"--generator {spec}: a file must be a Progressive GAN checkpoint ({error}); pass other "
                "generators as MODULE:NAME or path/to/file.py:NAME"
            ) from error
    else:
        generator = load_generator(spec, weights_dir=weights_dir, progress=progress)
    if not isinstance(generator, torch.nn.Module):
        raise InputError(
            f"--generator {spec} is a {type(generator).__name__}; layer inversion needs an nn.Module "
            "(it hooks into the generator's layers)"
        )
    generator.eval().requires_grad_(False)
    return generator.to(device)


def _device(device: str | None):
    """The ``--device`` (default: CUDA, else MPS, else CPU), checked to exist here (an InputError if not)."""
    from fsd.devices import resolve_device

    return resolve_device(device)


def _features(spec: str):
    """The perceptual network: ``vgg16`` (the paper's) and ``none`` (pixel loss only) as named, or the
    module MODULE:NAME builds."""
    from torch import nn

    if spec in ("vgg16", "none"):
        return spec
    from fsd.generators import load_generator

    try:
        network = load_generator(spec)
    except InputError as error:
        raise InputError(f"--features {spec}: {error}") from error
    if not isinstance(network, nn.Module):
        raise InputError(f"--features {spec} is a {type(network).__name__}, not an nn.Module")
    return network


def _published_encoder_name(encoder_path: str | None, generator_spec: str) -> str | None:
    """The published encoder to use (``None`` with ``--encoder``); an error if there is none."""
    from fsd.invert.encoder import ENCODER_ARTIFACTS
    from fsd.invert.weights import proggan_artifact

    name = generator_spec.split(":", 1)[1] if generator_spec.startswith("proggan:") else None
    if name is not None:
        try:
            proggan_artifact(name)  # an unknown name is that, not a missing encoder
        except InputError as error:
            raise InputError(f"--generator {generator_spec}: {error}") from None
    if encoder_path is not None:
        return None
    if name in ENCODER_ARTIFACTS:
        return name
    raise InputError(
        f"no published inversion encoder for --generator {generator_spec} (published: "
        f"{', '.join('proggan:' + n for n in ENCODER_ARTIFACTS)}); pass --encoder PATH, e.g. one trained with "
        f"`python -m fsd.invert train-encoder --generator {generator_spec} --out encoder.pth`"
    )


def _load_start(encoder_path: str | None, published: str | None, weights_dir, progress: bool):
    from fsd.invert.encoder import encoder, load_encoder

    if encoder_path is not None:
        return load_encoder(encoder_path).eval().requires_grad_(False)
    return encoder(published, weights_dir=weights_dir, progress=progress)


@cli.command("invert")
@click.argument("photos", type=click.Path(exists=True))
@_generator_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder (see docs/invert.md for its layout).")
@click.option("--encoder", "encoder_path", type=click.Path(exists=True, dir_okay=False),
              help="Encoder file (from train-encoder, or a published hybrid encoder). Default: the "
                   "published encoder of proggan:church / proggan:bedroom.")
@click.option("--steps", type=click.IntRange(min=0), default=3000, show_default=True,
              help="Inversion steps per photo (the paper: 3000).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.01, show_default=True,
              help="Adam learning rate of the offsets, halved after steps 800, 1200, 1800.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Photos inverted together (independent runs, batched for speed).")
@click.option("--features", "features_spec", default="vgg16", show_default=True, metavar="vgg16|none|SPEC",
              help="Perceptual network of the loss: vgg16 (torchvision's ImageNet VGG16 to relu4_2, the "
                   "paper's), none (pixel loss only), or MODULE:NAME / file.py:NAME.")
@click.option("--imagenet-normalization", is_flag=True,
              help="Feed the perceptual network ImageNet-normalized images (the paper feeds [-1, 1]).")
@_split_options
@click.option("--min-loss", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Percentage points of the image from which a class counts as lost in a photo.")
@click.option("--legend-classes", type=click.IntRange(min=1), default=8, show_default=True,
              help="Classes in each panel's legend.")
@click.option("--rank-by", multiple=True, metavar="CLASS",
              help="Rank the photos by how much of CLASS they lost (e.g. person); repeatable.")
@click.option("--skip-bad-images", is_flag=True, help="Skip unreadable photos (reported on stderr).")
@click.option("--overwrite", is_flag=True, help="Write into an output folder that already holds files.")
@_common_options
def invert_command(photos, generator_spec, out_dir, encoder_path, steps, lr, batch_size, features_spec,
                   imagenet_normalization, split_after, offset_layers, min_loss, legend_classes, rank_by,
                   skip_bad_images, overwrite, device, weights_dir, as_json, quiet, debug) -> None:
    """Invert every photo in PHOTOS through the generator and show what it could not reconstruct."""

    def action() -> None:
        from fsd.api import load_segmenter
        from fsd.invert.inversion import InversionConfig
        from fsd.invert.omissions import ReportOptions, invert_folder

        progress = not quiet
        split = _parse_split(split_after, offset_layers)
        options = ReportOptions(min_loss=min_loss, legend_classes=legend_classes, rank_by=tuple(rank_by))
        config = InversionConfig(steps=steps, lr=lr, imagenet_normalization=imagenet_normalization,
                                 snapshot_steps=())
        check_output_folder(out_dir, overwrite=overwrite)  # before the models load; created only once all is checked
        published = _published_encoder_name(encoder_path, generator_spec)
        run_device = _device(device)
        generator = _load_generator(generator_spec, run_device, weights_dir, progress)
        start = _load_start(encoder_path, published, weights_dir, progress)
        features = _features(features_spec)
        segmenter = load_segmenter("upp", device=run_device, weights_dir=weights_dir, progress=progress)
        result = invert_folder(
            photos, out_dir, generator=generator, start=start, segmenter=segmenter, split=split,
            features=features, config=config, options=options, batch_size=batch_size, device=run_device,
            skip_bad_images=skip_bad_images, overwrite=overwrite, progress=progress,
            provenance={"generator": generator_spec, "features": features_spec,
                        "encoder": encoder_path or f"published encoder {published}"},
        )
        if as_json:
            click.echo(json.dumps({
                "out": os.fspath(out_dir),
                "n_photos": result.report.n,
                "files": {role: os.fspath(path) for role, path in result.files.items()},
                "classes": [row.to_record() for row in result.report.classes() if row.photos_lost > 0],
                "skipped": [{"id": ident, "reason": reason} for ident, reason in result.skipped],
            }, allow_nan=False))
            return
        click.echo(result.report.format_table())
        click.echo(f"wrote {plural(result.report.n, 'reconstruction')}, panels and {result.files['html']} to "
                   f"{out_dir}", err=True)

    run_guarded(debug, action)


def _fractions(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{option} takes comma-separated fractions, e.g. 0.2,0.6") from None


@cli.command("train-encoder")
@_generator_option
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Encoder file to write (load it with --encoder or fsd.invert.load_encoder).")
@click.option("--checkpoint", type=click.Path(dir_okay=False),
              help="Training state, saved every --checkpoint-every steps. Default: OUT.training.pt.")
@click.option("--resume", is_flag=True, help="Continue from --checkpoint if it exists.")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--architecture", type=click.Choice(["auto", "hybrid", "small"]), default="auto",
              show_default=True,
              help="hybrid: the paper's encoder (256 px Progressive GAN split after layer4); small: a generic "
                   "encoder shaped from the generator's layers; auto: hybrid where it fits.")
@click.option("--width", type=click.IntRange(min=1), default=None,
              help="First width of the encoder's backbone (default 64 for hybrid, 32 for small).")
@click.option("--z-dim", type=click.IntRange(min=1), default=None,
              help="Latent size, if the generator has no z_dim attribute.")
@_split_options
@click.option("--batch-size", type=click.IntRange(min=2), default=32, show_default=True)
@click.option("--backbone-steps", type=click.IntRange(min=0), default=10_000, show_default=True)
@click.option("--backbone-lr", type=float, default=0.01, show_default=True)
@click.option("--layer-steps", type=click.IntRange(min=0), default=10_000, show_default=True,
              help="Steps of each per-layer inverter.")
@click.option("--layer-lr", type=float, default=1e-4, show_default=True)
@click.option("--layer-milestones", default="0.2,0.6", show_default=True, metavar="F,F",
              help="Fractions of --layer-steps after which the lr is multiplied by --layer-decay.")
@click.option("--layer-decay", type=float, default=0.1, show_default=True)
@click.option("--joint-steps", type=click.IntRange(min=0), default=100_000, show_default=True)
@click.option("--joint-lr", type=float, default=1e-5, show_default=True)
@click.option("--joint-milestones", default="0.05,0.15,0.35", show_default=True, metavar="F,F,F")
@click.option("--joint-decay", type=float, default=0.5, show_default=True)
@click.option("--cycle-weight", type=float, default=0.01, show_default=True,
              help="Weight of the re-generation term of the per-layer loss.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=1, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file (--resume does too).")
@_common_options
def train_encoder_command(generator_spec, out_path, checkpoint, resume, checkpoint_every, architecture, width,
                          z_dim, split_after, offset_layers, batch_size, backbone_steps, backbone_lr,
                          layer_steps, layer_lr, layer_milestones, layer_decay, joint_steps, joint_lr,
                          joint_milestones, joint_decay, cycle_weight, seed, overwrite, device, weights_dir,
                          as_json, quiet, debug) -> None:
    """Train an inversion encoder for a generator on its own samples (the paper's recipe)."""

    def action() -> None:
        from fsd.invert.encoder import save_encoder
        from fsd.invert.train import EncoderTrainingConfig, StageSchedule, encoder_for, train_encoder

        progress = not quiet
        split = _parse_split(split_after, offset_layers)
        config = EncoderTrainingConfig(
            batch_size=batch_size,
            backbone=StageSchedule(backbone_steps, backbone_lr),
            layers=StageSchedule(layer_steps, layer_lr, _fractions(layer_milestones, "--layer-milestones"),
                                 layer_decay),
            joint=StageSchedule(joint_steps, joint_lr, _fractions(joint_milestones, "--joint-milestones"),
                                joint_decay),
            cycle_weight=cycle_weight,
            seed=seed,
            checkpoint_every=checkpoint_every,
        )
        run_device = _device(device)
        generator = _load_generator(generator_spec, run_device, weights_dir, progress)
        encoder = encoder_for(generator, split, kind=architecture, width=width, z_dim=z_dim, device=run_device,
                              seed=seed)
        state = Path(checkpoint) if checkpoint else Path(f"{out_path}.training.pt")
        if Path(out_path).exists() and not (overwrite or resume):
            raise InputError(f"{out_path} exists; choose another --out, pass --overwrite to replace it, or "
                             f"--resume to continue its training from {state}")
        result = train_encoder(generator, split=split, encoder=encoder, z_dim=z_dim, config=config,
                               device=run_device, checkpoint=state, resume=resume, progress=progress)
        save_encoder(result.encoder, out_path)
        summary = {
            stage: {"steps": int(losses.size),
                    "first_loss": float(losses[0]) if losses.size else None,
                    "last_loss": float(losses[-1]) if losses.size else None}
            for stage, losses in result.history.items()
        }
        if as_json:
            click.echo(json.dumps({"encoder": os.fspath(out_path), "checkpoint": os.fspath(state),
                                   "architecture": result.encoder.architecture, "stages": summary}))
            return
        for stage, row in summary.items():
            if row["steps"]:
                click.echo(f"{stage:>10}: {plural(row['steps'], 'step')}, loss {row['first_loss']:.4f} -> "
                           f"{row['last_loss']:.4f}")
            else:
                click.echo(f"{stage:>10}: skipped (0 steps)")
        click.echo(f"wrote the encoder to {out_path} (training state: {state})", err=True)

    run_guarded(debug, action)


def main() -> None:
    cli(prog_name="python -m fsd.invert")

"""The command line: parse, call the API, print. Results on stdout, everything else on stderr.

Launched with ``torchrun --nproc_per_node N -m fsd ...`` (or the ``fsd`` script under torchrun), the
commands initialize torch.distributed from the environment (NCCL on each rank's GPU, gloo on CPU), shard
every source across the ranks (see `fsd.distributed`) and print the result, warnings and errors once,
on rank 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import warnings
from collections.abc import Callable, Iterator

import click

from . import __version__
from ._page import DEFAULT_CLASSES, DEFAULT_EXAMPLES
from ._text import plural
from .errors import FSDError, InputError
from .weights_cli import weights_group


SORT_CHOICES = ["real", "relative", "absolute", "significance"]
SORT_OPTION_HELP = ("Order of the per-class table: real (mean area in the real set), relative (|relative change|), "
                    "absolute (|change| in percentage points), each largest first; significance (smallest q-value first).")


class DefaultCommandGroup(click.Group):
    """A group whose first argument names a subcommand only if it is one; anything else runs the
    ``default_command``. So ``fsd REAL FAKE`` runs ``compute`` and ``fsd report ...`` runs ``report``.

    A first argument that is both a subcommand and an existing file or folder (a folder called ``report``)
    is read as the path when the rest of the command line makes sense that way (``fsd report FAKE``), and
    as the subcommand otherwise (``fsd report a.npz b.npz``, which ``compute`` cannot take).

    ``--help`` shows the default command's options too: they are what ``fsd REAL FAKE`` takes.
    """

    default_command = "compute"
    default_usage = "fsd REAL FAKE"  # the default command's command line, as the help names it

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        from pathlib import Path

        ctx.meta["fsd.command_line"] = [ctx.info_name or "fsd", *args]  # as typed, for the HTML report
        if args and args[0] not in ("--help", "-h", "--version"):
            if args[0] not in self.commands:
                args = [self.default_command, *args]
            elif Path(args[0]).exists() and self._parses_as_default(ctx, args):
                args = [self.default_command, *args]
        return super().parse_args(ctx, args)

    def _parses_as_default(self, ctx: click.Context, args: list[str]) -> bool:
        command = self.commands[self.default_command]
        try:
            with command.make_context(self.default_command, list(args), parent=ctx):
                return True
        except click.UsageError:
            return False

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_options(ctx, formatter)
        command = self.commands[self.default_command]
        with click.Context(command, info_name=ctx.info_name, parent=ctx) as sub:
            rows = [r for p in command.get_params(sub)
                    if isinstance(p, click.Option) and (r := p.get_help_record(sub)) is not None]
        with formatter.section(f"Options of {self.default_usage} (the default command)"):
            formatter.write_dl(rows)


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise): only rank 0 prints."""
    from .distributed import current_world, is_initialized

    if is_initialized():
        return current_world().rank
    rank = os.environ.get("RANK", "0")
    return int(rank) if rank.isdigit() and os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1") else 0


def _show_warning(message, category, filename, lineno, file=None, line=None):
    if _rank() == 0:
        click.echo(f"warning: {message}", err=True)


def _echo(message: str, err: bool = False) -> None:
    if _rank() == 0:
        click.echo(message, err=err)


def run_guarded(debug: bool, action: Callable[[], None]) -> None:
    """Exit 2 on bad input, 1 on other failures, with a one-line message (a traceback with --debug).

    Under torchrun an error every rank knows of is printed by rank 0 alone; an error only one rank met
    is printed by that rank, prefixed with its number.
    """
    from ._hints import command_line

    warnings.showwarning = _show_warning
    rank = _rank()
    try:
        with command_line():  # hints in messages name command-line options, not Python keywords
            action()
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException:
        raise  # usage errors: click prints them and exits with status 2
    except Exception as exc:
        if debug:
            import traceback

            traceback.print_exc()  # the same exit status follows, with or without --debug
        _print_error(exc, rank)
        sys.exit(2 if isinstance(exc, InputError) else 1)


def _print_error(exc: Exception, rank: int) -> None:
    if getattr(exc, "_fsd_printed", False):
        return
    from .distributed import was_reported_to_all

    kind = "error" if isinstance(exc, (FSDError, ImportError)) else f"error ({type(exc).__name__})"
    if rank == 0:
        click.echo(f"{kind}: {exc}", err=True)
    elif not was_reported_to_all(exc):
        click.echo(f"[rank {rank}] {kind}: {exc}", err=True)
    exc._fsd_printed = True


@contextlib.contextmanager
def _torchrun_session(device: str | None) -> Iterator[None]:
    """Initialize torch.distributed from torchrun's environment for the command, and shut it down after.

    An error every rank knows of is printed by rank 0 before any rank exits: torchrun stops the other
    processes as soon as one ends with an error, which could cut rank 0 off before it printed.
    """
    from . import distributed

    started = distributed.init_from_environment(device)
    if started and distributed.current_world().is_main:
        _warn_about_threads(distributed)
    try:
        yield
    except Exception as exc:
        if started and distributed.was_reported_to_all(exc):
            _print_error(exc, _rank())
            _barrier()
        raise
    finally:
        if started:
            distributed.shutdown()


def _warn_about_threads(distributed) -> None:
    """Under torchrun on the CPU: each process runs its own thread count (torchrun sets 1), and float32
    convolutions round differently with another count, so labels at near-ties differ from ``python -m fsd``."""
    import torch.distributed as dist

    if dist.get_backend() != "gloo":
        return
    import torch

    from ._text import plural, warn

    warn(f"under torchrun on the CPU each process segments with {plural(torch.get_num_threads(), 'thread')} "
         "(torchrun sets OMP_NUM_THREADS=1 unless it is set); float32 rounding depends on the thread count, "
         "so a few labels at near-ties can differ from a run with another count (see the README's \"What is "
         "exact\"). For results that agree, run every job with the same OMP_NUM_THREADS.")


def _barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


@click.group(cls=DefaultCommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fsd")
def cli() -> None:
    """Fréchet Segmentation Distance: what a generator fails to generate.

    \b
      fsd REAL FAKE                      FSD between two image folders or saved .npz statistics
      fsd REAL --generator SPEC -n N     FSD of N samples of a generator (proggan:NAME, MODULE:NAME,
                                         diffusers:PATH)
      fsd lsun_church FAKE               against the paper's published baseline (or lsun_bedroom)
      fsd --save-stats SOURCE OUT.npz    save the statistics of a folder for later
      fsd report REAL.npz FAKE.npz       per-class report and figure from saved statistics
      fsd compare REAL FAKE_A FAKE_B     several models against one real set, with paired intervals
      fsd sample SPEC OUT_DIR -n N       write N samples of a generator as PNG files
      fsd weights download --to DIR      fetch the model files ahead of time (clusters, outages)

    \b
    Under torchrun (torchrun --nproc_per_node 4 -m fsd REAL FAKE) the work is shared by the processes
    and the result printed once. REAL and FAKE may be the names lsun_church / lsun_bedroom, unless a
    file or folder of that name exists: an existing path wins (also over a command name, where the
    rest of the command line fits the default command).
    """


def _segmenter_options(f):
    f = click.option("--precision", type=click.Choice(["float32", "tf32", "bfloat16", "float16"]), default="float32",
                     show_default=True,
                     help="float32: the paper's labels. tf32/bfloat16/float16: faster on GPUs, labels differ slightly "
                          "(see benchmarks/README.md); such statistics are never compared with float32 ones.")(f)
    f = click.option("--num-classes", type=click.IntRange(min=1),
                     help="Number of classes, for --segmenter labelmap.")(f)
    f = click.option("--segmenter", type=click.Choice(["upp", "labelmap"]), default="upp", show_default=True,
                     help="'upp': the paper's UPerNet-50 on RGB images. 'labelmap': inputs are "
                          "single-channel label images of class ids (needs --num-classes).")(f)
    return f


def _report_options(f):
    f = click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
                     help="Write the paper's figure (PNG, PDF or SVG by extension; needs matplotlib).")(f)
    f = click.option("--report-csv", type=click.Path(dir_okay=False), help="Write every class's row as CSV.")(f)
    f = click.option("--sort", type=click.Choice(SORT_CHOICES), default="real",
                     show_default=True, help=SORT_OPTION_HELP)(f)
    f = click.option("--top-k", type=click.IntRange(min=1), default=30, show_default=True,
                     help="Classes shown in the table and the figure.")(f)
    f = click.option("--report", "show_report", is_flag=True, help="Print the per-class table after the score.")(f)
    return f


def _html_options(f):
    f = click.option("--html-examples", type=click.IntRange(min=0), default=DEFAULT_EXAMPLES, show_default=True,
                     help="With --html: real and generated example images shown per class.")(f)
    f = click.option("--html-classes", type=click.IntRange(min=0), default=DEFAULT_CLASSES, show_default=True,
                     help="With --html: significant omissions and excesses shown with example images.")(f)
    f = click.option("--html", "html_dir", type=click.Path(file_okay=False), metavar="DIR",
                     help="Write an offline HTML report into DIR: score, figure, the full class table, and example "
                          "images of each class the generator draws too little or too much of.")(f)
    return f


def _check_html(html_dir: str | None, overwrite: bool, html_classes: int, html_examples: int) -> None:
    if html_dir:
        from .set_page import check_html_folder

        check_html_folder(html_dir, overwrite)
        return
    context = click.get_current_context()
    given = [f"--{name.replace('_', '-')}" for name in ("html_classes", "html_examples")
             if context.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]
    if given:
        raise click.UsageError(f"{' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} with --html DIR")


def _write_html(result, html_dir: str, overwrite: bool, html_classes: int, html_examples: int, q_threshold: float,
                **sources) -> None:
    from .report import VerdictRule
    from .set_page import write_html

    typed = click.get_current_context().meta.get("fsd.command_line") or ["fsd", *sys.argv[1:]]
    command = shlex.join(typed)
    index = write_html(result, html_dir, classes=html_classes, examples=html_examples, overwrite=overwrite,
                       rule=VerdictRule(q_threshold=q_threshold), command=command, **sources)
    _echo(f"wrote the HTML report to {index}", err=True)


def _parse_value_range(ctx, param, value: str | None):
    """``None`` when not given, ``"uint8"``, or ``(low, high)``."""
    from .generators import parse_value_range

    if value is None or value.lower() == "uint8":
        return None if value is None else "uint8"
    try:
        low, high = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter("use LOW,HIGH (e.g. -1,1 or 0,1) or uint8") from None
    try:
        return parse_value_range((low, high))
    except InputError as exc:
        raise click.BadParameter(str(exc)) from None


def _uncertainty_options(f):
    f = click.option("--q-threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05,
                     show_default=True,
                     help="False discovery rate below which a class difference is significant (a class gets the "
                          "verdict too few / too many only when significant and large enough).")(f)
    f = click.option("--fsd-inf", is_flag=True,
                     help="Also report FSD_inf, FSD extrapolated to infinitely many images (Chong and Forsyth, "
                          "CVPR 2020), and its standard error. Needs per-image rows.")(f)
    f = click.option("--bootstrap-seed", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Seed of the bootstrap resampling.")(f)
    f = click.option("--ci-level", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.95,
                     show_default=True, help="Confidence level of the intervals.")(f)
    f = click.option("--bootstrap", "bootstrap", type=click.IntRange(min=0), default=None, metavar="B",
                     help="Bootstrap replicates for the confidence intervals (default 1000 whenever both sets "
                          "have per-image rows; 0: no intervals).")(f)
    return f


def _read_prompts(prompts_file: str | None) -> list[str] | None:
    """--prompts FILE, read (and refused when empty) before any model is loaded."""
    from .diffusers import read_prompts

    return None if prompts_file is None else read_prompts(prompts_file)


def _generator_source(generator, spec: str, z_dim, value_range, prompts, steps, guidance_scale):
    """The source of a loaded --generator: a diffusers pipeline with its prompts and call options, or any
    other generator with its latents."""
    from .diffusers import is_pipeline
    from .generators import as_generator_source

    options = [n for n, v in (("--prompts", prompts), ("--steps", steps), ("--guidance-scale", guidance_scale))
               if v is not None]
    if not is_pipeline(generator):
        if options:
            raise click.UsageError(f"{', '.join(options)} apply to --generator diffusers:PATH")
        return as_generator_source(generator, z_dim=z_dim, value_range=value_range, name=spec)
    kwargs = {k: v for k, v in (("num_inference_steps", steps), ("guidance_scale", guidance_scale)) if v is not None}
    return as_generator_source(generator, z_dim=z_dim, value_range=value_range, prompts=prompts,
                               pipeline_kwargs=kwargs, name=spec)


def _uncertainty_kwargs(bootstrap, ci_level, bootstrap_seed, fsd_inf) -> dict:
    return dict(bootstrap=bootstrap, ci_level=ci_level, bootstrap_seed=bootstrap_seed, fsd_inf=fsd_inf)


def _value_range_option(help_text: str):
    return click.option("--value-range", default=None, callback=_parse_value_range, metavar="LOW,HIGH|uint8",
                        help=help_text)


def _input_options(f):
    """How file inputs (REAL, FAKE, SOURCE) are read; each option applies to the kinds of input it names."""
    f = click.option("--image-column", metavar="NAME",
                     help="The image column of a Hugging Face dataset folder (save_to_disk); default: its first "
                          "column of type Image.")(f)
    f = click.option("--key", metavar="NAME",
                     help="The array of an .npz input that holds the images (default arr_0, or its only array); "
                          "also FILE.npz:NAME.")(f)
    f = click.option("--layout", type=click.Choice(["NHWC", "NCHW"]),
                     help="Axis order of .npz/.npy image arrays whose shape fits both (e.g. (N, 3, 64, 3)).")(f)
    f = click.option("--exif-transpose", is_flag=True,
                     help="Apply the EXIF orientation of image files (the paper does not).")(f)
    f = click.option("--follow-links", is_flag=True,
                     help="Follow symbolic links to folders inside folder inputs (the paper's walk does not).")(f)
    f = click.option("--extensions", metavar="EXT[,EXT...]|all",
                     help="File extensions read from folders and archives (default: the paper's jpg,jpeg,png; "
                          "all: also webp,bmp,tif,tiff,gif).")(f)
    return f


def _generator_options(f):
    f = click.option("--guidance-scale", type=float, default=None,
                     help="For --generator diffusers:PATH: the pipeline's guidance_scale.")(f)
    f = click.option("--steps", type=click.IntRange(min=1), default=None,
                     help="For --generator diffusers:PATH: the pipeline's num_inference_steps.")(f)
    f = click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), default=None,
                     help="For a text-to-image --generator diffusers:PATH: a text file of prompts, one a line, "
                          "cycled over the samples.")(f)
    f = click.option("--z-dim", type=click.IntRange(min=1),
                     help="Latent size (standard normal latents). Default: the generator's z_dim attribute.")(f)
    return f


@cli.command("compute")
@click.argument("real", required=False, type=click.Path())
@click.argument("fake", required=False, type=click.Path())
@click.option("--generator", "generator_spec", metavar="SPEC",
              help="Use --num-samples samples of a generator as FAKE: proggan:NAME (a published Progressive "
                   "GAN), MODULE:NAME or file.py:NAME (a generator, or a function/class building one), a "
                   "torch.export .pt2 file, a TorchScript file, or diffusers:PATH (a diffusers pipeline saved "
                   "with save_pretrained). Latents are seeded by --seed.")
@_generator_options
@_value_range_option("Value range of float images, quantized to uint8 by rounding: of the generator's output "
                     "(default -1,1; uint8 for uint8 output), or of float images in .npz/.npy inputs (no default).")
@click.option("--save-stats", nargs=2, type=click.Path(), metavar="SOURCE OUT.npz",
              help="Compute the statistics of SOURCE and save them to OUT.npz instead of comparing. Progress is "
                   "checkpointed to OUT.npz.partial every 1000 images; rerunning an interrupted command resumes.")
@click.option("--shard", "shard_spec", metavar="I/K",
              help="With --save-stats: only shard I of K (I counted from 0) of the chosen images, for array jobs "
                   "(e.g. --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT); join the K files with fsd merge.")
@click.option("--device", help="torch device, e.g. cuda, cuda:1, cpu, mps. Default: CUDA, else MPS, else CPU.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--num-workers", type=click.IntRange(min=0), default=None,
              help="Image decoding processes. Default: up to 8 on Linux, 0 elsewhere.")
@click.option("--num-samples", "-n", type=click.IntRange(min=1), default=None,
              help="Use a random subset of this many images per set (the paper: 10000). With --generator: the "
                   "number of samples, and REAL is used whole (as with a folder of the samples).")
@click.option("--seed", type=int, default=1, show_default=True,
              help="Seed of the subset choice, and of the latents of --generator.")
@click.option("--weights-dir", type=click.Path(file_okay=False),
              help="Folder holding upp-resnet50-upernet/{encoder_epoch_40.pth,decoder_epoch_40.pth,labels.json}; "
                   "used as is, never downloaded into. Default: $FSD_WEIGHTS_DIR, else the cache.")
@click.option("--skip-bad-images", is_flag=True, help="Skip unreadable images (reported on stderr).")
@click.option("--no-rows", is_flag=True,
              help="Keep only the sums, not each image's class counts: less memory, but no confidence intervals, "
                   "prevalence or FSD_inf.")
@_input_options
@_segmenter_options
@_uncertainty_options
@_report_options
@_html_options
@click.option("--overwrite", is_flag=True,
              help="Replace output files (--save-stats, --report-csv, --plot) that exist, and write --html into a "
                   "folder that holds files.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def compute_command(real, fake, save_stats, generator_spec, z_dim, value_range, prompts_file, steps, guidance_scale,
                    shard_spec, device, batch_size, num_workers, num_samples, seed, weights_dir, skip_bad_images,
                    no_rows, extensions, follow_links, exif_transpose, layout, key, image_column, segmenter,
                    num_classes, precision,
                    bootstrap, ci_level, bootstrap_seed, fsd_inf, q_threshold,
                    show_report, top_k, sort, report_csv, plot_path, html_dir, html_classes, html_examples,
                    overwrite, as_json, quiet, debug) -> None:
    """FSD between REAL and FAKE (image folders, saved .npz statistics, lsun_church / lsun_bedroom, or a
    generator with --generator)."""

    def action() -> None:
        from . import api
        from .distributed import current_world, local_device, run_on_all_ranks

        if save_stats:
            if real or fake:
                raise InputError("--save-stats SOURCE OUT.npz takes no REAL/FAKE arguments")
            if generator_spec:
                raise InputError("--save-stats SOURCE OUT.npz takes no --generator; use fsd sample, then save")
            comparing = [name for name, given in (("--bootstrap", bootstrap is not None), ("--fsd-inf", fsd_inf),
                                                  ("--ci-level", ci_level != 0.95),
                                                  ("--bootstrap-seed", bootstrap_seed != 0),
                                                  ("--q-threshold", q_threshold != 0.05),
                                                  ("--html", html_dir is not None)) if given]
            if comparing:
                raise click.UsageError(f"{', '.join(comparing)} apply when comparing two sets, not to --save-stats")
        elif shard_spec:
            raise click.UsageError("--shard applies to --save-stats SOURCE OUT.npz (merge the shards with fsd merge)")
        elif generator_spec:
            if not real or fake:
                raise click.UsageError("with --generator give REAL only: the generator is the fake side")
        elif not (real and fake):
            raise click.UsageError("give REAL and FAKE (or --save-stats SOURCE OUT.npz); see --help")
        if not generator_spec and z_dim is not None:
            raise click.UsageError("--z-dim applies to --generator")
        if not generator_spec and (prompts_file or steps is not None or guidance_scale is not None):
            raise click.UsageError("--prompts, --steps and --guidance-scale apply to --generator diffusers:PATH")
        # --value-range is the generator's with --generator, else that of float image arrays among the inputs.
        inputs = _input_kwargs(extensions, follow_links, exif_transpose, layout, key, image_column,
                               None if generator_spec else value_range)
        shard = None
        if save_stats:
            _check_stats_output(save_stats[1], overwrite)
            if shard_spec:
                from .shards import parse_shard

                shard = parse_shard(shard_spec)
        _check_outputs(report_csv, plot_path, overwrite)
        _check_html(html_dir, overwrite, html_classes, html_examples)
        prompts = _read_prompts(prompts_file)
        if not generator_spec:  # with --generator, --num-samples is its number of samples
            _check_subset_applies(num_samples, [save_stats[0]] if save_stats else [real, fake])
        with _torchrun_session(device):
            world = current_world()
            rank_device = local_device(device, world)
            progress = not quiet and world.is_main

            def setup():
                fake_source = fake
                if generator_spec:
                    from .generators import DEFAULT_VALUE_RANGE, load_generator
                    from .devices import default_device

                    generator = load_generator(generator_spec, device=rank_device or default_device(),
                                               weights_dir=weights_dir, progress=progress)
                    fake_source = _generator_source(generator, generator_spec, z_dim,
                                                    value_range or DEFAULT_VALUE_RANGE, prompts, steps,
                                                    guidance_scale)
                sides = [real, fake_source] if not save_stats else [save_stats[0]]
                seg = _make_segmenter(segmenter, num_classes, rank_device, weights_dir, progress,
                                      needed=not all(_is_stats_file(p) for p in sides), precision=precision)
                files = {"SOURCE": save_stats[0]} if save_stats else {"REAL": real, "FAKE": fake_source}
                return _open_inputs(files, inputs), seg

            opened, seg = run_on_all_ranks(world, setup)
            common = dict(segmenter=seg, device=rank_device, batch_size=batch_size, num_workers=num_workers,
                          num_samples=num_samples, seed=seed, weights_dir=weights_dir, progress=progress,
                          skip_bad_images=skip_bad_images, keep_rows=not no_rows)
            if save_stats:
                source, out = save_stats
                # A long run saves its exact partial sums next to OUT; rerunning resumes from them.
                checkpoint = f"{out}.partial" if world.size == 1 else None
                stats = api.compute_stats(opened["SOURCE"], checkpoint=checkpoint, shard=shard, **common)
                if world.is_main:
                    stats.save(out)
                part = f" ({stats.shard.label})" if stats.shard is not None else ""
                if as_json:
                    _echo(json.dumps({"saved": out, "n": stats.n, "source": stats.meta.source,
                                      "shard": list(shard) if shard else None}))
                else:
                    _echo(f"saved statistics of {plural(stats.n, 'image')} from {source}{part} to {out}", err=True)
                return
            result = api.compute(opened["REAL"], opened["FAKE"], **common,
                                 **_uncertainty_kwargs(bootstrap, ci_level, bootstrap_seed, fsd_inf))
            if world.is_main:
                _print_result(result, as_json, show_report, top_k, sort, report_csv, plot_path, q_threshold)
                if html_dir:
                    _write_html(result, html_dir, overwrite, html_classes, html_examples, q_threshold,
                                real_images=opened["REAL"], fake_images=opened["FAKE"], segmenter=seg, seed=seed,
                                device=rank_device, weights_dir=weights_dir)

    run_guarded(debug, action)


@cli.command("merge")
@click.argument("parts", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--output", "-o", "out", required=True, type=click.Path(dir_okay=False), metavar="OUT.npz",
              help="Where to write the merged statistics.")
@click.option("--different-sources", is_flag=True,
              help="Merge statistics of different sources on purpose (growing a reference set), not shards of one.")
@click.option("--overwrite", is_flag=True, help="Replace OUT.npz if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def merge_command(parts, out, different_sources, overwrite, as_json, debug) -> None:
    """Merge the shards of one source (made with --save-stats ... --shard I/K) exactly into OUT.npz: the same
    file a single run writes. Refuses a missing or repeated shard and shards of different runs."""

    def action() -> None:
        from .shards import merge_stats

        _check_stats_output(out, overwrite, option="--output")
        merged = merge_stats(list(parts), different_sources=different_sources)
        merged.save(out)
        if as_json:
            _echo(json.dumps({"saved": out, "n": merged.n, "source": merged.meta.source, "parts": len(parts)}))
        else:
            _echo(f"merged {plural(len(parts), 'file')} ({plural(merged.n, 'image')} of {merged.meta.source}) "
                  f"into {out}", err=True)

    run_guarded(debug, action)


@cli.command("sample")
@click.argument("generator_spec", metavar="GENERATOR")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--num-samples", "-n", type=click.IntRange(min=1), required=True, help="How many samples to write.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=1, show_default=True,
              help="Seed of the latents: sample k depends only on (seed, k).")
@_generator_options
@_value_range_option("Value range of the generator's output, quantized to uint8 by rounding (default -1,1); "
                     "uint8 for uint8 output.")
@click.option("--device", help="torch device for the generator. Default: CUDA, else MPS, else CPU (each rank's GPU "
                               "under torchrun).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--weights-dir", type=click.Path(file_okay=False),
              help="Folder holding downloaded generator files (for proggan:NAME); used as is.")
@click.option("--overwrite", is_flag=True, help="Write into a folder that already holds files.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def sample_command(generator_spec, out_dir, num_samples, seed, z_dim, value_range, prompts_file, steps, guidance_scale,
                   device, batch_size, weights_dir, overwrite, as_json, quiet, debug) -> None:
    """Write --num-samples samples of GENERATOR to OUT_DIR as PNG files 000000.png, 000001.png, ...

    \b
    GENERATOR: proggan:NAME (a published Progressive GAN: church, bedroom, ...), MODULE:NAME or
    path/to/file.py:NAME (a generator, or a class / no-argument function that builds one), a
    torch.export .pt2 file, a TorchScript file, or diffusers:PATH (a diffusers pipeline; text-to-image
    ones take --prompts FILE, and OUT_DIR gets prompts.jsonl naming each sample's prompt). The files hold exactly the uint8 images fsd segments when given the generator
    itself, so `fsd REAL OUT_DIR` equals `fsd REAL --generator GENERATOR` with the same seed.
    """

    def action() -> None:
        from .devices import default_device
        from .distributed import current_world, local_device, run_on_all_ranks
        from .generators import DEFAULT_VALUE_RANGE, load_generator, save_samples

        prompts = _read_prompts(prompts_file)
        with _torchrun_session(device):
            world = current_world()
            rank_device = local_device(device, world) or default_device()
            progress = not quiet and world.is_main
            source = run_on_all_ranks(world, lambda: _generator_source(
                load_generator(generator_spec, device=rank_device, weights_dir=weights_dir, progress=progress),
                generator_spec, z_dim, value_range or DEFAULT_VALUE_RANGE, prompts, steps, guidance_scale))
            paths = save_samples(source, out_dir, num_samples=num_samples, seed=seed, batch_size=batch_size,
                                 overwrite=overwrite, progress=progress)
            if as_json:
                _echo(json.dumps({"folder": out_dir, "n": len(paths), "seed": seed, "generator": generator_spec}))
            else:
                _echo(f"wrote {len(paths)} samples of {generator_spec} (seed {seed}) to {out_dir}", err=True)

    run_guarded(debug, action)


@cli.command("report")
@click.argument("real", type=click.Path(dir_okay=False))
@click.argument("fake", type=click.Path(dir_okay=False))
@click.option("--top-k", type=click.IntRange(min=1), default=30, show_default=True,
              help="Classes shown in the table and the figure.")
@click.option("--sort", type=click.Choice(SORT_CHOICES), default="real", show_default=True, help=SORT_OPTION_HELP)
@click.option("--report-csv", type=click.Path(dir_okay=False), help="Write every class's row as CSV.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Write the paper's figure (PNG, PDF or SVG by extension; needs matplotlib).")
@click.option("--weights-dir", type=click.Path(file_okay=False),
              help="Folder of downloaded files, for the baseline names (their tally and labels.json).")
@_uncertainty_options
@_html_options
@click.option("--real-images", type=click.Path(), metavar="SOURCE",
              help="With --html: where the real images are now, if not where REAL.npz recorded them.")
@click.option("--fake-images", type=click.Path(), metavar="SOURCE",
              help="With --html: where the generated images are now, if not where FAKE.npz recorded them.")
@click.option("--device", help="With --html: torch device that segments the example images again.")
@click.option("--overwrite", is_flag=True,
              help="Replace output files (--report-csv, --plot) that exist, and write --html into a folder that "
                   "holds files.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def report_command(real, fake, top_k, sort, report_csv, plot_path, weights_dir, bootstrap, ci_level, bootstrap_seed,
                   fsd_inf, q_threshold, html_dir, html_classes, html_examples, real_images, fake_images, device,
                   overwrite, as_json, debug) -> None:
    """Score, intervals and per-class report from two saved statistics files or baseline names (no
    segmentation runs)."""

    def action() -> None:
        _check_outputs(report_csv, plot_path, overwrite)
        _check_html(html_dir, overwrite, html_classes, html_examples)
        if not html_dir and (real_images or fake_images or device):
            raise click.UsageError("--real-images, --fake-images and --device apply with --html DIR")
        from pathlib import Path

        from . import api
        from .baselines import baseline_name, load_baseline
        from .stats import Stats

        def load(path: str) -> Stats:
            if baseline_name(path) is not None:
                return load_baseline(path, weights_dir=weights_dir)
            if not Path(path).is_file():
                raise InputError(f"{path}: no such statistics file (nor a baseline name: lsun_church, lsun_bedroom)")
            return Stats.load(path)

        result = api.distance(load(real), load(fake), **_uncertainty_kwargs(bootstrap, ci_level, bootstrap_seed,
                                                                             fsd_inf))
        _print_result(result, as_json, True, top_k, sort, report_csv, plot_path, q_threshold)
        if html_dir:
            _write_html(result, html_dir, overwrite, html_classes, html_examples, q_threshold,
                        real_images=real_images, fake_images=fake_images, device=device, weights_dir=weights_dir)

    run_guarded(debug, action)


@cli.command("compare")
@click.argument("real", type=click.Path())
@click.argument("fakes", nargs=-1, required=True, type=click.Path(), metavar="FAKE_A FAKE_B [...]")
@click.option("--names", help="Comma-separated names of the generated sets, in order (default: their paths).")
@click.option("--device", help="torch device, e.g. cuda, cuda:1, cpu, mps. Default: CUDA, else MPS, else CPU.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--num-workers", type=click.IntRange(min=0), default=None,
              help="Image decoding processes. Default: up to 8 on Linux, 0 elsewhere.")
@click.option("--num-samples", "-n", type=click.IntRange(min=1), default=None,
              help="Use a random subset of this many images per set (the paper: 10000).")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the subset choice.")
@click.option("--weights-dir", type=click.Path(file_okay=False),
              help="Folder holding upp-resnet50-upernet/ (see fsd --help).")
@click.option("--skip-bad-images", is_flag=True, help="Skip unreadable images (reported on stderr).")
@_input_options
@_value_range_option("Value range of float images in .npz/.npy inputs, quantized to uint8 by rounding.")
@_segmenter_options
@_uncertainty_options
@click.option("--report", "show_report", is_flag=True,
              help="Print the per-class table of each pair (the second model against the first).")
@click.option("--top-k", type=click.IntRange(min=1), default=30, show_default=True,
              help="Classes shown in each table.")
@_html_options
@click.option("--overwrite", is_flag=True, help="Write --html into a folder that holds files.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def compare_command(real, fakes, names, device, batch_size, num_workers, num_samples, seed, weights_dir,
                    skip_bad_images, extensions, follow_links, exif_transpose, layout, key, image_column, value_range,
                    segmenter, num_classes, precision, bootstrap, ci_level, bootstrap_seed, fsd_inf,
                    q_threshold, show_report, top_k, html_dir, html_classes, html_examples, overwrite, as_json, quiet,
                    debug) -> None:
    """Compare two or more generated sets (FAKE_A FAKE_B ...) against REAL: each FSD with its interval, and
    for every pair the difference with a paired-bootstrap interval, how often the first is closer, and the
    classes in which the two differ significantly. Each set is segmented once."""

    def action() -> None:
        from . import api
        from .distributed import current_world, local_device, run_on_all_ranks
        from .report import VerdictRule

        if len(fakes) < 2:
            raise InputError(f"compare needs at least two generated sets after REAL, got {len(fakes)}; "
                             "for one, use fsd REAL FAKE")
        labels = None
        if names is not None:
            labels = [n.strip() for n in names.split(",")]
            if len(labels) != len(fakes):
                raise InputError(f"--names gives {len(labels)} names for {len(fakes)} generated sets")
        _check_html(html_dir, overwrite, html_classes, html_examples)
        with _torchrun_session(device):
            world = current_world()
            rank_device = local_device(device, world)
            progress = not quiet and world.is_main
            inputs = _input_kwargs(extensions, follow_links, exif_transpose, layout, key, image_column, value_range)
            files = {"REAL": real, **{f"FAKE {k + 1}": fake for k, fake in enumerate(fakes)}}
            seg, opened = run_on_all_ranks(world, lambda: (_make_segmenter(
                segmenter, num_classes, rank_device, weights_dir, progress,
                needed=not all(_is_stats_file(p) for p in (real, *fakes)), precision=precision),
                _open_inputs(files, inputs)))
            comparison = api.compare(
                opened["REAL"], [opened[f"FAKE {k + 1}"] for k in range(len(fakes))], names=labels, segmenter=seg, device=rank_device, batch_size=batch_size,
                num_workers=num_workers, num_samples=num_samples, seed=seed, weights_dir=weights_dir,
                progress=progress, skip_bad_images=skip_bad_images, rule=VerdictRule(q_threshold=q_threshold),
                **_uncertainty_kwargs(bootstrap, ci_level, bootstrap_seed, fsd_inf))
            if not world.is_main:
                return
            if as_json:
                click.echo(json.dumps(comparison.to_dict(), allow_nan=False))
            else:
                click.echo(comparison.format())
                if show_report:
                    for pair in comparison.pairs:
                        a, b = comparison.names[pair.a], comparison.names[pair.b]
                        click.echo(f"\n{b} against {a}:")
                        click.echo(pair.classes.format_table(top_k))
            if html_dir:
                _write_html(comparison, html_dir, overwrite, html_classes, html_examples, q_threshold,
                            real_images=opened["REAL"],
                            fake_images=[opened[f"FAKE {k + 1}"] for k in range(len(fakes))], segmenter=seg,
                            seed=seed, device=rank_device, weights_dir=weights_dir)

    run_guarded(debug, action)


def _input_kwargs(extensions, follow_links, exif_transpose, layout, key, image_column, value_range) -> dict:
    """The input options that were given, as `fsd.sources.open_source` keywords."""
    given = dict(extensions=extensions, follow_links=follow_links or None, exif_transpose=exif_transpose or None,
                 layout=layout, key=key, image_column=image_column,
                 value_range=None if value_range == "uint8" else value_range)
    return {name: value for name, value in given.items() if value is not None}


def _open_inputs(paths: dict, inputs: dict) -> dict:
    """Each named input (``{"REAL": path, ...}``) opened with the input options that apply to its kind.

    Baseline names and generators pass through. An option that applies to none of the inputs is refused.
    """
    from .baselines import baseline_name
    from .sources import OptionDoesNotApply, open_source

    opened, used, refusals = {}, set(), []
    for label, path in paths.items():
        if not isinstance(path, str) or (baseline_name(path) is not None and not os.path.exists(path)):
            opened[label] = path
            continue
        options = dict(inputs)
        while True:
            try:
                opened[label] = open_source(path, **options)
                break
            except OptionDoesNotApply as exc:
                refusals.append(exc)
                options = {k: v for k, v in options.items() if k not in exc.options}
        used |= set(options)
    unused = [name for name in inputs if name not in used]
    if unused:
        first = next(exc for exc in refusals if set(unused) & set(exc.options))
        raise InputError(str(first))
    return opened


def _is_stats_file(path) -> bool:
    """Saved statistics or a baseline name: a side that needs no segmenter."""
    from pathlib import Path

    from .baselines import baseline_name

    from .sources import is_saved_stats

    if not isinstance(path, str):
        return False
    if Path(path).is_file() and path.lower().endswith(".npz"):
        try:
            return is_saved_stats(path)
        except Exception:
            return False  # unreadable: let the source reader report it
    return baseline_name(path) is not None


def _make_segmenter(kind: str, num_classes: int | None, device, weights_dir, progress: bool, needed: bool,
                    precision: str = "float32"):
    if kind == "labelmap":
        from .segmenters.labelmap import LabelMapSegmenter

        if num_classes is None:
            raise click.UsageError("--segmenter labelmap needs --num-classes")
        if precision != "float32":
            raise click.UsageError("--precision applies to --segmenter upp only")
        return LabelMapSegmenter(num_classes)
    if num_classes is not None:
        raise click.UsageError("--num-classes applies only to --segmenter labelmap")
    if not needed:
        return None
    from .api import load_segmenter

    return load_segmenter("upp", device=device, weights_dir=weights_dir, progress=progress, precision=precision)


def _check_stats_output(out: str, overwrite: bool, option: str = "--save-stats") -> None:
    from pathlib import Path

    path = Path(out)
    if path.suffix.lower() != ".npz":
        raise InputError(f"{option} writes an .npz file: name it like {path.with_suffix('.npz')}")
    if path.is_dir():
        raise InputError(f"{option}: {path} is a folder; give a file name ending in .npz")
    _check_not_there(path, option, overwrite)


def _check_not_there(path, option: str, overwrite: bool) -> None:
    """Files are replaced only when asked, as `fsd sample` and `fsd.invert` do with folders."""
    from pathlib import Path

    if Path(path).exists() and not overwrite:
        raise InputError(f"{option}: {path} exists; pass --overwrite to replace it, or choose another name")


def _check_outputs(report_csv: str | None, plot_path: str | None, overwrite: bool) -> None:
    """Refuse unwritable or existing output paths before the expensive work, not after it."""
    from pathlib import Path

    if plot_path:
        from .report import check_figure_path

        check_figure_path(plot_path)
        _check_not_there(plot_path, "--plot", overwrite)
    if report_csv:
        if not Path(report_csv).parent.is_dir():
            raise InputError(f"cannot write {report_csv}: folder {Path(report_csv).parent} does not exist")
        _check_not_there(report_csv, "--report-csv", overwrite)


def _check_subset_applies(num_samples: int | None, sides) -> None:
    """--num-samples chooses images; saved statistics have none left to choose from."""
    if num_samples is None:
        return
    saved = [side for side in sides if isinstance(side, str) and _is_stats_file(side)]
    if saved:
        raise InputError(f"--num-samples chooses images, but {saved[0]} is saved statistics (their images were "
                         "chosen when they were saved): drop --num-samples, or give the images themselves")


def _print_result(result, as_json: bool, show_report: bool, top_k: int, sort: str,
                  report_csv: str | None, plot_path: str | None, q_threshold: float = 0.05) -> None:
    """The score (and table) on stdout first, then the files, so a failing write never loses the score."""
    from .report import VerdictRule

    rule = VerdictRule(q_threshold=q_threshold)
    report = None
    if show_report or as_json or report_csv:
        from .report import class_report

        report = class_report(result.real, result.fake, sort=sort, rule=rule, level=result.ci_level or 0.95)
    if as_json:
        payload = result.to_dict()
        payload["report"] = report.to_dict()
        click.echo(json.dumps(payload, allow_nan=False))
    else:
        click.echo(result.summary())
        if show_report:
            click.echo(report.summary())
            click.echo(report.format_table(top_k))
            for side, stats in (("real", result.real), ("fake", result.fake)):
                made = "; ".join(stats.environment) or "not recorded (statistics from an older fsd)"
                click.echo(f"{side} statistics computed with: {made}")
    if report_csv:
        report.to_csv(report_csv)
    if plot_path:
        from .report import plot_omissions, save_figure

        save_figure(plot_omissions(result, top_k=top_k, rule=rule, level=result.ci_level or 0.95), plot_path)


cli.add_command(weights_group(run_guarded))


def main() -> None:
    cli(prog_name="fsd")

"""The command line: parse, call the API, print. Results on stdout, everything else on stderr."""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable

import click

from . import __version__
from .errors import FSDError, InputError


class _DefaultToCompute(click.Group):
    """``fsd REAL FAKE`` runs `compute`; ``fsd report ...`` runs a subcommand.

    The first argument names a subcommand only if it is one and is not an existing path, so a folder
    called ``report`` is still an image folder.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        from pathlib import Path

        if args and args[0] not in ("--help", "-h", "--version"):
            if args[0] not in self.commands or Path(args[0]).exists():
                args = ["compute", *args]
        return super().parse_args(ctx, args)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    click.echo(f"warning: {message}", err=True)


def run_guarded(debug: bool, action: Callable[[], None]) -> None:
    """Exit 2 on bad input, 1 on other failures, with a one-line message (a traceback with --debug)."""
    warnings.showwarning = _show_warning
    try:
        action()
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException:
        raise  # usage errors: click prints them and exits with status 2
    except Exception as exc:
        if debug:
            raise
        code = 2 if isinstance(exc, InputError) else 1
        kind = "error" if isinstance(exc, (FSDError, ImportError)) else f"error ({type(exc).__name__})"
        click.echo(f"{kind}: {exc}", err=True)
        sys.exit(code)


@click.group(cls=_DefaultToCompute, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fsd")
def cli() -> None:
    """Fréchet Segmentation Distance: what a generator fails to generate.

    \b
      fsd REAL FAKE                      FSD between two image folders or saved .npz statistics
      fsd --save-stats SOURCE OUT.npz    save the statistics of a folder for later
      fsd report REAL.npz FAKE.npz       per-class report and figure from saved statistics
    """


def _segmenter_options(f):
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
    f = click.option("--sort", type=click.Choice(["real", "relative", "absolute"]), default="real",
                     show_default=True, help="Order of the per-class table.")(f)
    f = click.option("--top-k", type=click.IntRange(min=1), default=30, show_default=True,
                     help="Classes shown in the table and the figure.")(f)
    f = click.option("--report", "show_report", is_flag=True, help="Print the per-class table after the score.")(f)
    return f


@cli.command("compute")
@click.argument("real", required=False, type=click.Path())
@click.argument("fake", required=False, type=click.Path())
@click.option("--save-stats", nargs=2, type=click.Path(), metavar="SOURCE OUT.npz",
              help="Compute the statistics of SOURCE and save them to OUT.npz instead of comparing.")
@click.option("--device", help="torch device, e.g. cuda, cuda:1, cpu, mps. Default: cuda if available.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--num-workers", type=click.IntRange(min=0), default=None,
              help="Image decoding processes. Default: up to 8 on Linux, 0 elsewhere.")
@click.option("--num-samples", type=click.IntRange(min=1), default=None,
              help="Use a random subset of this many images per set (the paper: 10000).")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the subset choice.")
@click.option("--weights-dir", type=click.Path(file_okay=False),
              help="Folder holding upp-resnet50-upernet/{encoder_epoch_40.pth,decoder_epoch_40.pth,labels.json}; "
                   "used as is, never downloaded into. Default: $FSD_WEIGHTS_DIR, else the cache.")
@click.option("--skip-bad-images", is_flag=True, help="Skip unreadable images (reported on stderr).")
@_segmenter_options
@_report_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def compute_command(real, fake, save_stats, device, batch_size, num_workers, num_samples, seed, weights_dir,
                    skip_bad_images, segmenter, num_classes, show_report, top_k, sort, report_csv, plot_path,
                    as_json, quiet, debug) -> None:
    """FSD between REAL and FAKE (image folders or saved .npz statistics)."""

    def action() -> None:
        from . import api

        if save_stats:
            if real or fake:
                raise InputError("--save-stats SOURCE OUT.npz takes no REAL/FAKE arguments")
        elif not (real and fake):
            raise click.UsageError("give REAL and FAKE (or --save-stats SOURCE OUT.npz); see --help")
        seg = _make_segmenter(segmenter, num_classes, device, weights_dir, not quiet,
                              needed=bool(save_stats) or not all(_is_stats_file(p) for p in (real, fake)))
        common = dict(segmenter=seg, device=device, batch_size=batch_size, num_workers=num_workers,
                      num_samples=num_samples, seed=seed, weights_dir=weights_dir, progress=not quiet,
                      skip_bad_images=skip_bad_images)
        if save_stats:
            source, out = save_stats
            stats = api.compute_stats(source, **common)
            stats.save(out)
            if as_json:
                click.echo(json.dumps({"saved": out, "n": stats.n, "source": stats.meta.source}))
            else:
                click.echo(f"saved statistics of {stats.n} images from {source} to {out}", err=True)
            return
        result = api.compute(real, fake, **common)
        _print_result(result, as_json, show_report, top_k, sort, report_csv, plot_path)

    run_guarded(debug, action)


@cli.command("report")
@click.argument("real", type=click.Path(exists=True, dir_okay=False))
@click.argument("fake", type=click.Path(exists=True, dir_okay=False))
@click.option("--top-k", type=click.IntRange(min=1), default=30, show_default=True,
              help="Classes shown in the table and the figure.")
@click.option("--sort", type=click.Choice(["real", "relative", "absolute"]), default="real", show_default=True)
@click.option("--report-csv", type=click.Path(dir_okay=False), help="Write every class's row as CSV.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Write the paper's figure (PNG, PDF or SVG by extension; needs matplotlib).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def report_command(real, fake, top_k, sort, report_csv, plot_path, as_json, debug) -> None:
    """Score and per-class report from two saved statistics files (no segmentation runs)."""

    def action() -> None:
        from . import api
        from .stats import Stats

        result = api.distance(Stats.load(real), Stats.load(fake))
        _print_result(result, as_json, True, top_k, sort, report_csv, plot_path)

    run_guarded(debug, action)


def _is_stats_file(path: str) -> bool:
    from pathlib import Path

    return Path(path).is_file() and path.lower().endswith(".npz")


def _make_segmenter(kind: str, num_classes: int | None, device, weights_dir, progress: bool, needed: bool):
    if kind == "labelmap":
        from .segmenters.labelmap import LabelMapSegmenter

        if num_classes is None:
            raise click.UsageError("--segmenter labelmap needs --num-classes")
        return LabelMapSegmenter(num_classes)
    if num_classes is not None:
        raise click.UsageError("--num-classes applies only to --segmenter labelmap")
    if not needed:
        return None
    from .api import load_segmenter

    return load_segmenter("upp", device=device, weights_dir=weights_dir, progress=progress)


def _print_result(result, as_json: bool, show_report: bool, top_k: int, sort: str,
                  report_csv: str | None, plot_path: str | None) -> None:
    report = None
    if show_report or as_json or report_csv:
        from .report import class_report

        report = class_report(result.real, result.fake, sort=sort)
    if plot_path:
        from .report import plot_omissions, save_figure

        save_figure(plot_omissions(result.real, result.fake, top_k=top_k, fsd=result.fsd), plot_path)
    if report_csv:
        report.to_csv(report_csv)
    if as_json:
        payload = result.to_dict()
        payload["report"] = report.to_dict()
        click.echo(json.dumps(payload, allow_nan=False))
        return
    click.echo(f"FSD: {result.fsd:.4f}  (mean term {result.mean_term:.4f}, "
               f"covariance term {result.covariance_term:.4f})")
    if show_report:
        click.echo(report.summary())
        click.echo(report.format_table(top_k))


def main() -> None:
    cli(prog_name="fsd")

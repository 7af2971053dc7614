"""``fsd weights download | verify | where``: click commands over `fsd.weights`; results on stdout.

`weights_group` is given the error guard of the main command line (``fsd.cli.run_guarded``) rather
than importing it, so this module depends only on `fsd.weights` and ``fsd.cli`` can register it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from fsd import weights
from fsd._text import plural
from fsd.errors import InputError

Guard = Callable[[bool, Callable[[], None]], None]


def weights_group(run_guarded: Guard) -> click.Group:
    """The ``weights`` command group; ``run_guarded(debug, action)`` turns errors into exit statuses."""

    @click.group("weights", context_settings={"help_option_names": ["-h", "--help"]})
    def group() -> None:
        """Model files ahead of time: for compute nodes without internet and days the servers are down.

        \b
          fsd weights download --all --to DIR      on a node with internet, once
          FSD_OFFLINE=1 fsd --weights-dir DIR ...  on the compute nodes
          fsd weights verify DIR                   status, size and sha256 of every file
          fsd weights where                        the folders searched, in order, and what each holds
        """

    @group.command("download")
    @click.argument("whats", metavar="[WHAT]...", nargs=-1)
    @click.option("--all", "everything", is_flag=True, help="Everything declared: the segmenter, both baselines, "
                  "every published generator and encoder.")
    @click.option("--to", "to", type=click.Path(file_okay=False),
                  help="Folder to fill as <DIR>/<artifact>/<file> (what --weights-dir reads and a mirror serves). "
                       "Default: $FSD_WEIGHTS_DIR when set, else the cache.")
    @click.option("--mirror", "mirrors", multiple=True, metavar="URL",
                  help="Base URL tried before the published mirrors, files at URL/<artifact>/<file> "
                       "(repeatable; replaces $FSD_MIRRORS).")
    @click.option("--quiet", is_flag=True, help="No progress bars.")
    @click.option("--debug", is_flag=True, help="Show the traceback of an error.")
    def download_command(whats: tuple[str, ...], everything: bool, to: str | None, mirrors: tuple[str, ...],
                         quiet: bool, debug: bool) -> None:
        """Fetch WHAT (default: segmenter): segmenter, lsun_church, lsun_bedroom, proggan:NAME, encoder:NAME.

        Files already present are checked and kept; temporary files of interrupted downloads are removed.
        Prints one line per file: status, size in bytes, sha256, path.
        """

        def action() -> None:
            if everything and whats:
                raise InputError(f"give WHAT ({', '.join(whats)}) or --all, not both")
            root = Path(to).expanduser().absolute() if to is not None else None
            reports = weights.download(*(("all",) if everything else whats), to=root,
                                       mirrors=list(mirrors) or None, progress=not quiet)
            for report in reports:
                click.echo(report.line())
            folders = sorted({str(r.path.parent.parent) for r in reports})
            click.echo(f"{plural(len(reports), 'file')} verified in {', '.join(folders)}; a run without "
                       f"internet reads them with FSD_OFFLINE=1 and --weights-dir {folders[0]}", err=True)

        run_guarded(debug, action)

    @group.command("verify")
    @click.argument("folder", required=False, type=click.Path(file_okay=False))
    @click.option("--debug", is_flag=True, help="Show the traceback of an error.")
    def verify_command(folder: str | None, debug: bool) -> None:
        """Check every model file in FOLDER (default: $FSD_WEIGHTS_DIR when set, else the cache) in full.

        One line per file: status (ok, changed, damaged, missing, leftover, derived, unknown), size in
        bytes, sha256 (compare it with another lab's to know you hold the same bytes), path, and why.
        Exits with status 2 when a file is damaged.
        """

        def action() -> None:
            root = Path(folder).expanduser().absolute() if folder is not None else weights.default_folder()
            reports = weights.verify(root)
            for report in reports:
                click.echo(report.line(root))
            counts: dict[str, int] = {}
            for report in reports:
                counts[report.status] = counts.get(report.status, 0) + 1
            click.echo(f"{root}: " + ", ".join(f"{n} {status}" for status, n in counts.items()), err=True)
            if any(r.damaged for r in reports):
                raise InputError(weights.damage_hint(reports, root))

        run_guarded(debug, action)

    @group.command("where")
    @click.option("--debug", is_flag=True, help="Show the traceback of an error.")
    def where_command(debug: bool) -> None:
        """The folders searched for model files, in order, what each holds, and the mirrors downloads try."""
        run_guarded(debug, lambda: click.echo(weights.format_where(weights.where())))

    return group

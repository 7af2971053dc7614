"""Typed errors. Every message says what went wrong, where, and what to do about it."""

from __future__ import annotations

from ._hints import option


class FSDError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(FSDError, ValueError):
    """Bad user input: a path, an argument, an image file. The CLI exits with status 2."""


class ImageReadError(InputError):
    """An image file could not be decoded. ``path`` names it."""

    def __init__(self, path: object, reason: str):
        self.path = str(path)
        self.reason = reason
        skip = option("skip_bad_images=True", "--skip-bad-images")
        super().__init__(f"cannot read image {self.path}: {reason} (fix or remove the file, or pass {skip} to skip it)")


class IncompatibleStatsError(InputError):
    """Two sets of statistics were made in ways that make comparing them meaningless."""


class WeightsError(FSDError):
    """Model weights are missing, fail verification, or do not fit the architecture."""


class WeightsFolderError(WeightsError, InputError):
    """A weights folder the user named does not exist: bad input (exit status 2) and a weights problem."""


class DownloadError(WeightsError):
    """Every mirror failed. The message lists the URLs tried and where to put the files by hand."""

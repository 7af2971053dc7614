"""Hints that name what exists where the user is: a command-line option in the CLI, a keyword in Python.

The CLI runs each command inside `command_line()`; a message that tells the user what to pass builds its
hint with `option`, so ``fsd`` users read ``--layout NHWC`` and Python users ``layout='NHWC'``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_IN_COMMAND_LINE = contextvars.ContextVar("fsd_in_command_line", default=False)


@contextlib.contextmanager
def command_line() -> Iterator[None]:
    """Within this block, hints name command-line options."""
    token = _IN_COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _IN_COMMAND_LINE.reset(token)


def in_command_line() -> bool:
    return _IN_COMMAND_LINE.get()


def option(python: str, cli: str) -> str:
    """``cli`` inside `command_line`, ``python`` elsewhere.

    >>> option("layout='NHWC'", "--layout NHWC")
    "layout='NHWC'"
    >>> with command_line():
    ...     option("layout='NHWC'", "--layout NHWC")
    '--layout NHWC'
    """
    return cli if _IN_COMMAND_LINE.get() else python

"""Words in messages: plural forms, so no output reads "1 images" or "image(s)"."""

from __future__ import annotations


def plural(count: float, word: str, plural_form: str | None = None) -> str:
    """``"1 image"``, ``"2 images"``, ``"0 images"``; ``plural_form`` for irregular words. A float count
    is written with ``:g`` (``1.0`` -> ``"1 point"``, ``0.5`` -> ``"0.5 points"``).

    >>> plural(1, "image"), plural(3, "image"), plural(2, "class", "classes")
    ('1 image', '3 images', '2 classes')
    >>> plural(1.0, "percentage point"), plural(2.5, "percentage point")
    ('1 percentage point', '2.5 percentage points')
    """
    shown = f"{count:g}" if isinstance(count, float) else str(count)
    return f"{shown} {word if count == 1 else (plural_form or word + 's')}"


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn, attributed to the first caller outside this package (never to ``sys:1`` or fsd's own lines)."""
    import sys
    import warnings

    package = __name__.rsplit(".", 1)[0] + "."
    level, frame = 2, sys._getframe(1)  # stacklevel 2 is the caller of this function
    while frame is not None and (frame.f_globals.get("__name__", "") + ".").startswith(package):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, category, stacklevel=level if frame is not None else 1)

"""Words in messages: plural forms, so no output reads "1 images" or "image(s)"."""

from __future__ import annotations


def plural(count: int, word: str, plural_form: str | None = None) -> str:
    """``"1 image"``, ``"2 images"``, ``"0 images"``; ``plural_form`` for irregular words.

    >>> plural(1, "image"), plural(3, "image"), plural(2, "class", "classes")
    ('1 image', '3 images', '2 classes')
    """
    return f"{count} {word if count == 1 else (plural_form or word + 's')}"

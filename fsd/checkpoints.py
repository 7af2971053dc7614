"""Reading model checkpoints: one loader and one structural check for every network in the package.

`read_checkpoint` wraps ``torch.load(weights_only=True)`` so that a damaged, foreign or missing file is
a `WeightsError` naming it. `check_state_dict` verifies every expected key is present with the
expected shape and nothing unexpected is left, naming the first bad key (and summarising the rest),
before `load_state_dict_checked` loads with ``strict=True``: never a silently half-loaded model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .errors import WeightsError


def read_checkpoint(path: Path | str, what: str) -> object:
    """``torch.load(path, map_location="cpu", weights_only=True)``; every failure a `WeightsError`."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{what}: checkpoint file {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated download, not a checkpoint, pickled objects, ...
        raise WeightsError(
            f"{what}: cannot read checkpoint {path} ({type(exc).__name__}: {str(exc)[:300]}); "
            "the file is damaged or not a PyTorch state dict: delete it and download it again"
        ) from exc


def read_state_dict(path: Path | str, what: str) -> dict[str, torch.Tensor]:
    """`read_checkpoint` of a file that must hold a state dict (a mapping)."""
    loaded = read_checkpoint(path, what)
    if not isinstance(loaded, Mapping):
        raise WeightsError(f"{what}: checkpoint {path} holds a {type(loaded).__name__}, not a state dict")
    return dict(loaded)


def _listing(items: list[str], separator: str = ", ") -> str:
    return separator.join(items[:8]) + (" ..." if len(items) > 8 else "")


def check_state_dict(
    state_dict: Mapping[str, object],
    expected: Mapping[str, tuple[int, ...]],
    what: str,
    *,
    drop_suffixes: tuple[str, ...] = (),
    hint: str = "the file does not belong to this architecture or is damaged",
) -> dict[str, torch.Tensor]:
    """The state dict to hand to ``load_state_dict(strict=True)``, after verifying its structure.

    Keys ending in ``drop_suffixes`` are dropped; a missing ``num_batches_tracked`` is filled in
    (files written before PyTorch 0.4.1 lack the counter, which plays no role in eval mode).
    Raises `WeightsError` naming the first bad key, then all missing, wrong and unexpected keys.
    """
    cleaned: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise WeightsError(f"{what}: state dict key {key!r} is not a string")
        if drop_suffixes and key.endswith(drop_suffixes):
            continue
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"{what}: value of key {key!r} is a {type(value).__name__}, not a tensor")
        cleaned[key] = value
    for key in expected:
        if key.endswith(".num_batches_tracked") and key not in cleaned:
            cleaned[key] = torch.zeros((), dtype=torch.long)
    missing = [key for key in expected if key not in cleaned]
    wrong = [key for key in expected if key in cleaned and tuple(cleaned[key].shape) != tuple(expected[key])]
    unexpected = [key for key in cleaned if key not in expected]
    if not (missing or wrong or unexpected):
        return cleaned
    first = next(key for key in expected if key in missing or key in wrong) if missing or wrong else None
    if first is None:
        key = unexpected[0]
        headline = f"unexpected key {key!r} (shape {tuple(cleaned[key].shape)})"
    elif first in missing:
        headline = f"key {first!r} (shape {tuple(expected[first])}) is missing"
    else:
        headline = f"key {first!r} has shape {tuple(cleaned[first].shape)}, expected {tuple(expected[first])}"
    parts = []
    if wrong:
        parts.append("wrong shapes: " + _listing(
            [f"{k}: {tuple(cleaned[k].shape)} in the file, {tuple(expected[k])} expected" for k in wrong], "; "))
    if missing:
        parts.append("missing keys: " + _listing(missing))
    if unexpected:
        parts.append("unexpected keys: " + _listing(unexpected))
    raise WeightsError(f"{what}: {headline}; {hint} ({' | '.join(parts)})")


def expected_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of ``module`` with its shape."""
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def load_state_dict_checked(
    module: nn.Module,
    state_dict: Mapping[str, object],
    what: str,
    *,
    drop_suffixes: tuple[str, ...] = (),
    hint: str = "the file does not belong to this architecture or is damaged",
) -> None:
    """Verify ``state_dict`` against ``module``'s keys and shapes (`check_state_dict`), then load it
    with ``strict=True``. ``what`` names the source (e.g. the file) in error messages."""
    cleaned = check_state_dict(state_dict, expected_shapes(module), what, drop_suffixes=drop_suffixes, hint=hint)
    module.load_state_dict(cleaned, strict=True)

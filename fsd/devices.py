"""Which torch devices exist here: the default one, and a clear error for one that does not.

``torch.device("gpu")`` raises a bare RuntimeError, and ``"cuda"`` on a machine without a driver fails
only at the first tensor moved, deep inside the work. Every device a user names goes through
`resolve_device` first, so the mistake is an `InputError` (exit status 2 on the command line) that lists
the devices this machine has.
"""

from __future__ import annotations

import torch

from ._text import plural
from .errors import InputError


def default_device() -> torch.device:
    """CUDA if available, else MPS if available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def available_devices() -> list[str]:
    """The devices fsd can run on here, e.g. ``["cpu", "cuda:0", "cuda:1"]``."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a `torch.device` that exists on this machine (the default one for ``None``).

    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("gpu")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fsd.errors.InputError: unknown device 'gpu' (for an NVIDIA GPU say cuda or cuda:N); devices here: cpu...
    """
    if device is None:
        return default_device()
    here = ", ".join(available_devices())
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        hint = " (for an NVIDIA GPU say cuda or cuda:N)" if str(device).lower().startswith("gpu") else ""
        raise InputError(f"unknown device {device!r}{hint}; devices here: {here}") from None
    kind = resolved.type
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {str(device)!r} asks for CUDA, which this machine does not have (no NVIDIA "
                             f"driver or GPU, or a PyTorch build without CUDA); devices here: {here}")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise InputError(f"device {str(device)!r}: this machine has {plural(torch.cuda.device_count(), 'CUDA device')}; "
                             f"devices here: {here}")
    elif kind == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"device {str(device)!r} asks for Apple's MPS, which is not available here; "
                             f"devices here: {here}")
    elif kind != "cpu":
        backend = getattr(torch, kind, None)
        is_available = getattr(backend, "is_available", None)
        if not callable(is_available) or not is_available():
            raise InputError(f"device {str(device)!r} is not available here; devices here: {here}")
    return resolved


def describe_run(device: str | torch.device, precision: str = "float32") -> str:
    """What the numbers of a run depend on beyond its inputs, in words: torch version, device, CPU
    threads and precision, e.g. ``"torch 2.5.1, cpu (x86_64), 2 threads, float32"``.

    Recorded in statistics and shown by ``fsd report``, never compared: labels at near-ties can change
    with any of these (see the README's "What is exact").
    """
    import platform

    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        where = f"cuda ({torch.cuda.get_device_name(index)})"
    else:
        where = f"{device.type} ({platform.machine() or 'unknown machine'})"
    return f"torch {torch.__version__}, {where}, {plural(torch.get_num_threads(), 'thread')}, {precision}"

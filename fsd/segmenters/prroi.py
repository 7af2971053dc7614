"""Precise RoI pooling (PrRoIPool) of a whole feature map, as the UPerNet's pyramid pooling uses it.

The paper's segmenter pools with the PrRoIPool CUDA kernel over the box ``[0, 0, W, H]``: each
output bin is the exact mean of the bilinearly interpolated map over the bin, where the map is
zero outside the lattice ``[0, H-1] x [0, W-1]``. This is *not* ``AdaptiveAvgPool2d``; we match
the kernel on purpose. Because the interpolation kernel is separable and the box is the whole map,
the pooling is ``A_s(H) @ x @ A_s(W)^T`` with a small matrix ``A_s(n)`` computed in closed form.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from fsd.errors import InputError


def _hat_integral(t: torch.Tensor) -> torch.Tensor:
    """Integral of ``hat(u) = max(0, 1 - |u|)`` from -inf to ``t`` (float64, elementwise)."""
    t = t.clamp(-1.0, 1.0)
    return torch.where(t <= 0, (t + 1) ** 2 / 2, 1 - (1 - t) ** 2 / 2)


def prroi_matrix(n: int, s: int) -> torch.Tensor:
    """The ``(s, n)`` float64 matrix that pools a length-``n`` axis into ``s`` bins.

    ``A[p, j] = (Phi((p+1) b - j) - Phi(p b - j)) / b`` with ``b = n / s`` and ``Phi`` the integral
    of the hat function. Rows sum to 1 except bins reaching past ``n - 1`` (zero padding).

    >>> prroi_matrix(8, 1)[0, :2].tolist()
    [0.0625, 0.125]
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"prroi_matrix: n (map size) must be a positive int, got {n!r}")
    if isinstance(s, bool) or not isinstance(s, int) or s < 1:
        raise InputError(f"prroi_matrix: s (number of bins) must be a positive int, got {s!r}")
    b = n / s
    p = torch.arange(s, dtype=torch.float64).unsqueeze(1)
    j = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    return (_hat_integral((p + 1) * b - j) - _hat_integral(p * b - j)) / b


@lru_cache(maxsize=64)
def _cached_matrix(n: int, s: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # A normal (non-inference) tensor, so a cached matrix also works later with autograd on.
    with torch.inference_mode(False):
        return prroi_matrix(n, s).to(device=device, dtype=dtype)


def prroi_pool_whole(x: torch.Tensor, s: int) -> torch.Tensor:
    """Precise RoI pooling of each whole ``(H, W)`` map of ``x`` ``(N, C, H, W)`` to ``(N, C, s, s)``.

    The pooling matrices are computed in float64, cast to ``x``'s dtype and device, and cached.
    """
    if x.dim() != 4:
        raise InputError(f"prroi_pool_whole: x must have shape (N, C, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"prroi_pool_whole: x must be a floating-point tensor, got {x.dtype}")
    height, width = x.shape[-2:]
    rows = _cached_matrix(int(height), s, x.dtype, x.device)
    cols = _cached_matrix(int(width), s, x.dtype, x.device)
    return rows @ x @ cols.transpose(0, 1)

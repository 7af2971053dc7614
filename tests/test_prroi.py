from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fsd.errors import InputError
from fsd.segmenters.prroi import prroi_matrix, prroi_pool_whole


def brute_force_pool(f: torch.Tensor, s: int, cells_per_bin: int = 400) -> torch.Tensor:
    """Mean of the zero-padded bilinear interpolation of ``f`` (H, W) over each bin, by a midpoint
    rule on a fine grid: no closed form involved."""

    def interpolation_weights(n: int) -> torch.Tensor:
        step = n / (s * cells_per_bin)
        points = (torch.arange(s * cells_per_bin, dtype=torch.float64) + 0.5) * step
        lattice = torch.arange(n, dtype=torch.float64)
        # Only lattice points 0..n-1 carry values: the map is zero beyond them.
        return (1 - (points[:, None] - lattice[None, :]).abs()).clamp(min=0)

    height, width = f.shape
    surface = interpolation_weights(height) @ f @ interpolation_weights(width).T
    return surface.reshape(s, cells_per_bin, s, cells_per_bin).mean(dim=(1, 3))


def test_worked_values_for_n8():
    a1 = prroi_matrix(8, 1)
    assert a1.dtype == torch.float64 and a1.shape == (1, 8)
    torch.testing.assert_close(a1[0], torch.tensor([1 / 16] + [1 / 8] * 7, dtype=torch.float64))
    assert a1.sum().item() == pytest.approx(15 / 16, abs=1e-15)

    a6 = prroi_matrix(8, 6)
    assert a6.shape == (6, 8)
    torch.testing.assert_close(a6.sum(1), torch.tensor([1, 1, 1, 1, 1, 0.625], dtype=torch.float64))
    first_row = torch.tensor([0.375, 0.58333, 0.04167], dtype=torch.float64)
    torch.testing.assert_close(a6[0, :3], first_row, atol=1e-5, rtol=0)
    assert a6[0, 3:].abs().max().item() == 0

    ones = torch.ones(1, 1, 8, 8, dtype=torch.float64)
    pooled = prroi_pool_whole(ones, 6)
    assert pooled.shape == (1, 1, 6, 6)
    assert pooled[0, 0, -1, -1].item() == pytest.approx(0.390625, abs=1e-12)
    assert pooled[0, 0, 0, 0].item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("n", [5, 8, 13, 16])
@pytest.mark.parametrize("s", [1, 2, 3, 6])
def test_matches_brute_force_integration(n: int, s: int):
    gen = torch.Generator().manual_seed(n * 10 + s)
    f = torch.randn(n, n, dtype=torch.float64, generator=gen)
    expected = brute_force_pool(f, s)
    got = prroi_pool_whole(f[None, None], s)[0, 0]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_non_square_map_and_float32():
    gen = torch.Generator().manual_seed(3)
    f = torch.randn(2, 3, 8, 5, dtype=torch.float64, generator=gen)
    got64 = prroi_pool_whole(f, 3)
    assert got64.shape == (2, 3, 3, 3)
    torch.testing.assert_close(got64[1, 2], brute_force_pool(f[1, 2], 3), atol=1e-4, rtol=0)
    got32 = prroi_pool_whole(f.float(), 3)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), got64, atol=1e-6, rtol=0)


def test_differs_from_adaptive_avg_pool():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 64, 8, 8, generator=gen)
    # The spec measures 0.1 to 1.8 on unit-variance maps, growing with the scale.
    for s, at_least in ((1, 0.05), (2, 0.2), (3, 0.4), (6, 1.0)):
        diff = (prroi_pool_whole(x, s) - F.adaptive_avg_pool2d(x, s)).abs().max().item()
        assert diff > at_least, f"scale {s}: PrRoI pooling too close to AdaptiveAvgPool2d (max diff {diff})"


def test_matrix_cache_is_safe_for_autograd_after_inference_mode():
    x = torch.randn(1, 2, 7, 7)
    with torch.inference_mode():
        prroi_pool_whole(x, 2)  # the (7, 2) float32 CPU matrix is cached here
    y = x.clone().requires_grad_(True)
    prroi_pool_whole(y, 2).sum().backward()
    # d(sum)/dx[h, w] = column sums of A(7) at h times those at w.
    col = prroi_matrix(7, 2).sum(0).float()
    torch.testing.assert_close(y.grad[0, 0], col[:, None] * col[None, :])


@pytest.mark.parametrize("n, s", [(0, 2), (4, 0), (-1, 1), (2.5, 1), (True, 1)])
def test_bad_sizes_raise(n, s):
    with pytest.raises(InputError, match="prroi_matrix"):
        prroi_matrix(n, s)


def test_bad_inputs_raise():
    with pytest.raises(InputError, match=r"\(N, C, H, W\)"):
        prroi_pool_whole(torch.zeros(3, 8, 8), 2)
    with pytest.raises(InputError, match="floating-point"):
        prroi_pool_whole(torch.zeros(1, 1, 8, 8, dtype=torch.long), 2)

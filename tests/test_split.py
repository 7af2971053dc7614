"""Cutting generators at a named layer: Sequential children, and forward hooks for any module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fsd.errors import InputError
from fsd.invert.proggan import ProGAN
from fsd.invert.split import PROGGAN_SPLIT, LayerSplit, SplitGenerator

Z_DIM = 10


def tiny_generator(seed: int = 0) -> ProGAN:
    torch.manual_seed(seed)
    return ProGAN([16, 16, 12, 12, 8, 8, 6, 6], z_dim=Z_DIM).double().eval()


class Wrapped(nn.Module):
    """A non-Sequential generator: a latent mapping, a ProGAN body, and a post-processing step."""

    def __init__(self, body: ProGAN):
        super().__init__()
        self.mapping = nn.Linear(Z_DIM, Z_DIM).double()
        self.body = body

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.body(self.mapping(z))


def manual_head(generator: ProGAN, z: torch.Tensor, offsets: list[torch.Tensor]) -> torch.Tensor:
    """r = g4(d3 + g3(d2 + g2(d1 + g1(z)))) written out."""
    x = z.view(z.shape[0], -1, 1, 1)
    x = generator.layer1(x) + offsets[0]
    x = generator.layer2(x) + offsets[1]
    x = generator.layer3(x) + offsets[2]
    return generator.layer4(x)


def random_offsets(split: SplitGenerator, z: torch.Tensor) -> list[torch.Tensor]:
    return [0.3 * torch.randn_like(d) for d in split.zero_offsets(z)]


def test_proggan_preset_is_configuration():
    assert PROGGAN_SPLIT == LayerSplit("layer4", ("layer1", "layer2", "layer3"))


def test_sequential_split_reproduces_the_generator():
    generator = tiny_generator()
    split = SplitGenerator(generator, PROGGAN_SPLIT)
    z = torch.randn(3, Z_DIM, dtype=torch.float64)
    full = generator(z)
    r = split.head(z)
    assert r.shape == (3, 12, 8, 8) and not split.tail_needs_latents
    assert torch.equal(split.tail(r), full)
    zeros = split.zero_offsets(z)
    assert [tuple(d.shape) for d in zeros] == [(3, 16, 4, 4), (3, 16, 4, 4), (3, 12, 8, 8)]
    assert all(d.dtype == torch.float64 and not d.any() for d in zeros)
    r0, image = split(z, zeros)
    assert torch.equal(r0, r) and torch.equal(image, full)


def test_offsets_are_added_after_the_named_layers():
    generator = tiny_generator()
    split = SplitGenerator(generator, PROGGAN_SPLIT)
    z = torch.randn(2, Z_DIM, dtype=torch.float64)
    offsets = random_offsets(split, z)
    r = split.head(z, offsets)
    torch.testing.assert_close(r, manual_head(generator, z, offsets), rtol=0, atol=1e-13)
    assert not torch.allclose(r, split.head(z))
    r2, image = split(z, offsets)
    assert torch.equal(r2, r) and torch.equal(image, split.tail(r))


def test_head_stops_at_the_split():
    generator = tiny_generator()
    ran: list[str] = []
    for name in ("layer4", "layer5", "output_32x32"):
        getattr(generator, name).register_forward_hook(lambda m, i, o, name=name: ran.append(name))
    SplitGenerator(generator, PROGGAN_SPLIT).head(torch.randn(1, Z_DIM, dtype=torch.float64))
    assert ran == ["layer4"]


def test_hook_split_of_a_non_sequential_generator_matches_the_full_forward():
    body = tiny_generator(seed=1)
    wrapped = Wrapped(body).eval()
    layers = LayerSplit("body.layer4", ("body.layer1", "body.layer2", "body.layer3"))
    split = SplitGenerator(wrapped, layers)
    assert split.tail_needs_latents
    z = torch.randn(3, Z_DIM, dtype=torch.float64)
    full = wrapped(z)

    r, image = split(z, split.zero_offsets(z))
    assert torch.equal(image, full)
    assert torch.equal(split.tail(r, z), full)
    assert torch.equal(split.head(z), r)

    # With offsets the hook path agrees with the Sequential path on the same body.
    offsets = random_offsets(split, z)
    r_hooks, image_hooks = split(z, offsets)
    sequential = SplitGenerator(body, PROGGAN_SPLIT)
    r_seq = sequential.head(wrapped.mapping(z), offsets)
    torch.testing.assert_close(r_hooks, r_seq, rtol=0, atol=1e-13)
    torch.testing.assert_close(image_hooks, 0.5 * sequential.tail(r_seq), rtol=0, atol=1e-13)
    torch.testing.assert_close(split.tail(r_hooks, z), image_hooks, rtol=0, atol=1e-13)

    with pytest.raises(InputError, match="needs the latents"):
        split.tail(r)


def test_gradients_reach_the_offsets_through_hooks():
    wrapped = Wrapped(tiny_generator()).eval().requires_grad_(False)
    split = SplitGenerator(wrapped, LayerSplit("body.layer4", ("body.layer2", "body.layer3")))
    z = torch.randn(2, Z_DIM, dtype=torch.float64)
    offsets = [d.requires_grad_(True) for d in split.zero_offsets(z)]
    _, image = split(z, offsets)
    image.square().sum().backward()
    assert all(d.grad is not None and d.grad.abs().sum() > 0 for d in offsets)


def test_an_offset_at_the_split_layer_itself_shifts_r():
    generator = tiny_generator()
    split = SplitGenerator(generator, LayerSplit("layer4", ("layer4",)))
    z = torch.randn(2, Z_DIM, dtype=torch.float64)
    (shape,) = split.offset_shapes(z)
    offset = torch.full(shape, 0.25, dtype=torch.float64)
    assert torch.equal(split.head(z, [offset]), split.head(z) + 0.25)


def test_bad_split_definitions_are_input_errors():
    generator = tiny_generator()
    z = torch.randn(2, Z_DIM, dtype=torch.float64)
    with pytest.raises(InputError, match="no layer named 'layer99'.*layer1"):
        SplitGenerator(generator, LayerSplit("layer99"))
    with pytest.raises(InputError, match="after the split"):
        SplitGenerator(generator, LayerSplit("layer3", ("layer1", "layer5")))
    with pytest.raises(InputError, match="repeats"):
        LayerSplit("layer4", ("layer1", "layer1"))

    wrapped = Wrapped(tiny_generator())
    late = SplitGenerator(wrapped, LayerSplit("body.layer3", ("body.layer5",)))
    with pytest.raises(InputError, match="before the split"):
        late.head(z)

    split = SplitGenerator(generator, PROGGAN_SPLIT)
    offsets = split.zero_offsets(z)
    with pytest.raises(InputError, match="3 offset layers"):
        split.head(z, offsets[:2])
    offsets[1] = torch.zeros(2, 16, 5, 5, dtype=torch.float64)
    with pytest.raises(InputError, match="'layer2'.*\\(2, 16, 5, 5\\)"):
        split.head(z, offsets)


def test_a_layer_that_runs_twice_cannot_be_a_split_point():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Linear(4, 4)

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.block(self.block(z))

    split = SplitGenerator(Twice(), LayerSplit("block"))
    with pytest.raises(InputError, match="more than once"):
        split(torch.randn(2, 4))

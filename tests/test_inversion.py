"""Per-image layer inversion and the z-only L-BFGS baseline, on tiny random networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fsd.errors import InputError
from fsd.invert.inversion import (
    ImageNetNormalize,
    InversionConfig,
    ZInversionConfig,
    check_layer_inversion,
    feature_network,
    invert_layer,
    invert_z,
    learning_rate,
    vgg16_relu4_2,
)
from fsd.invert.proggan import ProGAN
from fsd.invert.split import LayerSplit

Z_DIM = 16


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_generator(dtype: torch.dtype = torch.float32) -> ProGAN:
    torch.manual_seed(0)
    return ProGAN([16, 16, 16, 16, 8, 8, 8, 8], z_dim=Z_DIM).to(dtype).eval()


def tiny_features(dtype: torch.dtype = torch.float32) -> nn.Module:
    """VGG-shaped: conv-relu blocks with a max-pool, as a stand-in for VGG16 to relu4_2."""
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
    ).to(dtype)


def targets(generator: ProGAN, count: int, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator_ = torch.Generator().manual_seed(seed)
    dtype = next(generator.parameters()).dtype
    z = torch.randn(count, Z_DIM, generator=generator_).to(dtype)
    with torch.no_grad():
        return z, generator(z)


def perturbed(z: torch.Tensor, scale: float = 0.7, seed: int = 3) -> torch.Tensor:
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed)).to(z.dtype)
    return z + scale * noise


def test_inverting_from_the_true_latents_stays_exact():
    generator, features = tiny_generator(), tiny_features()
    z, x = targets(generator, 2)
    result = invert_layer(
        generator, x, z, features=features, config=InversionConfig(steps=15), progress=False
    )
    assert result.losses.total.shape == (16, 2)
    assert np.all(result.losses.total == 0)
    assert all(torch.all(d == 0) for d in result.offsets.values())
    assert list(result.offsets) == ["layer1", "layer2", "layer3"]
    assert torch.equal(result.reconstruction, x) and torch.equal(result.initial_reconstruction, x)
    assert torch.equal(result.latents, z)


def test_inverting_from_perturbed_latents_reduces_the_pixel_error():
    generator, features = tiny_generator(), tiny_features()
    z, x = targets(generator, 2)
    config = InversionConfig(steps=150, snapshot_steps=(0, 50, 150, 1000))
    result = invert_layer(generator, x, perturbed(z), features=features, config=config, progress=False)
    start, end = result.losses.pixel[0], result.losses.pixel[-1]
    assert np.all(start > 0.1)
    assert np.all(end < start / 10), (start, end)
    assert np.all(result.losses.total[-1] < result.losses.total[0] / 5)
    error = (result.reconstruction - x).abs().flatten(1).mean(1).numpy()
    np.testing.assert_allclose(error, end, rtol=1e-5)
    # Bookkeeping: the history's terms add up, the offset term is the offsets' mean square.
    h = result.losses
    np.testing.assert_allclose(h.total, h.pixel + h.feature + h.offset, rtol=1e-6)
    penalty = sum(d.double().pow(2).flatten(1).mean(1) for d in result.offsets.values()).numpy()
    np.testing.assert_allclose(h.offset[-1], penalty, rtol=1e-5)
    assert list(result.snapshots) == [0, 50, 150]  # steps beyond `steps` are skipped
    assert torch.equal(result.snapshots[0], result.initial_reconstruction)
    assert torch.equal(result.snapshots[150], result.reconstruction)
    with torch.no_grad():
        assert torch.equal(result.initial_reconstruction, generator(perturbed(z)))
        assert torch.allclose(generator[4:](result.representation), result.reconstruction)


def test_step_zero_loss_is_the_specified_formula():
    generator, features = tiny_generator(torch.float64), tiny_features(torch.float64)
    z, x = targets(generator, 3)
    z0 = perturbed(z)
    for normalize in (False, True):
        config = InversionConfig(steps=0, imagenet_normalization=normalize)
        result = invert_layer(generator, x, z0, features=features, config=config, progress=False)
        with torch.no_grad():
            y = generator(z0)
            prepare = ImageNetNormalize().double() if normalize else nn.Identity()
            pixel = (x - y).abs().flatten(1).mean(1)
            feature = (features(prepare(x)) - features(prepare(y))).abs().flatten(1).mean(1)
        np.testing.assert_allclose(result.losses.pixel[0], pixel.numpy(), rtol=1e-12)
        np.testing.assert_allclose(result.losses.feature[0], feature.numpy(), rtol=1e-12)
        np.testing.assert_allclose(result.losses.total[0], (pixel + feature).numpy(), rtol=1e-12)
        assert result.learning_rates.shape == (0,) and list(result.snapshots) == [0]


def test_a_batch_behaves_as_independent_runs():
    generator, features = tiny_generator(torch.float64), tiny_features(torch.float64)
    z, x = targets(generator, 3)
    z0 = perturbed(z)
    config = InversionConfig(steps=25)
    batch = invert_layer(generator, x, z0, features=features, config=config, progress=False)
    for index in range(3):
        single = invert_layer(
            generator, x[index : index + 1], z0[index : index + 1],
            features=features, config=config, progress=False,
        )
        np.testing.assert_allclose(
            batch.losses.total[:, index], single.losses.total[:, 0], rtol=1e-9, atol=1e-12
        )
        for name, offset in single.offsets.items():
            torch.testing.assert_close(
                batch.offsets[name][index : index + 1], offset, rtol=1e-8, atol=1e-10
            )
    assert batch.losses.total[-1].sum() < batch.losses.total[0].sum()


def test_learning_rate_schedule_is_the_papers():
    assert InversionConfig().steps == 3000 and InversionConfig().lr == 0.01
    assert learning_rate(0) == 0.01 and learning_rate(799) == 0.01
    assert learning_rate(800) == 0.005 and learning_rate(1199) == 0.005
    assert learning_rate(1200) == 0.0025 and learning_rate(1799) == 0.0025
    assert learning_rate(1800) == 0.00125 and learning_rate(2999) == 0.00125


def test_the_optimizer_follows_the_schedule(monkeypatch):
    used: list[float] = []

    class RecordingAdam(torch.optim.Adam):
        def step(self, closure=None):
            used.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)
    generator, features = tiny_generator(), tiny_features()
    z, x = targets(generator, 1)
    config = InversionConfig(steps=7, lr=0.04, lr_milestones=(2, 3, 5), lr_decay=0.5)
    result = invert_layer(generator, x, perturbed(z), features=features, config=config, progress=False)
    expected = [0.04, 0.04, 0.02, 0.01, 0.01, 0.005, 0.005]
    assert used == pytest.approx(expected, rel=1e-15)
    assert result.learning_rates.tolist() == pytest.approx(expected, rel=1e-15)


def test_encoder_start_and_networks_left_as_found():
    generator, features = tiny_generator(), tiny_features()
    z, x = targets(generator, 2)

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(3, Z_DIM)
            self.seen: torch.Tensor | None = None

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            self.seen = images
            assert not self.training  # the encoder runs in eval mode
            return z + 0 * self.linear(images.mean(dim=(2, 3)))

    encoder = Encoder().train()
    generator.train()
    result = invert_layer(
        generator, x, encoder, features=features, config=InversionConfig(steps=3), progress=False
    )
    assert torch.equal(encoder.seen, x) and torch.equal(result.latents, z)
    assert np.all(result.losses.total == 0)
    assert encoder.training and generator.training and features.training
    assert all(p.requires_grad for p in generator.parameters())
    assert all(p.requires_grad for p in encoder.parameters())

    function_start = invert_layer(
        generator.eval(), x, lambda images: z, features=features,
        config=InversionConfig(steps=0), progress=False,
    )
    assert torch.equal(function_start.latents, z)


def test_a_general_split_without_offsets_at_every_layer():
    generator, features = tiny_generator(), tiny_features()
    z, x = targets(generator, 1)
    split = LayerSplit("layer6", ("layer5",))
    result = invert_layer(
        generator, x, perturbed(z), split=split, features=features,
        config=InversionConfig(steps=40), progress=False,
    )
    assert list(result.offsets) == ["layer5"] and result.offsets["layer5"].shape == (1, 8, 16, 16)
    assert result.representation.shape == (1, 8, 16, 16)
    assert result.losses.total[-1, 0] < result.losses.total[0, 0]


def test_bad_inputs_are_input_errors():
    generator, features = tiny_generator(), tiny_features()
    z, x = targets(generator, 2)
    run = lambda images, start: invert_layer(  # noqa: E731
        generator, images, start, features=features, config=InversionConfig(steps=1), progress=False
    )
    with pytest.raises(InputError, match="uint8"):
        run(((x + 1) * 127.5).to(torch.uint8), z)
    with pytest.raises(InputError, match="\\[-1, 1\\]"):
        run((x + 1) * 127.5, z)
    with pytest.raises(InputError, match="\\(B, 3, H, W\\)"):
        run(x[:, :1], z)
    with pytest.raises(InputError, match="one latent per image"):
        run(x, z[:1])
    with pytest.raises(InputError, match="resolution"):
        run(x[:, :, :16, :16], z)
    with pytest.raises(InputError, match="latent tensor or an encoder"):
        run(x, "z.npy")
    with pytest.raises(InputError, match="steps"):
        InversionConfig(steps=-1)
    with pytest.raises(InputError, match="milestones"):
        InversionConfig(lr_milestones=(1200, 800))


def test_z_only_lbfgs_reduces_the_error():
    generator, features = tiny_generator(), tiny_features()
    z, x = targets(generator, 2)
    z0 = perturbed(z)
    result = invert_z(
        generator, x, z0, features=features, config=ZInversionConfig(iterations=15), progress=False
    )
    assert result.losses.shape == (16, 2)
    assert np.all(result.losses[-1] < 0.8 * result.losses[0]), result.losses[[0, -1]]
    assert torch.equal(result.initial_latents, z0)
    with torch.no_grad():
        assert torch.equal(result.reconstruction, generator(result.latents))
        assert torch.equal(result.initial_reconstruction, generator(z0))


def test_progress_goes_to_stderr_only(capsys):
    generator, features = tiny_generator(), tiny_features()
    z, x = targets(generator, 1)
    invert_layer(generator, x, z, features=features, config=InversionConfig(steps=2))
    invert_z(generator, x, z, features=features, config=ZInversionConfig(iterations=1))
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "layer inversion" in captured.err and "z inversion" in captured.err


def test_default_feature_network_is_vgg16_through_relu4_2(monkeypatch):
    import torchvision.models

    requested = []

    class FakeVGG:
        def __init__(self, weights, progress):
            requested.append(weights)
            self.features = nn.Sequential(*[nn.Conv2d(3, 3, 1) for _ in range(31)]).train()

    monkeypatch.setattr(torchvision.models, "vgg16", FakeVGG)
    network = vgg16_relu4_2(progress=False)
    assert requested == [torchvision.models.VGG16_Weights.IMAGENET1K_V1]
    assert len(network) == 21 and not network.training
    assert not any(p.requires_grad for p in network.parameters())

    generator = tiny_generator()
    z, x = targets(generator, 1)
    result = invert_layer(generator, x, z, config=InversionConfig(steps=1), progress=False)
    assert len(requested) == 2 and np.all(result.losses.total == 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_inversion_on_cuda_matches_cpu():
    generator, features = tiny_generator(), tiny_features()
    z, x = targets(generator, 2)
    z0 = perturbed(z)
    config = InversionConfig(steps=20)
    cpu = invert_layer(generator, x, z0, features=features, config=config, progress=False)
    gpu = invert_layer(
        generator, x, z0, features=features, config=config, device="cuda", progress=False
    )
    assert next(generator.parameters()).device.type == "cuda"
    assert gpu.reconstruction.device.type == "cpu"
    np.testing.assert_allclose(gpu.losses.total, cpu.losses.total, rtol=1e-3, atol=1e-5)


def test_a_split_without_offset_layers_is_refused():
    G = tiny_generator()
    z = torch.randn(1, Z_DIM, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = G(z)
    with pytest.raises(InputError, match="no offset layers"):
        invert_layer(G, x, z, split=LayerSplit("layer4", ()), features=nn.Identity(), progress=False)


def test_check_layer_inversion_names_the_part_that_fails():
    generator, features = tiny_generator(), tiny_features()
    z, x = targets(generator, 2)
    check_layer_inversion(generator, x, z, features=features, progress=False)  # fits: no error
    with pytest.raises(InputError, match=r"the encoder \(start\) failed: RuntimeError"):
        check_layer_inversion(generator, x, nn.Linear(5, 5), features=features, progress=False)
    with pytest.raises(InputError, match="the feature network failed"):
        check_layer_inversion(generator, x, z, features=nn.Conv2d(4, 4, 3), progress=False)
    with pytest.raises(InputError, match="resize the images"):
        check_layer_inversion(generator, x[:, :, :8, :8], z, features=features, progress=False)
    with pytest.raises(InputError, match="no offset layers"):
        check_layer_inversion(generator, x, z, split=LayerSplit("layer4", ()), features=features, progress=False)


def test_features_none_is_the_pixel_loss_alone():
    generator = tiny_generator()
    z, x = targets(generator, 2)
    z0 = perturbed(z)
    config = InversionConfig(steps=3)
    pixels = invert_layer(generator, x, z0, features="none", config=config, progress=False)
    assert np.all(pixels.losses.feature == 0)
    np.testing.assert_allclose(pixels.losses.total, pixels.losses.pixel + pixels.losses.offset, rtol=1e-6)
    same = invert_layer(generator, x, z0, features=nn.Identity(), progress=False,
                        config=InversionConfig(steps=3, feature_weight=0.0))
    np.testing.assert_array_equal(pixels.losses.total, same.losses.total)
    assert feature_network("none") is None
    lbfgs = invert_z(generator, x, z0, features="none", config=ZInversionConfig(iterations=2), progress=False)
    assert lbfgs.losses[-1].max() <= lbfgs.losses[0].max()
    with pytest.raises(InputError, match="ambiguous"):
        invert_layer(generator, x, z0, features=None, config=config, progress=False)
    with pytest.raises(InputError, match="'vgg16', 'none' or an nn.Module"):
        invert_layer(generator, x, z0, features="vgg19", config=config, progress=False)
    with pytest.raises(InputError, match="no feature network"):
        invert_layer(generator, x, z0, features="none", progress=False,
                     config=InversionConfig(steps=1, imagenet_normalization=True))

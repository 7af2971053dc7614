"""Encoder training on tiny random generators: the recipe, the losses, checkpoints and resuming."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from fsd.errors import InputError
from fsd.invert.encoder import HybridEncoder, SmallEncoder, load_encoder
from fsd.invert.proggan import ProGAN
from fsd.invert.split import LayerSplit
from fsd.invert.train import (
    EncoderTrainingConfig,
    GeneratorLayers,
    StageSchedule,
    _step_generator,
    cos_err,
    encoder_for,
    train_encoder,
)

Z_DIM = 16


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_proggan(channels=(16, 16, 16, 16, 8, 8)) -> ProGAN:
    torch.manual_seed(0)
    return ProGAN(list(channels), z_dim=Z_DIM).eval()


class Wrapped(nn.Module):
    """A generator that is not an nn.Sequential: its layers are reached only through hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_proggan()
        self.z_dim = Z_DIM

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def config(steps: int, lr: float = 1e-3, batch_size: int = 8, **extra) -> EncoderTrainingConfig:
    schedule = StageSchedule(steps, lr)
    return EncoderTrainingConfig(batch_size=batch_size, backbone=StageSchedule(steps, 10 * lr),
                                 layers=schedule, joint=schedule, **extra)


def test_the_defaults_are_the_papers_recipe():
    paper = EncoderTrainingConfig()
    assert paper.batch_size == 32 and paper.cycle_weight == 0.01
    assert (paper.backbone.steps, paper.backbone.lr, paper.backbone.milestones) == (10_000, 0.01, ())
    assert (paper.layers.steps, paper.layers.lr, paper.layers.milestones, paper.layers.decay) == (
        10_000, 1e-4, (0.2, 0.6), 0.1)
    assert (paper.joint.steps, paper.joint.lr, paper.joint.milestones, paper.joint.decay) == (
        100_000, 1e-5, (0.05, 0.15, 0.35), 0.5)
    layers = paper.layers
    assert [layers.learning_rate(s) for s in (0, 1999, 2000, 5999, 6000, 9999)] == pytest.approx(
        [1e-4, 1e-4, 1e-5, 1e-5, 1e-6, 1e-6], rel=1e-12)
    joint = paper.joint
    assert [joint.learning_rate(s) for s in (4999, 5000, 15000, 35000)] == pytest.approx(
        [1e-5, 5e-6, 2.5e-6, 1.25e-6], rel=1e-12)
    with pytest.raises(InputError, match="batch_size"):
        EncoderTrainingConfig(batch_size=1)
    with pytest.raises(InputError, match="milestones"):
        StageSchedule(10, 0.1, (0.6, 0.2))
    with pytest.raises(InputError, match="lr"):
        StageSchedule(10, 0.0)


def test_cos_err():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]]).view(2, 2)
    assert float(cos_err(a, a)) == pytest.approx(0.0, abs=1e-7)
    assert float(cos_err(a, -a)) == pytest.approx(2.0)
    assert float(cos_err(a, a.flip(1))) == pytest.approx(1.0)
    # Latents (N, D) compare with (N, D, 1, 1); a map compares position by position.
    assert float(cos_err(a, a.view(2, 2, 1, 1))) == pytest.approx(0.0, abs=1e-7)
    maps = torch.zeros(1, 2, 1, 2)
    maps[0, :, 0, 0] = torch.tensor([1.0, 0.0])
    maps[0, :, 0, 1] = torch.tensor([0.0, 1.0])
    same_first = maps.clone()
    same_first[0, :, 0, 1] = torch.tensor([0.0, -1.0])
    assert float(cos_err(maps, same_first)) == pytest.approx(1.0)  # (0 + 2) / 2
    with pytest.raises(InputError):
        cos_err(torch.zeros(2, 3), torch.zeros(2, 4))


def test_generator_layers_direct_and_through_hooks_agree():
    sequential = tiny_proggan()
    wrapped = Wrapped()
    direct = GeneratorLayers(sequential, LayerSplit("layer4", ("layer1", "layer2", "layer3")))
    hooked = GeneratorLayers(wrapped, LayerSplit("net.layer4", ("net.layer1", "net.layer2", "net.layer3")))
    z = torch.randn(3, Z_DIM, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        acts = direct.activations(z)
        expected, h = [], z.view(3, Z_DIM, 1, 1)
        for layer in (sequential.layer1, sequential.layer2, sequential.layer3, sequential.layer4):
            h = layer(h)
            expected.append(h)
        for got, want, hooked_act in zip(acts, expected, hooked.activations(z)):
            assert torch.equal(got, want) and torch.equal(hooked_act, want)
        other = torch.randn(3, 16, 4, 4)
        for index in range(4):
            inputs = z if index == 0 else acts[index - 1] + 0.1 * torch.randn_like(acts[index - 1])
            want = [sequential.layer1, sequential.layer2, sequential.layer3, sequential.layer4][index](
                inputs.view(3, Z_DIM, 1, 1) if index == 0 else inputs)
            torch.testing.assert_close(direct.stage(index, inputs, z), want, rtol=0, atol=0)
            torch.testing.assert_close(hooked.stage(index, inputs, z), want, rtol=0, atol=0)
        with pytest.raises(InputError, match="stage input"):
            hooked.stage(2, other[:, :, :2], z)
        torch.testing.assert_close(direct.image(acts[-1], z), sequential(z))
        torch.testing.assert_close(hooked.image(acts[-1], z), sequential(z))


def test_encoder_for_picks_the_papers_hybrid_only_where_it_fits():
    proggan_256 = tiny_proggan((8, 8, 8, 8, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4))
    hybrid = encoder_for(proggan_256, width=4, seed=0)
    assert isinstance(hybrid, HybridEncoder)
    assert hybrid.architecture == {"kind": "hybrid", "z_dim": Z_DIM, "layer_channels": [8, 8, 8, 8], "width": 4}
    small = encoder_for(tiny_proggan())
    assert isinstance(small, SmallEncoder)
    assert small.architecture["layer_shapes"] == [[16, 4, 4], [16, 4, 4], [16, 8, 8], [16, 8, 8]]
    with pytest.raises(InputError, match="kind='small'"):
        encoder_for(tiny_proggan(), kind="hybrid")
    same = [encoder_for(tiny_proggan(), seed=5).state_dict() for _ in range(2)]
    assert all(torch.equal(same[0][k], same[1][k]) for k in same[0])
    with pytest.raises(InputError, match="z_dim"):
        encoder_for(nn.Sequential(nn.Linear(4, 4)), LayerSplit("0"))


def test_short_training_reduces_every_stage_loss():
    """A generic generator (not an nn.Sequential), split after net.layer4 with one offset layer."""
    generator = Wrapped()
    split = LayerSplit("net.layer4", ("net.layer2",))
    result = train_encoder(generator, split=split, config=config(40), progress=False)
    assert list(result.history) == ["backbone", "inv2", "inv1", "joint"]
    for stage, losses in result.history.items():
        assert losses.shape == (40,) and np.isfinite(losses).all()
        assert losses[-5:].mean() < 0.85 * losses[:5].mean(), (stage, losses[:5], losses[-5:])
    assert not result.encoder.training
    assert all(p.requires_grad for p in generator.parameters())  # the generator's flags are restored
    # The trained encoder starts an inversion closer to the target than an untrained one.
    z = torch.randn(8, Z_DIM, generator=torch.Generator().manual_seed(11))
    untrained = encoder_for(generator, split, seed=1).eval()
    with torch.no_grad():
        x = generator(z)
        errors = [(generator(e(x).view(8, Z_DIM)) - x).pow(2).mean() for e in (untrained, result.encoder)]
    assert errors[1] < errors[0]


def test_every_stage_loss_is_the_specified_formula():
    """Step 0 of each stage, recomputed by hand from the spec (batch-norm in training mode)."""
    generator = Wrapped()
    net = generator.net
    split = LayerSplit("net.layer4", ("net.layer2",))
    initial = encoder_for(generator, split, seed=3).train()
    one, none = StageSchedule(1, 1e-3), StageSchedule(0, 1e-3)
    per_layer = train_encoder(generator, split=split, encoder=copy.deepcopy(initial), progress=False,
                              config=EncoderTrainingConfig(batch_size=4, seed=7, backbone=one, layers=one,
                                                           joint=none))
    joint = train_encoder(generator, split=split, encoder=copy.deepcopy(initial), progress=False,
                          config=EncoderTrainingConfig(batch_size=4, seed=7, backbone=none, layers=none,
                                                       joint=one))

    def latents(stage: int) -> torch.Tensor:
        return torch.randn(4, Z_DIM, generator=_step_generator(7, stage, 0))

    def forward_to(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a2 = net.layer2(net.layer1(z.view(4, Z_DIM, 1, 1)))
        r = net.layer4(net.layer3(a2))
        return a2, r, net[4:](r)

    mse = torch.nn.functional.mse_loss
    with torch.no_grad():
        z = latents(0)
        _, r, x = forward_to(z)
        expected_backbone = mse(initial.backbone(x), r)
        z = latents(1)
        a2, r, _ = forward_to(z)
        e = initial.inv2(r)
        expected_inv2 = cos_err(a2, e) + 0.01 * cos_err(r, net.layer4(net.layer3(e)))
        z = latents(2)
        a2, _, _ = forward_to(z)
        e = initial.inv1(a2)
        expected_inv1 = cos_err(z, e) + 0.01 * cos_err(a2, net.layer2(net.layer1(e.view(4, Z_DIM, 1, 1))))
        z = latents(3)
        _, r, x = forward_to(z)
        estimates = initial.estimates(x)
        _, r_again, x_again = forward_to(estimates[-1])
        expected_joint = (cos_err(r, estimates[0]) + cos_err(z, estimates[-1]) + cos_err(r, r_again)
                          + mse(x_again, x))
    assert per_layer.history["backbone"][0] == pytest.approx(float(expected_backbone), rel=1e-5)
    assert per_layer.history["inv2"][0] == pytest.approx(float(expected_inv2), rel=1e-5)
    assert per_layer.history["inv1"][0] == pytest.approx(float(expected_inv1), rel=1e-5)
    assert joint.history["joint"][0] == pytest.approx(float(expected_joint), rel=1e-5)


class Interrupt(Exception):
    pass


def test_a_resumed_run_matches_an_uninterrupted_one(tmp_path, monkeypatch):
    """Also checks that gradients are zeroed: a run resumed mid-stage starts with no gradient, so it
    could not match a run that carried gradients over from step to step."""
    generator = tiny_proggan()
    settings = config(6, checkpoint_every=2, batch_size=4)
    whole = train_encoder(generator, encoder=encoder_for(generator, seed=2), config=settings, progress=False)

    checkpoint = tmp_path / "state.pt"
    original_step = torch.optim.Adam.step
    calls = {"n": 0}

    def failing_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6 + 3 + 1:  # the 4th update of the second stage (inv4), after its checkpoint at 2
            raise Interrupt
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", failing_step)
    with pytest.raises(Interrupt):
        train_encoder(generator, encoder=encoder_for(generator, seed=2), config=settings,
                      checkpoint=checkpoint, progress=False)
    monkeypatch.setattr(torch.optim.Adam, "step", original_step)
    saved = torch.load(checkpoint, weights_only=True)
    assert (saved["stage"], saved["step"]) == (1, 2)

    with pytest.raises(InputError, match="resume"):
        train_encoder(generator, encoder=encoder_for(generator, seed=9), config=settings,
                      checkpoint=checkpoint, progress=False)
    with pytest.raises(InputError, match="config"):
        train_encoder(generator, encoder=encoder_for(generator, seed=9), config=config(7, batch_size=4),
                      checkpoint=checkpoint, resume=True, progress=False)
    # A fresh encoder of another seed: every weight comes from the checkpoint.
    resumed = train_encoder(generator, encoder=encoder_for(generator, seed=9), config=settings,
                            checkpoint=checkpoint, resume=True, progress=False)
    for key, value in whole.encoder.state_dict().items():
        assert torch.equal(resumed.encoder.state_dict()[key], value), key
    for stage in whole.history:
        np.testing.assert_array_equal(resumed.history[stage], whole.history[stage])
    assert torch.load(checkpoint, weights_only=True)["stage"] == len(whole.history)
    from_checkpoint = load_encoder(checkpoint)  # a training checkpoint serves as an encoder file
    for key, value in whole.encoder.state_dict().items():
        assert torch.equal(from_checkpoint.state_dict()[key], value), key


def test_the_learning_rate_follows_each_stage_schedule(monkeypatch):
    used: list[float] = []
    original_step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    settings = EncoderTrainingConfig(
        batch_size=2,
        backbone=StageSchedule(2, 0.5),
        layers=StageSchedule(5, 1.0, (0.2, 0.6), 0.1),
        joint=StageSchedule(0, 1.0),
    )
    generator = tiny_proggan((8, 8))
    result = train_encoder(generator, split=LayerSplit("layer2", ("layer1",)), config=settings, progress=False)
    assert result.history["joint"].shape == (0,)
    per_layer = [1.0, 0.1, 0.1, 0.01, 0.01]
    assert used == pytest.approx([0.5, 0.5] + per_layer * 2, rel=1e-12)


def test_a_mismatched_encoder_is_an_input_error():
    generator = tiny_proggan()
    other = SmallEncoder((3, 16, 16), [(16, 4, 4), (16, 8, 8)], (Z_DIM,), width=4)
    with pytest.raises(InputError, match="inverters"):
        train_encoder(generator, encoder=other, config=config(1), progress=False)
    wrong_shapes = SmallEncoder((3, 16, 16), [(8, 4, 4), (8, 4, 4), (8, 8, 8), (8, 8, 8)], (Z_DIM,), width=4)
    with pytest.raises(InputError, match="shapes"):
        train_encoder(generator, encoder=wrong_shapes, config=config(1), progress=False)


def test_progress_goes_to_stderr_only(capsys):
    train_encoder(tiny_proggan((8, 8)), split=LayerSplit("layer2"), config=config(2, batch_size=2))
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "encoder backbone" in captured.err and "encoder joint" in captured.err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_cuda_matches_cpu():
    settings = config(3, batch_size=4)
    cpu = train_encoder(tiny_proggan(), encoder=encoder_for(tiny_proggan(), seed=4), config=settings,
                        progress=False)
    gpu = train_encoder(tiny_proggan(), encoder=encoder_for(tiny_proggan(), seed=4), config=settings,
                        device="cuda", progress=False)
    assert next(gpu.encoder.parameters()).device.type == "cpu"
    # Step 0 of the backbone and of each inverter sees untrained weights and the same latents.
    for stage in ("backbone", "inv4", "inv3", "inv2", "inv1"):
        assert gpu.history[stage][0] == pytest.approx(cpu.history[stage][0], rel=1e-2), stage  # TF32 convs
    assert np.isfinite(gpu.history["joint"]).all()


def test_a_shortened_stage_keeps_the_papers_milestones_in_proportion():
    short = EncoderTrainingConfig(backbone=100, layers=10, joint=20)
    assert short.backbone == StageSchedule(100, 0.01)
    assert short.layers == StageSchedule(10, 1e-4, (0.2, 0.6), 0.1) and short.layers.milestone_steps == (2, 6)
    assert short.joint.milestones == (0.05, 0.15, 0.35) and short.joint.decay == 0.5
    assert short.joint.milestone_steps == (1, 3, 7)  # 1, 3, 7 of 20: halves round up, never update 0
    assert [short.joint.learning_rate(s) for s in (0, 1, 3, 7)] == pytest.approx([1e-5, 5e-6, 2.5e-6, 1.25e-6])
    assert EncoderTrainingConfig().with_steps(layers=10, joint=20) == short.with_steps(backbone=10_000)
    assert EncoderTrainingConfig(layers=StageSchedule(1, 1e-4, (0.2, 0.6))).layers.learning_rate(0) == 1e-4
    assert EncoderTrainingConfig().layers.milestone_steps == (2000, 6000)
    assert EncoderTrainingConfig().joint.milestone_steps == (5000, 15000, 35000)


@pytest.mark.parametrize("bad, match", [
    (dict(backbone=dict(steps=1)), r"backbone must be a StageSchedule or a number of steps.*dict"),
    (dict(joint="100"), "joint must be a StageSchedule"),
    (dict(layers=True), "layers must be a StageSchedule"),
    (dict(batch_size=4.0), "batch_size must be an integer"),
    (dict(cycle_weight="0.1"), "cycle_weight must be a number"),
])
def test_a_config_of_the_wrong_type_is_refused_at_construction(bad, match):
    with pytest.raises(InputError, match=match):
        EncoderTrainingConfig(**bad)
    with pytest.raises(InputError, match="milestones must be fractions"):
        StageSchedule(10, 0.1, "0.2")

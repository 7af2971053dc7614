"""The hybrid encoder's published layout, strict loading, encoder files and the published artifacts."""

from __future__ import annotations

import dataclasses
import importlib
from collections import OrderedDict

import pytest
import torch

from fsd.errors import InputError, WeightsError
from fsd.hub import RemoteFile
from fsd.invert.encoder import (
    ENCODER_ARTIFACTS,
    HybridEncoder,
    SmallEncoder,
    build_encoder,
    encoder_artifact,
    load_encoder,
    normalize_encoder_state_dict,
    save_encoder,
)

# ``fsd.invert.encoder`` is also the loader function (as ``fsd.invert.proggan``): get the module itself.
encoder_module = importlib.import_module("fsd.invert.encoder")


pytestmark = pytest.mark.usefixtures("one_thread")


def _bn(prefix: str) -> list[str]:
    return [f"{prefix}.{name}" for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]


def published_keys() -> set[str]:
    """The key names the spec gives for the published files, written out independently of the model."""
    keys = ["resnet.conv1.weight", *_bn("resnet.bn1")]
    for layer in range(1, 5):
        for block in range(2):
            prefix = f"resnet.layer{layer}.{block}"
            keys += [f"{prefix}.conv1.weight", *_bn(f"{prefix}.bn1"), f"{prefix}.conv2.weight", *_bn(f"{prefix}.bn2")]
        if layer > 1:
            keys += [f"resnet.layer{layer}.0.downsample.0.weight", *_bn(f"resnet.layer{layer}.0.downsample.1")]
    keys += ["resnet.layer5.conv5.weight", "resnet.layer5.conv5.bias"]
    for inv in ("inv4", "inv3", "inv2"):
        keys += [f"{inv}.conv1.weight", f"{inv}.conv1.bias", *_bn(f"{inv}.bn1"),
                 f"{inv}.conv2.weight", f"{inv}.conv2.bias", *_bn(f"{inv}.bn2")]
        if inv != "inv2":
            keys += [f"{inv}.conv3.weight", f"{inv}.conv3.bias"]
    keys += ["inv1.conv1.weight", "inv1.conv1.bias", *_bn("inv1.bn1"), "inv1.conv2.weight", "inv1.conv2.bias"]
    return set(keys)


def small_hybrid(seed: int = 0) -> HybridEncoder:
    torch.manual_seed(seed)
    model = HybridEncoder(z_dim=16, layer_channels=(16, 16, 12, 12), width=8)
    # Non-trivial batch-norm statistics, so a load that dropped them would show in the outputs.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_module_names_and_shapes_are_the_published_layout():
    with torch.device("meta"):
        model = HybridEncoder()
    state = model.state_dict()
    assert set(state) == published_keys()
    assert [name for name, _ in model.named_children()] == ["resnet", "inv4", "inv3", "inv2", "inv1"]
    assert [name for name, _ in model.resnet.named_children()] == [
        "conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "layer5"]
    assert [name for name, _ in model.inv3.named_children()] == [
        "pnorm", "conv1", "bn1", "relu1", "conv2", "bn2", "relu2", "conv3"]
    assert [name for name, _ in model.inv1.named_children()] == [
        "pnorm", "conv1", "bn1", "relu1", "conv2", "pnormout"]
    assert state["resnet.layer5.conv5.weight"].shape == (512, 512, 1, 1)
    assert state["inv1.conv1.weight"].shape == (512, 512, 4, 4) and model.inv1.conv1.padding == (0, 0)
    assert model.inv3.conv3.stride == (2, 2) and model.inv4.conv3.stride == (1, 1)
    assert isinstance(model.resnet.layer5.relu5, torch.nn.LeakyReLU)
    assert model.resnet.layer5.relu5.negative_slope == 0.2
    assert sum(p.numel() for p in model.parameters()) == encoder_module._PARAMETERS


def test_the_chain_estimates_r_then_each_layer_input_then_z():
    model = small_hybrid()
    conv5_outputs = []
    model.resnet.layer5.conv5.register_forward_hook(lambda m, i, o: conv5_outputs.append(o))
    with torch.no_grad():
        images = torch.rand(2, 3, 256, 256) * 2 - 1
        estimates = model.estimates(images)
        z = model(images)
    assert [tuple(e.shape[1:]) for e in estimates] == [(12, 8, 8), (12, 8, 8), (16, 4, 4), (16, 4, 4), (16, 1, 1)]
    assert torch.equal(z, estimates[-1])
    # inv1 ends with a PixelNorm: each latent has RMS 1 over its channels.
    torch.testing.assert_close(z.pow(2).mean(dim=1), torch.ones(2, 1, 1))
    # r's estimate is LeakyReLU(0.2) of the 1x1 conv that replaced ResNet's pool and classifier.
    torch.testing.assert_close(estimates[0], torch.nn.functional.leaky_relu(conv5_outputs[0], 0.2))


@pytest.mark.parametrize("prefix", ["", "model."])
@pytest.mark.parametrize("wrapped", [False, True])
@pytest.mark.parametrize("with_step_counters", [True, False])
def test_strict_loading_of_a_published_style_checkpoint(tmp_path, prefix, wrapped, with_step_counters):
    original = small_hybrid()
    state = OrderedDict(
        (prefix + key, value.clone())
        for key, value in original.state_dict().items()
        if with_step_counters or not key.endswith("num_batches_tracked")
    )
    path = tmp_path / "church_invert_hybrid_cse.pth"
    torch.save({"state_dict": state} if wrapped else state, path)
    loaded = load_encoder(path).eval()
    assert isinstance(loaded, HybridEncoder)
    assert loaded.architecture == {"kind": "hybrid", "z_dim": 16, "layer_channels": [16, 16, 12, 12], "width": 8}
    images = torch.rand(2, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), original(images), rtol=0, atol=0)


def test_a_checkpoint_that_does_not_fit_is_a_weights_error_naming_the_key(tmp_path):
    state = small_hybrid().state_dict()
    path = tmp_path / "encoder.pth"

    missing = {k: v for k, v in state.items() if k != "inv3.conv3.bias"}
    torch.save(missing, path)
    with pytest.raises(WeightsError, match="inv3.conv3.bias"):
        load_encoder(path)

    extra = dict(state, **{"inv2.conv3.weight": torch.zeros(16, 16, 1, 1)})
    torch.save(extra, path)
    with pytest.raises(WeightsError, match="unexpected keys: inv2.conv3.weight"):
        load_encoder(path)

    wrong = dict(state, **{"inv4.conv2.weight": torch.zeros(12, 12, 1, 1)})
    torch.save(wrong, path)
    with pytest.raises(WeightsError, match="inv4.conv2.weight"):
        load_encoder(path)

    torch.save({"resnet.conv1.weight": torch.zeros(8, 3, 7, 7)}, path)
    with pytest.raises(WeightsError, match="not a hybrid inversion encoder"):
        load_encoder(path)

    path.write_bytes(b"<html>not found</html>")
    with pytest.raises(WeightsError, match="encoder checkpoint: cannot read checkpoint"):
        load_encoder(path)
    with pytest.raises(WeightsError, match="does not exist"):
        load_encoder(tmp_path / "nowhere.pth")


def test_prefixes_and_wrappers_are_normalized():
    tensor = torch.zeros(1)
    state = {"state_dict": {"state_dict": {"model.inv1.conv1.bias": tensor, "module.resnet.bn1.weight": tensor}}}
    assert set(normalize_encoder_state_dict(state)) == {"inv1.conv1.bias", "resnet.bn1.weight"}
    with pytest.raises(WeightsError, match="twice"):
        normalize_encoder_state_dict({"model.a": tensor, "a": tensor})
    with pytest.raises(WeightsError, match="not a tensor"):
        normalize_encoder_state_dict({"a": 3})


def test_save_and_load_round_trip_both_architectures(tmp_path):
    torch.manual_seed(3)
    small = SmallEncoder((3, 32, 32), [(8, 4, 4), (8, 8, 8), (4, 16, 16)], (10,), width=4).eval()
    for model in (small, small_hybrid()):
        path = save_encoder(model, tmp_path / f"{model.architecture['kind']}.pth")
        loaded = load_encoder(path).eval()
        assert type(loaded) is type(model) and loaded.architecture == model.architecture
        images = torch.rand(2, *(model.architecture.get("image_shape") or (3, 256, 256))) * 2 - 1
        with torch.no_grad():
            assert torch.equal(loaded(images), model(images))
    with torch.no_grad():
        assert small(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert [tuple(e.shape[1:]) for e in small.eval().estimates(torch.zeros(2, 3, 32, 32))] == [
        (4, 16, 16), (8, 8, 8), (8, 4, 4), (10,)]
    with pytest.raises(WeightsError, match="unknown encoder architecture"):
        build_encoder({"kind": "vit"})
    with pytest.raises(WeightsError, match="incomplete"):
        build_encoder({"kind": "small", "width": 4})
    with pytest.raises(InputError, match="LayerEncoder"):
        save_encoder(torch.nn.Linear(2, 2), tmp_path / "x.pth")


def test_published_artifacts_are_declared():
    church, bedroom = ENCODER_ARTIFACTS["church"], ENCODER_ARTIFACTS["bedroom"]
    assert church.urls(church.files[0].name) == (
        "http://gandissect.csail.mit.edu/models/encoders/church_invert_hybrid_cse-43e52428.pth",)
    assert bedroom.files[0].name == "bedroom_invert_hybrid_cse-b943528e.pth"
    assert bedroom.files[0].sha256_prefix == "b943528e"
    assert church.meta["parameters"] == 30_587_968
    with pytest.raises(InputError, match="train-encoder"):
        encoder_artifact("kitchen")
    with pytest.raises(InputError, match="train-encoder"):
        encoder_module.encoder("kitchen")


def test_the_published_encoder_loads_from_a_weights_folder(tmp_path, monkeypatch):
    artifact = ENCODER_ARTIFACTS["church"]
    name = artifact.files[0].name
    # No synthetic file can match the published hash prefix: declare the same artifact without it.
    unpinned = dataclasses.replace(artifact, files=(RemoteFile(name, min_bytes=artifact.files[0].min_bytes),))
    monkeypatch.setattr(encoder_module, "ENCODER_ARTIFACTS", {"church": unpinned})

    with pytest.raises(WeightsError, match=name):
        encoder_module.encoder("church", weights_dir=tmp_path)  # the folder lacks the file

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in HybridEncoder().state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    # Stored as float16 (half the size); the model is float32.
    state = {("model." + k): (torch.randn(s, generator=generator).half() if len(s) else torch.tensor(0))
             for k, s in shapes.items()}
    (tmp_path / "encoder-church").mkdir()
    torch.save({"state_dict": state}, tmp_path / "encoder-church" / name)
    model = encoder_module.encoder("church", weights_dir=tmp_path, progress=False)
    assert isinstance(model, HybridEncoder) and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert torch.equal(model.inv1.conv2.weight, state["model.inv1.conv2.weight"].float())

    small = tmp_path / "small"
    (small / "encoder-church").mkdir(parents=True)
    torch.save(small_hybrid().state_dict(), small / "encoder-church" / name)
    with pytest.raises(WeightsError, match="bytes"):  # far below the size floor
        encoder_module.encoder("church", weights_dir=small, progress=False)

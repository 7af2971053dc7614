from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck as TorchvisionBottleneck

from fsd.errors import WeightsError
from fsd.segmenters.prroi import prroi_matrix
from fsd.checkpoints import expected_shapes, read_state_dict
from fsd.segmenters.upernet import (
    HeadSizes,
    ResNet50DeepStem,
    UPerNetDecoder,
    check_structure,
    decoder_shapes,
    encoder_shapes,
    load_state_dict_checked,
)
from tests.synthetic import (
    DECODER_FILE,
    ENCODER_FILE,
    official_layout,
    synthetic_upp_state_dicts,
    write_upp_weights,
)

ENCODER_KEYS = {
    "conv1.weight": (64, 3, 3, 3),
    "bn1.weight": (64,),
    "bn1.running_var": (64,),
    "conv2.weight": (64, 64, 3, 3),
    "conv3.weight": (128, 64, 3, 3),
    "bn3.bias": (128,),
    "layer1.0.conv1.weight": (64, 128, 1, 1),
    "layer1.0.downsample.0.weight": (256, 128, 1, 1),
    "layer1.0.downsample.1.running_mean": (256,),
    "layer1.2.conv3.weight": (256, 64, 1, 1),
    "layer2.0.conv2.weight": (128, 128, 3, 3),
    "layer2.0.downsample.0.weight": (512, 256, 1, 1),
    "layer2.3.bn2.weight": (128,),
    "layer3.5.bn3.bias": (1024,),
    "layer3.0.downsample.0.weight": (1024, 512, 1, 1),
    "layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
    "layer4.2.conv3.weight": (2048, 512, 1, 1),
    "layer4.2.bn3.running_var": (2048,),
}
DECODER_KEYS = {
    "ppm_conv.0.0.weight": (512, 2048, 1, 1),
    "ppm_conv.3.1.running_var": (512,),
    "ppm_last_conv.0.weight": (512, 4096, 3, 3),
    "ppm_last_conv.1.bias": (512,),
    "fpn_in.0.0.weight": (512, 256, 1, 1),
    "fpn_in.1.0.weight": (512, 512, 1, 1),
    "fpn_in.2.0.weight": (512, 1024, 1, 1),
    "fpn_out.0.0.0.weight": (512, 512, 3, 3),
    "fpn_out.2.0.1.bias": (512,),
    "conv_fusion.0.weight": (512, 2048, 3, 3),
    "conv_fusion.1.running_mean": (512,),
    "object_head.0.0.weight": (512, 512, 3, 3),
    "object_head.0.1.weight": (512,),
    "object_head.1.weight": (336, 512, 1, 1),
    "object_head.1.bias": (336,),
    "part_head.1.weight": (427, 512, 1, 1),
    "material_head.1.bias": (26,),
    "scene_head.0.0.weight": (512, 512, 3, 3),
    "scene_head.2.weight": (365, 512, 1, 1),
    "scene_head.2.bias": (365,),
}


@pytest.fixture(scope="module")
def state_dicts():
    return synthetic_upp_state_dicts(seed=0)


@pytest.fixture(scope="module")
def encoder(state_dicts):
    module = ResNet50DeepStem()
    load_state_dict_checked(module, state_dicts[0], "synthetic encoder")
    return module.eval()


@pytest.fixture(scope="module")
def decoder(state_dicts):
    module = UPerNetDecoder()
    load_state_dict_checked(module, state_dicts[1], "synthetic decoder")
    return module.eval()


@pytest.fixture(scope="module")
def weights_folder(tmp_path_factory) -> Path:
    return write_upp_weights(tmp_path_factory.mktemp("upp"), seed=0)


# ------------------------------------------------------------------------------------- structure


def test_parameter_counts():
    with torch.device("meta"):
        encoder, decoder = ResNet50DeepStem(), UPerNetDecoder()
    assert sum(p.numel() for p in encoder.parameters()) == 23_631_808
    assert sum(p.numel() for p in decoder.parameters()) == 50_546_818


def test_key_names_and_shapes():
    enc, dec = encoder_shapes(), decoder_shapes()
    for key, shape in ENCODER_KEYS.items():
        assert enc[key] == shape, key
    for key, shape in DECODER_KEYS.items():
        assert dec[key] == shape, key
    # Projection shortcut in block 0 of every layer only; no avgpool/fc; exactly 4 PPM branches.
    assert "layer1.1.downsample.0.weight" not in enc and "fc.weight" not in enc
    assert not any(k.startswith(("ppm_conv.4", "fpn_in.3", "fpn_out.3")) for k in dec)
    assert sum(k.endswith(".running_mean") for k in enc) == 55
    assert sum(k.endswith(".running_mean") for k in dec) == 16


def test_meta_shapes_match_real_modules(encoder, decoder):
    assert encoder_shapes() == expected_shapes(encoder)
    assert decoder_shapes() == expected_shapes(decoder)
    small = decoder_shapes(HeadSizes(object=5, part=7, material=3, scene=2))
    assert small["object_head.1.weight"] == (5, 512, 1, 1) and small["scene_head.2.bias"] == (2,)


def test_batchnorm_eps_and_eval_mode(encoder, decoder):
    norms = [m for m in list(encoder.modules()) + list(decoder.modules()) if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 71 and all(m.eps == 1e-5 for m in norms)
    assert not any(m.training for m in norms)


# ------------------------------------------------------------------------------------- numerics


def _bn(x: torch.Tensor, sd: dict, prefix: str) -> torch.Tensor:
    return F.batch_norm(
        x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"], sd[f"{prefix}.weight"], sd[f"{prefix}.bias"],
        training=False, eps=1e-5,
    )


def _cbr(x: torch.Tensor, sd: dict, prefix: str, stride: int = 1) -> torch.Tensor:
    weight = sd[f"{prefix}.0.weight"]
    x = F.conv2d(x, weight, stride=stride, padding=weight.shape[-1] // 2)
    return F.relu(_bn(x, sd, f"{prefix}.1"))


def _up(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def reference_decoder(sd: dict, features):
    """The spec's decoder, written out functionally from the state dict."""
    c2, c3, c4, c5 = features
    h, w = c5.shape[-2:]
    branches = [c5]
    for k, s in enumerate((1, 2, 3, 6)):
        pooled = torch.einsum("ph,nchw,qw->ncpq", prroi_matrix(h, s).float(), c5, prroi_matrix(w, s).float())
        branches.append(_cbr(_up(pooled, (h, w)), sd, f"ppm_conv.{k}"))
    p5 = _cbr(torch.cat(branches, 1), sd, "ppm_last_conv")
    f, outs = p5, {}
    for i, c in ((2, c4), (1, c3), (0, c2)):
        f = _cbr(c, sd, f"fpn_in.{i}") + _up(f, c.shape[-2:])
        outs[i] = _cbr(f, sd, f"fpn_out.{i}.0")
    size = outs[0].shape[-2:]
    fusion = _cbr(torch.cat([outs[0], _up(outs[1], size), _up(outs[2], size), _up(p5, size)], 1), sd, "conv_fusion")

    def head(x, name):
        return F.conv2d(_cbr(x, sd, f"{name}.0"), sd[f"{name}.1.weight"], sd[f"{name}.1.bias"])

    scene = _cbr(p5, sd, "scene_head.0").mean(dim=(2, 3), keepdim=True)
    scene = F.conv2d(scene, sd["scene_head.2.weight"], sd["scene_head.2.bias"]).flatten(1)
    return head(fusion, "object_head"), head(fusion, "part_head"), head(outs[0], "material_head"), scene


def random_features(batch: int, size: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return tuple(
        torch.randn(batch, c, size // s, size // s, generator=gen).relu()
        for c, s in ((256, 4), (512, 8), (1024, 16), (2048, 32))
    )


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_decoder_matches_functional_reference(decoder, state_dicts):
    features = random_features(2, 64, seed=1)  # top map 2x2: pooled to 3x3 and 6x6 as well
    with torch.inference_mode():
        out = decoder(features)
        want = reference_decoder(state_dicts[1], features)
    assert out.object.shape == (2, 336, 16, 16)
    assert out.part.shape == (2, 427, 16, 16)
    assert out.material.shape == (2, 26, 16, 16)
    assert out.scene.shape == (2, 365)
    for got, expected in zip((out.object, out.part, out.material, out.scene), want):
        _close(got, expected)


def test_forward_object_equals_full_forward_object_head(decoder):
    features = random_features(2, 96, seed=2)
    with torch.inference_mode():
        full = decoder(features).object
        only = decoder.forward_object(features)
    assert only.shape == (2, 336, 24, 24)
    torch.testing.assert_close(only, full, rtol=0, atol=0)


def test_encoder_stage_shapes(encoder):
    with torch.inference_mode():
        stages = encoder(torch.randn(1, 3, 256, 256))
    assert [tuple(s.shape) for s in stages] == [
        (1, 256, 64, 64), (1, 512, 32, 32), (1, 1024, 16, 16), (1, 2048, 8, 8),
    ]


def test_encoder_matches_torchvision_bottlenecks(encoder, state_dicts):
    sd = state_dicts[0]
    layers = nn.ModuleDict()
    inplanes = 128
    for name, planes, blocks, stride in (
        ("layer1", 64, 3, 1), ("layer2", 128, 4, 2), ("layer3", 256, 6, 2), ("layer4", 512, 3, 2)
    ):
        shortcut = nn.Sequential(
            nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4)
        )
        stage = [TorchvisionBottleneck(inplanes, planes, stride, shortcut)]
        stage += [TorchvisionBottleneck(planes * 4, planes) for _ in range(blocks - 1)]
        layers[name] = nn.Sequential(*stage)
        inplanes = planes * 4
    layers.load_state_dict({k: v for k, v in sd.items() if k.startswith("layer")}, strict=True)
    layers.eval()

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 50
    with torch.inference_mode():
        got = encoder(x)
        y = F.relu(_bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=1), sd, "bn1"))
        y = F.relu(_bn(F.conv2d(y, sd["conv2.weight"], padding=1), sd, "bn2"))
        y = F.relu(_bn(F.conv2d(y, sd["conv3.weight"], padding=1), sd, "bn3"))
        y = F.max_pool2d(y, 3, stride=2, padding=1)
        want = []
        for name in ("layer1", "layer2", "layer3", "layer4"):
            y = layers[name](y)
            want.append(y)
    for g, w in zip(got, want):
        _close(g, w)


# ------------------------------------------------------------------------------ checkpoint loading


def test_official_files_load_strictly(weights_folder, state_dicts):
    raw = read_state_dict(weights_folder / ENCODER_FILE, "encoder")
    assert any(k.endswith("._tmp_running_mean") for k in raw)
    assert any(k.endswith("._running_iter") for k in raw)
    with pytest.raises(RuntimeError):  # the SyncBN buffers are why a plain strict load fails
        ResNet50DeepStem().load_state_dict(raw, strict=True)
    encoder = ResNet50DeepStem()
    load_state_dict_checked(encoder, raw, "encoder")
    for key, value in state_dicts[0].items():
        assert torch.equal(encoder.state_dict()[key], value), key
    decoder = UPerNetDecoder()
    load_state_dict_checked(decoder, read_state_dict(weights_folder / DECODER_FILE, "decoder"), "decoder")
    assert torch.equal(decoder.object_head[1].weight, state_dicts[1]["object_head.1.weight"])


def test_loads_without_num_batches_tracked_and_from_zip_format(tmp_path, state_dicts):
    path = tmp_path / ENCODER_FILE
    torch.save(official_layout(state_dicts[0], syncbn_buffers=True, num_batches_tracked=False), path)
    raw = read_state_dict(path, "encoder")
    assert not any(k.endswith("num_batches_tracked") for k in raw)
    encoder = ResNet50DeepStem()
    load_state_dict_checked(encoder, raw, "encoder")
    assert encoder.bn1.num_batches_tracked.item() == 0
    torch.testing.assert_close(encoder.layer3[2].bn2.running_var, state_dicts[0]["layer3.2.bn2.running_var"])


def test_in_memory_official_layout_without_syncbn(state_dicts):
    decoder = UPerNetDecoder()
    layout = official_layout(state_dicts[1], syncbn_buffers=False, num_batches_tracked=True)
    load_state_dict_checked(decoder, layout, "decoder")
    assert torch.equal(decoder.conv_fusion[0].weight, state_dicts[1]["conv_fusion.0.weight"])


def _expect_rejected(module: nn.Module, state_dict: dict, pattern: str) -> None:
    before = module.conv1.weight.clone() if hasattr(module, "conv1") else None
    with pytest.raises(WeightsError, match=pattern) as info:
        load_state_dict_checked(module, state_dict, "some/file.pth")
    assert "some/file.pth" in str(info.value)
    if before is not None:  # nothing was loaded: verification runs before load_state_dict
        assert torch.equal(module.conv1.weight, before)


def test_wrong_shape_names_the_key(state_dicts):
    bad = official_layout(state_dicts[0], syncbn_buffers=True, num_batches_tracked=True)
    bad["layer2.1.conv2.weight"] = torch.zeros(128, 128, 1, 1)
    pattern = r"'layer2\.1\.conv2\.weight' has shape \(128, 128, 1, 1\), expected \(128, 128, 3, 3\)"
    _expect_rejected(ResNet50DeepStem(), bad, pattern)


def test_missing_key_names_the_key(state_dicts):
    bad = dict(state_dicts[0])
    del bad["layer4.1.bn2.running_mean"]
    _expect_rejected(ResNet50DeepStem(), bad, r"'layer4\.1\.bn2\.running_mean' .* is missing")


def test_unexpected_key_names_the_key(state_dicts):
    bad = dict(state_dicts[0])
    bad["fc.weight"] = torch.zeros(1000, 2048)
    _expect_rejected(ResNet50DeepStem(), bad, r"unexpected key 'fc\.weight'")


def test_first_bad_key_is_named(state_dicts):
    bad = dict(state_dicts[0])
    del bad["conv1.weight"]
    bad["layer4.2.conv3.weight"] = torch.zeros(1)
    _expect_rejected(ResNet50DeepStem(), bad, r"'conv1\.weight'")


def test_decoder_head_size_mismatch_and_non_tensor(state_dicts):
    small = UPerNetDecoder(HeadSizes(object=150))
    with pytest.raises(WeightsError, match=r"'object_head\.1\.weight' has shape \(336, 512, 1, 1\)"):
        load_state_dict_checked(small, state_dicts[1], "decoder")
    bad = dict(state_dicts[1])
    bad["conv_fusion.0.weight"] = [1.0, 2.0]
    with pytest.raises(WeightsError, match=r"'conv_fusion\.0\.weight' is a list"):
        check_structure(bad, decoder_shapes(), "decoder")


def test_truncated_file_is_a_clear_error(weights_folder, tmp_path):
    damaged = tmp_path / ENCODER_FILE
    data = (weights_folder / ENCODER_FILE).read_bytes()
    damaged.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="cannot read checkpoint") as info:
        read_state_dict(damaged, "encoder")
    assert str(damaged) in str(info.value) and "download it again" in str(info.value)


def test_not_a_state_dict_or_missing_file(tmp_path):
    odd = tmp_path / "odd.pth"
    torch.save([torch.zeros(1)], odd)
    with pytest.raises(WeightsError, match="holds a list, not a state dict"):
        read_state_dict(odd, "encoder")
    with pytest.raises(WeightsError, match="does not exist"):
        read_state_dict(tmp_path / "absent.pth", "encoder")
    text = tmp_path / "page.pth"
    text.write_text("<html>404 Not Found</html>")
    with pytest.raises(WeightsError, match=str(text).replace("\\", "\\\\")):
        read_state_dict(text, "encoder")


def test_check_structure_of_official_files(weights_folder):
    check_structure(read_state_dict(weights_folder / DECODER_FILE, "decoder"), decoder_shapes(), "decoder")
    swapped = read_state_dict(weights_folder / ENCODER_FILE, "encoder_epoch_40.pth")
    with pytest.raises(WeightsError, match=r"encoder_epoch_40\.pth: key 'ppm_conv\.0\.0\.weight' .* is missing"):
        check_structure(swapped, decoder_shapes(), "encoder_epoch_40.pth")

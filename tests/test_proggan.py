"""Progressive GAN architecture, checkpoint loading (both layouts), seeded latents, declared models."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fsd.invert
import fsd.invert.weights as weights_module
from fsd.errors import InputError, WeightsError
from fsd.hub import Artifact, RemoteFile
from fsd.invert.proggan import (
    ProGAN,
    load_proggan,
    normalize_state_dict,
    seeded_latents,
    standard_channels,
)
from fsd.invert.weights import PROGGAN_ARTIFACTS, _verify_proggan, proggan_artifact

CHANNELS = [16, 16, 12, 12, 8, 8, 6, 6]  # 32 px, non-standard widths so inference is exercised
Z_DIM = 10


def tiny_generator(seed: int = 0, channels: list[int] = CHANNELS, z_dim: int = Z_DIM) -> ProGAN:
    torch.manual_seed(seed)
    generator = ProGAN(channels, z_dim=z_dim)
    with torch.no_grad():
        for name, parameter in generator.named_parameters():
            if name.endswith("wscale.b"):
                parameter.normal_(0, 0.1)  # nonzero biases, so a misplaced bias shows
    return generator.eval()


def reference_forward(state: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """The spec's generator written with functional ops, from the checkpoint tensors alone."""
    count = sum(1 for key in state if key.endswith(".conv.weight") and key.startswith("layer"))
    x = z.view(z.shape[0], -1, 1, 1)

    def pixel_norm(t: torch.Tensor) -> torch.Tensor:
        return t / torch.sqrt(t.pow(2).mean(dim=1, keepdim=True) + 1e-8)

    for index in range(1, count + 1):
        weight, bias = state[f"layer{index}.conv.weight"], state[f"layer{index}.wscale.b"]
        x = pixel_norm(x)
        if index >= 3 and index % 2 == 1:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        cin, k = weight.shape[1], weight.shape[2]
        x = F.conv2d(x, weight, padding=3 if index == 1 else 1) * math.sqrt(2 / (cin * k * k))
        x = F.leaky_relu(x + bias.view(1, -1, 1, 1), 0.2)
    resolution = 4 * 2 ** (count // 2 - 1)
    weight = state[f"output_{resolution}x{resolution}.conv.weight"]
    bias = state[f"output_{resolution}x{resolution}.wscale.b"]
    x = F.conv2d(pixel_norm(x), weight) / math.sqrt(weight.shape[1]) + bias.view(1, -1, 1, 1)
    return x.clamp(-1, 1)


# ---------------------------------------------------------------- architecture


def test_module_names_and_output_shape():
    generator = tiny_generator()
    names = [name for name, _ in generator.named_children()]
    assert names == [f"layer{i}" for i in range(1, 9)] + ["output_32x32"]
    assert generator.resolution == 32 and generator.z_dim == Z_DIM
    z = torch.randn(3, Z_DIM)
    out = generator(z)
    assert out.shape == (3, 3, 32, 32)
    assert torch.equal(out, generator(z.view(3, Z_DIM, 1, 1)))
    assert set(generator.state_dict()) == {
        *(f"layer{i}.{p}" for i in range(1, 9) for p in ("conv.weight", "wscale.b")),
        "output_32x32.conv.weight",
        "output_32x32.wscale.b",
    }


def test_forward_matches_the_spec_written_functionally():
    generator = tiny_generator().double()
    z = torch.randn(4, Z_DIM, dtype=torch.float64)
    expected = reference_forward(generator.state_dict(), z)
    torch.testing.assert_close(generator(z), expected, rtol=1e-12, atol=1e-12)
    assert float(expected.abs().max()) > 0.1  # not a degenerate all-zero image


def test_output_is_hard_clamped_not_tanh():
    generator = tiny_generator()
    with torch.no_grad():
        generator.output_32x32.wscale.b.copy_(torch.tensor([50.0, -50.0, 0.0]))
    out = generator(torch.randn(2, Z_DIM))
    assert torch.all(out[:, 0] == 1.0) and torch.all(out[:, 1] == -1.0)


def test_standard_architecture_matches_the_published_shapes():
    assert standard_channels(256) == [512] * 6 + [256, 256, 128, 128, 64, 64, 32, 32]
    assert len(standard_channels(1024)) == 18
    with torch.device("meta"):
        generator = ProGAN.standard(256)
        r = generator[:4](torch.empty(1, 512, 1, 1))
    state = generator.state_dict()
    assert [n for n, _ in generator.named_children()][-1] == "output_256x256"
    assert state["layer1.conv.weight"].shape == (512, 512, 4, 4)
    assert state["layer2.conv.weight"].shape == (512, 512, 3, 3)
    assert state["layer14.conv.weight"].shape == (32, 32, 3, 3)
    assert state["output_256x256.conv.weight"].shape == (3, 32, 1, 1)
    assert r.shape == (1, 512, 8, 8)  # the representation at the paper's split
    with pytest.raises(InputError, match="power of two"):
        ProGAN.standard(200)


def test_wrong_latent_shape_is_an_input_error():
    with pytest.raises(InputError, match=f"\\(N, {Z_DIM}\\)"):
        tiny_generator()(torch.randn(2, Z_DIM + 1))


# ---------------------------------------------------------------- checkpoints


def _old_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    old = {}
    for key, value in state.items():
        if key.startswith("layer"):
            layer, rest = key.split(".", 1)
            old[f"features.{int(layer[5:]) - 1}.{rest}"] = value
        else:
            old["output." + key.split(".", 1)[1]] = value
    return old


@pytest.mark.parametrize("layout", ["new", "wrapped", "old", "old-wrapped"])
def test_checkpoint_layouts_load_to_the_same_generator(tmp_path, layout):
    source = tiny_generator(seed=3)
    state = source.state_dict()
    if layout.startswith("old"):
        state = _old_layout(state)
        assert "features.0.conv.weight" in state and "output.wscale.b" in state
    if layout.endswith("wrapped"):
        state = {"state_dict": state}
    path = tmp_path / "g.pth"
    torch.save(state, path)

    loaded = load_proggan(path)
    assert loaded.channels == tuple(CHANNELS) and loaded.z_dim == Z_DIM
    assert [n for n, _ in loaded.named_children()] == [n for n, _ in source.named_children()]
    z = torch.randn(3, Z_DIM)
    assert torch.equal(loaded.eval()(z), source(z))


def test_wrong_shape_checkpoint_names_the_key_and_shapes():
    state = tiny_generator().state_dict()
    state["layer3.conv.weight"] = torch.zeros(12, 7, 3, 3)  # in-channels should be 16
    with pytest.raises(WeightsError) as error:
        ProGAN.from_state_dict(state, source="bad.pth")
    message = str(error.value)
    assert "bad.pth" in message and "layer3.conv.weight" in message
    assert "(12, 7, 3, 3)" in message and "(12, 16, 3, 3)" in message


def test_missing_and_unexpected_keys_are_named():
    state = tiny_generator().state_dict()
    del state["layer5.wscale.b"]
    with pytest.raises(WeightsError, match="missing keys: layer5.wscale.b"):
        ProGAN.from_state_dict(state)
    state = tiny_generator().state_dict()
    state["layer2.extra"] = torch.zeros(1)
    with pytest.raises(WeightsError, match="unexpected keys: layer2.extra"):
        ProGAN.from_state_dict(state)
    state = tiny_generator().state_dict()
    state["discriminator.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match="discriminator.weight"):
        ProGAN.from_state_dict(state)


def test_inconsistent_checkpoints_are_rejected():
    state = tiny_generator().state_dict()
    renamed = {k.replace("output_32x32", "output_64x64"): v for k, v in state.items()}
    with pytest.raises(WeightsError, match="64"):
        normalize_state_dict(renamed)
    odd = {k: v for k, v in state.items() if not k.startswith(("layer8.", "layer7."))}
    odd = {k: v for k, v in odd.items() if not k.startswith("layer6.")}
    with pytest.raises(WeightsError, match="even number"):
        ProGAN.from_state_dict(odd)
    mixed = dict(state, **{"features.0.conv.weight": state["layer1.conv.weight"]})
    with pytest.raises(WeightsError, match="twice"):
        normalize_state_dict(mixed)
    with pytest.raises(WeightsError, match="not a tensor"):
        normalize_state_dict({"layer1.conv.weight": [1, 2]})


def test_unreadable_or_missing_files_are_weights_errors(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load_proggan(tmp_path / "absent.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"<html>not found</html>")
    with pytest.raises(WeightsError, match="garbage.pth"):
        load_proggan(garbage)


# ---------------------------------------------------------------- latents


def test_seeded_latents_follow_the_numpy_rule_and_rows_do_not_depend_on_n():
    five = seeded_latents(5, seed=7, z_dim=Z_DIM)
    two = seeded_latents(2, seed=7, z_dim=Z_DIM)
    assert five.shape == (5, Z_DIM) and five.dtype == torch.float32
    assert torch.equal(five[:2], two)
    rule = np.random.RandomState(7).standard_normal(5 * Z_DIM).reshape(5, Z_DIM)
    assert torch.equal(five, torch.from_numpy(rule).float())
    assert not torch.equal(five, seeded_latents(5, seed=8, z_dim=Z_DIM))
    assert seeded_latents(3, seed=1).shape == (3, 512)
    with pytest.raises(InputError):
        seeded_latents(-1, seed=1)


# ---------------------------------------------------------------- declared published models


def test_published_models_are_declared_with_their_file_name_hashes():
    assert set(PROGGAN_ARTIFACTS) == {
        "bedroom", "church", "conferenceroom", "diningroom", "kitchen", "livingroom",
        "restaurant", "celebhq",
    }
    church = proggan_artifact("church")
    (remote,) = church.files
    assert remote.name == "proggan_churchoutdoor-7e701dd5.pth"
    assert remote.sha256_prefix == "7e701dd5"
    assert church.urls(remote.name) == (
        "http://gandissect.csail.mit.edu/models/proggan_churchoutdoor-7e701dd5.pth",
    )
    assert PROGGAN_ARTIFACTS["celebhq"].meta["resolution"] == 1024
    for name, artifact in PROGGAN_ARTIFACTS.items():
        (remote,) = artifact.files
        assert remote.name.split("-")[1].startswith(remote.sha256_prefix)
        assert artifact.verify is not None and artifact.meta["resolution"] in (256, 1024)
    with pytest.raises(InputError, match="bedroom"):
        proggan_artifact("cats")


def test_structural_check_rejects_a_generator_of_the_wrong_resolution(tmp_path):
    path = tmp_path / "g.pth"
    torch.save(tiny_generator().state_dict(), path)
    remote = RemoteFile("g.pth")
    _verify_proggan(32, path, remote)
    with pytest.raises(WeightsError, match="32 px generator, expected 256 px"):
        _verify_proggan(256, path, remote)


def test_proggan_loader_returns_a_frozen_eval_model(tmp_path, monkeypatch):
    source = tiny_generator(seed=5)
    (tmp_path / "proggan-tiny").mkdir()
    torch.save({"state_dict": source.state_dict()}, tmp_path / "proggan-tiny" / "tiny.pth")
    artifact = Artifact(
        "proggan-tiny",
        (RemoteFile("tiny.pth", min_bytes=1000),),
        ("https://example.invalid/models",),
        verify=partial(_verify_proggan, 32),
    )
    monkeypatch.setattr(weights_module, "proggan_artifact", lambda name: artifact)
    generator = fsd.invert.proggan("tiny", weights_dir=tmp_path, progress=False)
    assert isinstance(generator, ProGAN) and not generator.training
    assert not any(p.requires_grad for p in generator.parameters())
    z = torch.randn(2, Z_DIM)
    assert torch.equal(generator(z), source(z))


def test_proggan_loader_reports_a_hash_mismatch(tmp_path):
    folder = tmp_path / "proggan-bedroom"
    folder.mkdir()
    torch.save(tiny_generator().state_dict(), folder / "proggan_bedroom-d8a89ff1.pth")
    with pytest.raises(WeightsError, match="d8a89ff1"):
        fsd.invert.proggan("bedroom", weights_dir=tmp_path, progress=False)


# -- which way the imports run ----------------------------------------------------------------------

PACKAGE = Path(fsd.invert.__file__).resolve().parents[1]


def module_imports(module: str) -> set[str]:
    """The fsd modules ``module`` imports anywhere in its file: top level, functions, TYPE_CHECKING."""
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    if not path.is_file():
        path = path.with_suffix("") / "__init__.py"
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            # ``from fsd.invert import pictures`` imports the submodule fsd.invert.pictures.
            found.update(f"{base}.{alias.name}" for alias in node.names
                         if _is_module(f"{base}.{alias.name}"))
    return {name for name in found if name == "fsd" or name.startswith("fsd.")}


def _is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def fsd_modules(under: str = "") -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return [name for name in names if name == under or name.startswith(under + ".")] if under else names


def import_cycle(modules: list[str]) -> list[str] | None:
    """One import cycle among ``modules`` (each listed with its imports), or None."""
    edges = {m: sorted(i for i in module_imports(m) if i in modules and i != m) for m in modules}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in edges[m]:
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in modules:
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_the_core_package_never_imports_fsd_invert():
    """fsd.invert builds on fsd.generators (latents, uint8 conversion); never the other way round.
    Published generators are reached by name (``proggan:NAME``), as MODULE:NAME specs are."""
    for module in fsd_modules():
        if module == "fsd.invert" or module.startswith("fsd.invert."):
            continue
        assert not [m for m in module_imports(module) if m.startswith("fsd.invert")], module
    assert "fsd.generators" in module_imports("fsd.invert.proggan")


def test_fsd_invert_modules_import_in_one_direction():
    assert import_cycle(fsd_modules("fsd.invert")) is None


@pytest.mark.parametrize("module", ["fsd.generators", "fsd.invert.proggan", "fsd.invert.weights"])
def test_each_module_imports_first_in_a_fresh_interpreter(module):
    code = (f"import {module}\n"
            "import fsd.generators as g\n"
            "for family, loader in g.PUBLISHED_GENERATORS.items():\n"
            "    assert callable(g._import_attribute(loader)), family\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr

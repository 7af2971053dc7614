"""Generators as sources: equality with their saved PNG folder, seeded latents, hooks, bad outputs."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

import fsd
import fsd.cli
from fsd.errors import InputError
from fsd.generators import GeneratorSource, load_generator, sample_file_name
from fsd.sources import FolderSource
from tests.conftest import ColorSegmenter


class ToyGenerator(torch.nn.Module):
    """z (N, z_dim) -> smooth images (N, 3, H, W): tanh of an upsampled random projection.

    ``out``: "-1,1" (default), "0,1" or "uint8" output convention.
    """

    def __init__(self, height: int = 40, width: int = 48, z_dim: int = 8, out: str = "-1,1", seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.z_dim = z_dim
        self.size = (height, width)
        self.out = out
        self.weight = torch.nn.Parameter(torch.randn(z_dim, 3 * 5 * 5, generator=gen) * 1.5, requires_grad=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = (z @ self.weight).view(-1, 3, 5, 5)
        x = torch.tanh(F.interpolate(x, size=self.size, mode="bilinear", align_corners=False))
        if self.out == "0,1":
            return (x + 1) / 2
        if self.out == "uint8":
            return ((x + 1) * 127.5).round().to(torch.uint8)
        return x


def make_toy_generator() -> ToyGenerator:
    """A no-argument factory, for the CLI's MODULE:NAME."""
    return ToyGenerator(36, 30)


RANGES = {"-1,1": (-1, 1), "0,1": (0, 1), "uint8": "uint8"}


def _run(**kwargs):
    return dict(segmenter=ColorSegmenter(32), progress=False, **kwargs)


def _assert_same_stats(a: fsd.Stats, b: fsd.Stats) -> None:
    assert a.n == b.n
    assert np.array_equal(a.count_sum, b.count_sum) and np.array_equal(a.count_outer_sum, b.count_outer_sum)
    assert np.array_equal(a.mu, b.mu) and np.array_equal(a.sigma, b.sigma)


@pytest.mark.parametrize("size", [(40, 48), (32, 32), (20, 70)])
@pytest.mark.parametrize("out", ["-1,1", "0,1", "uint8"])
def test_generator_equals_its_saved_png_folder(tmp_path, size, out):
    G = ToyGenerator(*size, out=out)
    direct = fsd.compute_stats(generator=G, value_range=RANGES[out], num_samples=23, seed=5, batch_size=6,
                               **_run())
    paths = fsd.save_samples(G, tmp_path / "samples", num_samples=23, seed=5, value_range=RANGES[out],
                             batch_size=4, progress=False)
    assert [p.name for p in paths] == [f"{k:06d}.png" for k in range(23)]
    from_folder = fsd.compute_stats(tmp_path / "samples", num_workers=0, **_run())
    _assert_same_stats(direct, from_folder)
    assert direct.observed_classes() >= 3  # the toy generator gives varied labels: the test has teeth

    # Stronger than equal statistics: the very pixels the segmenter sees are equal.
    seg = ColorSegmenter(32)
    source = GeneratorSource(G, value_range=RANGES[out])
    generated = torch.cat([b.images for b in source.batches(range(23), seg.preprocessing, batch_size=5, seed=5)])
    folder = FolderSource(tmp_path / "samples")
    read_back = torch.stack([torch.from_numpy(folder.read(k, seg.preprocessing)) for k in range(23)])
    assert torch.equal(generated, read_back)


def test_quantization_rule_and_png_values(tmp_path):
    G = ToyGenerator(12, 10)
    z = torch.from_numpy(np.random.RandomState(3).standard_normal(4 * 8).reshape(4, 8)).float()
    expected = ((G(z).double() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    source = GeneratorSource(G)
    assert torch.equal(source.images(range(4), seed=3), expected)
    fsd.save_samples(source, tmp_path / "s", num_samples=4, seed=3, progress=False)
    for k in range(4):
        png = np.asarray(Image.open(tmp_path / "s" / f"{k:06d}.png"))
        assert png.shape == (12, 10, 3) and np.array_equal(png, expected[k].permute(1, 2, 0).numpy())


def test_compute_with_generator_equals_compute_with_the_folder(tmp_path, image_folders):
    real, _ = image_folders
    G = ToyGenerator(40, 48)
    fsd.save_samples(G, tmp_path / "samples", num_samples=12, seed=2, progress=False)
    from_generator = fsd.compute(real, generator=G, num_samples=12, seed=2, num_workers=0, **_run())
    from_folder = fsd.compute(real, tmp_path / "samples", num_samples=12, seed=2, num_workers=0, **_run())
    assert from_generator.fsd == from_folder.fsd and from_generator.fake.n == 12
    assert "ToyGenerator" in from_generator.fake.meta.source and "seed 2" in from_generator.fake.meta.source
    # a GeneratorSource is a source like any other, on either side
    as_source = fsd.compute(GeneratorSource(G, num_samples=12, seed=2), real, num_workers=0, **_run())
    assert as_source.real.n == 12 and as_source.fsd == pytest.approx(from_folder.fsd, rel=1e-9)


def test_sampled_set_is_independent_of_batch_size_and_count():
    G = ToyGenerator(16, 16)
    source = GeneratorSource(G)
    reference = source.images(range(10), seed=4, batch_size=10)
    for batch_size in (1, 3, 7):
        assert torch.equal(source.images(range(10), seed=4, batch_size=batch_size), reference)
    assert torch.equal(source.images(range(6), seed=4), reference[:6])  # sample k does not depend on N
    assert torch.equal(source.images([2, 5, 9], seed=4), reference[[2, 5, 9]])  # nor on the other samples
    assert not torch.equal(source.images(range(10), seed=5), reference)
    # the paper's latent rule, shared with fsd.invert
    from fsd.invert import seeded_latents

    (_, z), = list(source.latent_batches(range(10), 4, batch_size=10))
    assert torch.equal(z, seeded_latents(10, seed=4, z_dim=8))
    stats = [fsd.compute_stats(generator=G, num_samples=10, seed=4, batch_size=b, **_run()) for b in (1, 4, 10)]
    for s in stats[1:]:
        _assert_same_stats(s, stats[0])


def test_custom_z_sampler_is_seeded_per_sample():
    calls = []

    def sampler(n: int, generator: torch.Generator) -> torch.Tensor:
        calls.append(n)
        return torch.rand(n, 8, generator=generator) * 4 - 2

    source = GeneratorSource(ToyGenerator(16, 16), z_sampler=sampler)
    full = source.images(range(9), seed=7, batch_size=4)
    assert torch.equal(source.images(range(3, 9), seed=7, batch_size=2), full[3:])
    assert set(calls) == {1}
    assert not torch.equal(source.images(range(9), seed=8), full)


class ConditionalGenerator(torch.nn.Module):
    """Needs labels: G(z, label) -> (images, extra), or G(z=..., label=...) -> {"image": ...}."""

    def __init__(self, as_dict: bool = False):
        super().__init__()
        self.base = ToyGenerator(16, 16)
        self.as_dict = as_dict

    def forward(self, z: torch.Tensor, label: torch.Tensor):
        images = self.base(z) * 0.5 + (label.view(-1, 1, 1, 1).float() - 1) * 0.4
        return {"image": images, "label": label} if self.as_dict else (images, label)


def _class_sampler(n: int, generator: torch.Generator):
    return torch.randn(n, 8, generator=generator), torch.randint(0, 3, (n,), generator=generator)


def _class_sampler_dict(n: int, generator: torch.Generator):
    z, label = _class_sampler(n, generator)
    return {"z": z, "label": label}


def test_hooks_for_labels_and_tuple_or_dict_outputs():
    positional = GeneratorSource(ConditionalGenerator(), z_sampler=_class_sampler, output_hook=lambda out: out[0])
    keyword = GeneratorSource(ConditionalGenerator(as_dict=True), z_sampler=_class_sampler_dict,
                              output_hook=lambda out: out["image"])
    a = positional.images(range(6), seed=1, batch_size=4)
    b = keyword.images(range(6), seed=1, batch_size=6)
    assert torch.equal(a, b)
    # the labels reach the generator: a sampler with another label changes the images
    other = GeneratorSource(ConditionalGenerator(), output_hook=lambda out: out[0],
                            z_sampler=lambda n, g: (_class_sampler(n, g)[0], torch.full((n,), 2)))
    assert not torch.equal(other.images(range(6), seed=1), a)
    with pytest.raises(InputError, match="output_hook"):
        GeneratorSource(ConditionalGenerator(), z_sampler=_class_sampler).images(range(2))


class Broken(torch.nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind, self.z_dim = kind, 4

    def forward(self, z):
        x = torch.tanh(z[:, :3, None, None].expand(-1, 3, 8, 8).clone())
        if self.kind == "nan":
            x[0, 0, 0, 0] = float("nan")
        elif self.kind == "range":
            x = (x + 1) * 127.5
        elif self.kind == "channels_last":
            x = x.permute(0, 2, 3, 1)
        elif self.kind == "count":
            x = x[:-1]
        elif self.kind == "gray":
            x = x[:, :1]
        return x


@pytest.mark.parametrize("kind, value_range, message", [
    ("nan", (-1, 1), "NaN"),
    ("range", (-1, 1), r"value_range=\(-1, 1\)"),
    ("channels_last", (-1, 1), "channels-last"),
    ("count", (-1, 1), "one per latent"),
    ("gray", (-1, 1), r"\(N, 3, H, W\)"),
    ("fine", "uint8", "uint8"),
])
def test_bad_generator_output_is_a_clear_error(kind, value_range, message):
    with pytest.raises(InputError, match=message) as info:
        fsd.compute_stats(generator=Broken(kind), value_range=value_range, num_samples=4, **_run())
    assert "Broken" in str(info.value)


@pytest.mark.parametrize("call, message", [
    (lambda: fsd.compute_stats(generator=ToyGenerator(), **_run()), "num_samples"),
    (lambda: fsd.compute("a", "b", generator=ToyGenerator(), num_samples=3, **_run()), "not both"),
    (lambda: fsd.compute_stats("a", z_dim=3, **_run()), "apply to generator"),
    (lambda: fsd.compute_stats(**_run()), "no source"),
    (lambda: GeneratorSource(lambda z: z), "z_dim"),
    (lambda: GeneratorSource(ToyGenerator(), z_dim=8, z_sampler=_class_sampler), "not both"),
    (lambda: GeneratorSource(ToyGenerator(), value_range=(1, -1)), "low < high"),
    (lambda: GeneratorSource(ToyGenerator(), seed=-1), "seed"),
    (lambda: GeneratorSource(ToyGenerator(), num_samples=4).sample_count(5), "num_samples=4"),
    (lambda: GeneratorSource(ToyGenerator(), z_sampler=lambda n, g: torch.zeros(2, 8)).images(range(2)),
     "first dimension"),
    (lambda: fsd.compute_stats(ToyGenerator(), **_run()), "generator=G"),
    (lambda: fsd.compute_stats(GeneratorSource(ToyGenerator()), num_samples=2,
                               segmenter=fsd.LabelMapSegmenter(3), progress=False), "RGB"),
])
def test_misuse_is_a_clear_error(call, message):
    with pytest.raises(InputError, match=message):
        call()


def test_save_samples_refuses_a_folder_with_files_unless_overwrite(tmp_path):
    G = ToyGenerator(8, 8)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="already holds files"):
        fsd.save_samples(G, out, num_samples=3, progress=False)
    paths = fsd.save_samples(G, out, num_samples=3, progress=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "000002.png", "notes.txt"]
    assert all(p.is_file() for p in paths) and not list(out.glob(".*"))
    assert sample_file_name(7, 2_000_000) == "0000007.png"
    with pytest.raises(InputError, match="z_dim"):
        fsd.save_samples(GeneratorSource(G), tmp_path / "x", num_samples=2, z_dim=8)


def test_cli_sample_then_compute_from_the_folder_and_the_generator(tmp_path, monkeypatch, image_folders):
    real, _ = image_folders
    spec = "tests.test_generators:make_toy_generator"
    result = CliRunner().invoke(fsd.cli.cli, ["sample", spec, str(tmp_path / "s"), "-n", "5", "--seed", "3",
                                              "-q", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"folder": str(tmp_path / "s"), "n": 5, "seed": 3, "generator": spec}
    expected = GeneratorSource(make_toy_generator()).images(range(5), seed=3)
    for k in range(5):
        png = np.asarray(Image.open(tmp_path / "s" / f"{k:06d}.png"))
        assert np.array_equal(png, expected[k].permute(1, 2, 0).numpy())

    # fsd REAL --generator SPEC: the segmenter is swapped for the cheap one, the rest is the real path
    monkeypatch.setattr(fsd.cli, "_make_segmenter", lambda *args, **kwargs: ColorSegmenter(32))
    common = ["-n", "5", "--seed", "3", "-q", "--num-workers", "0", "--device", "cpu", "--json"]
    by_generator = CliRunner().invoke(fsd.cli.cli, [str(real), "--generator", spec, *common])
    by_folder = CliRunner().invoke(fsd.cli.cli, [str(real), str(tmp_path / "s"), *common[2:]])  # no -n: all 5
    assert by_generator.exit_code == 0, by_generator.output
    assert json.loads(by_generator.stdout)["fsd"] == json.loads(by_folder.stdout)["fsd"]


def test_load_generator_specs(tmp_path):
    script = tmp_path / "my_gen.py"
    script.write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    z_dim = 4\n"
        "    def forward(self, z):\n"
        "        return torch.tanh(z[:, :3, None, None].expand(-1, 3, 8, 8))\n"
        "def plain(z):\n"
        "    return torch.tanh(z[:, :3, None, None].expand(-1, 3, 8, 8))\n"
    )
    built = load_generator(f"{script}:Net")
    assert isinstance(built, torch.nn.Module) and not built.training
    assert load_generator(f"{script}:plain").__name__ == "plain"  # a function of the latents is the generator
    z = torch.randn(3, 4)
    exported = tmp_path / "g.pt2"
    example = torch.randn(2, 4)
    if hasattr(torch.export, "Dim"):
        program = torch.export.export(built, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    else:  # torch 2.1 says it with constraints
        program = torch.export.export(built, (example,), constraints=[torch.export.dynamic_dim(example, 0) >= 1])
    torch.export.save(program, exported)
    assert torch.equal(load_generator(str(exported))(z), built(z))
    scripted = tmp_path / "g.pt"
    with warnings.catch_warnings():  # TorchScript is deprecated in recent PyTorch, still widely used
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(built).save(str(scripted))
        assert torch.equal(load_generator(str(scripted))(z), built(z))
    for spec, message in ((f"{script}:missing", "no attribute"), ("no_such_module_xyz:G", "cannot import"),
                          ("justaname", "cannot tell")):
        with pytest.raises(InputError, match=message):
            load_generator(spec)


def test_num_samples_counts_generator_samples_and_leaves_the_real_side_whole(tmp_path, image_folders):
    """compute(real, generator=G, num_samples=N) == compute(real, folder of N samples of G)."""
    real, _ = image_folders
    G = ToyGenerator(40, 40)
    segmenter = ColorSegmenter()
    direct = fsd.compute(real, generator=G, z_dim=G.z_dim, num_samples=20, segmenter=segmenter,
                         num_workers=0, progress=False)
    fsd.save_samples(G, tmp_path / "samples", num_samples=20, z_dim=G.z_dim, progress=False)
    via_folder = fsd.compute(real, tmp_path / "samples", segmenter=segmenter, num_workers=0, progress=False)
    assert direct.real.n == 12 and direct.fake.n == 20  # more samples than real images is fine
    assert direct.fsd == via_folder.fsd

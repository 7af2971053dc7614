"""Rough edges a new user met (issue "Rough edges"): each test is the run that showed one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import fsd
from fsd.cli import cli
from fsd.errors import InputError
from tests.conftest import ColorSegmenter, write_label_folder


# -- devices that do not exist here ------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["cuda:99", "gpu", "tpu", "mps:7"])
def test_a_device_that_does_not_exist_is_an_input_error_naming_the_devices_here(image_folders, device):
    real, fake = image_folders
    with pytest.raises(InputError, match="devices here: cpu"):
        fsd.compute(real, fake, device=device, progress=False, num_workers=0)


@pytest.mark.parametrize("device", ["cuda:99", "gpu"])
def test_cli_device_errors_exit_2_with_one_line(image_folders, device):
    real, fake = image_folders
    result = CliRunner().invoke(cli, [str(real), str(fake), "--device", device, "-q"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "devices here: cpu" in lines[0]


def test_no_cuda_here_says_so():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")  # the check above (cuda:99) runs everywhere
    with pytest.raises(InputError, match="asks for CUDA, which this machine does not have"):
        fsd.load_segmenter("upp", device="cuda")


# -- generator calls explained -------------------------------------------------------------------------------
class SmallG(torch.nn.Module):
    z_dim = 16

    def __init__(self, inputs: int = 16):
        super().__init__()
        self.linear = torch.nn.Linear(inputs, 3 * 8 * 8)

    def forward(self, z):
        return torch.tanh(self.linear(z)).view(-1, 3, 8, 8)


class Conditional(SmallG):
    def forward(self, z, labels):
        return super().forward(z)


def test_a_z_dim_that_contradicts_the_generator_is_refused():
    with pytest.raises(InputError, match="z_dim=512 was given, but .* its z_dim is 16"):
        fsd.GeneratorSource(SmallG(), z_dim=512)
    assert fsd.GeneratorSource(SmallG(), z_dim=16).images([0]).shape == (1, 3, 8, 8)


def test_a_wrong_latent_size_and_a_conditional_generator_say_what_to_give():
    class NoAttribute(SmallG):
        z_dim = None

    with pytest.raises(InputError, match=r"latents of shape \(1, 512\).*z_dim="):
        fsd.GeneratorSource(NoAttribute(), z_dim=512).images([0])
    with pytest.raises(InputError, match="missing 1 required positional argument.*z_sampler="):
        fsd.GeneratorSource(Conditional()).images([0])
    labels = lambda n, rng: (torch.randn(n, 16, generator=rng), torch.zeros(n, dtype=torch.long))  # noqa: E731
    assert fsd.GeneratorSource(Conditional(), z_sampler=labels).images([0, 1]).shape == (2, 3, 8, 8)


# -- options that were silently ignored ------------------------------------------------------------------
LABELMAP = ["--segmenter", "labelmap", "--num-classes", "4", "--num-workers", "0", "-q"]


@pytest.fixture
def label_folder(tmp_path):
    return write_label_folder(tmp_path / "labels", 6, classes=4, seed=0)


def test_num_samples_with_saved_statistics_is_refused(label_folder, tmp_path):
    saved = tmp_path / "s.npz"
    assert CliRunner().invoke(cli, ["--save-stats", str(label_folder), str(saved), *LABELMAP]).exit_code == 0
    result = CliRunner().invoke(cli, [str(saved), str(label_folder), *LABELMAP, "-n", "2"])
    assert result.exit_code == 2 and "--num-samples chooses images" in result.stderr
    with pytest.raises(InputError, match="num_samples= chooses images"):
        fsd.compute(saved, label_folder, segmenter=fsd.LabelMapSegmenter(4), num_samples=2, num_workers=0,
                    progress=False)


def test_existing_outputs_are_replaced_only_with_overwrite(label_folder, tmp_path):
    saved = tmp_path / "s.npz"
    args = ["--save-stats", str(label_folder), str(saved), *LABELMAP]
    assert CliRunner().invoke(cli, args).exit_code == 0
    before = saved.read_bytes()
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2 and "exists; pass --overwrite" in again.stderr and saved.read_bytes() == before
    assert CliRunner().invoke(cli, [*args, "--overwrite"]).exit_code == 0
    csv = tmp_path / "classes.csv"
    csv.write_text("mine")
    result = CliRunner().invoke(cli, [str(saved), str(saved), *LABELMAP, "--report-csv", str(csv)])
    assert result.exit_code == 2 and "--report-csv" in result.stderr and csv.read_text() == "mine"


# -- help texts ---------------------------------------------------------------------------------------------
def test_top_level_help_shows_the_main_commands_options():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for option in ("--num-samples", "--device", "--bootstrap", "--save-stats", "--report"):
        assert option in result.output
    assert "CUDA, else MPS, else CPU" in result.output
    assert "compare" in result.output and "report" in result.output


def test_a_folder_named_like_a_command_does_not_hide_the_command(tmp_path, monkeypatch, label_folder):
    saved = tmp_path / "s.npz"
    assert CliRunner().invoke(cli, ["--save-stats", str(label_folder), str(saved), *LABELMAP]).exit_code == 0
    monkeypatch.chdir(tmp_path)
    (tmp_path / "report").mkdir()
    # Two saved files after it: only the report command takes that.
    result = CliRunner().invoke(cli, ["report", str(saved), str(saved), "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("FSD: 0.0000")


def test_a_set_against_itself_is_exactly_zero_and_warnings_name_the_callers_line(image_folders):
    real, _ = image_folders
    # 3 images, 4 classes: the small-sample warning fires, and must point here.
    stats = fsd.compute_stats(real, segmenter=ColorSegmenter(), num_samples=3, num_workers=0, progress=False)
    with pytest.warns(UserWarning) as caught:
        result = fsd.distance(stats, stats)
    assert (result.fsd, result.mean_term, result.covariance_term) == (0.0, 0.0, 0.0)
    assert caught[0].filename == __file__  # this line, not fsd's internals or sys:1


# -- class names: full names, never a colliding first word ---------------------------------------------------
def test_class_names_in_inversion_outputs_are_whole():
    from fsd.invert.omissions import ClassOmission, class_slug, find_class
    names = ["-", "coffee table", "coffee maker", "towel", "towel rack", "person, individual"]
    assert class_slug("coffee maker") == "coffee-maker" and class_slug("person, individual") == "person"
    assert find_class(names, "coffee maker") == 2 and find_class(names, "person") == 5
    with pytest.raises(InputError, match="ambiguous: coffee table; coffee maker"):
        find_class(names, "coffee")
    lost = ClassOmission(4, "towel rack", 2, 3, 1.0, 2.0, 0.5, 3.0, 2.5)
    assert lost.label == "towel rack" and "towel rack" in lost.to_record()["name"]


def test_axis_labels_are_unique_among_the_classes_shown():
    from fsd.report import axis_labels
    names = ["wall", "wall socket", "shower", "shower stall", "traffic light", "traffic cone", "car, auto"]
    labels = axis_labels(names)
    assert len(set(labels)) == len(labels) and labels[-1] == "car"


# -- names and types that surprise -------------------------------------------------------------------------
def test_frechet_distance_unpacks_and_per_image_is_an_array(image_folders):
    real, _ = image_folders
    per_image = fsd.class_percentages_of(real, segmenter=ColorSegmenter(), num_workers=0, progress=False)
    array = np.asarray(per_image)
    assert array.shape == (12, 4) and array.dtype == np.float64 and len(per_image) == 12
    assert np.asarray(per_image, dtype=np.float32).dtype == np.float32
    stats = fsd.compute_stats(real, segmenter=ColorSegmenter(), num_workers=0, progress=False)
    value, mean_term, covariance_term = fsd.frechet_distance(stats.mu, stats.sigma, stats.mu * 0.5, stats.sigma)
    assert value == pytest.approx(mean_term + covariance_term) and mean_term > 0
    assert fsd.frechet_distance(stats.mu, stats.sigma, stats.mu, stats.sigma).fsd == pytest.approx(0, abs=1e-9)


def test_metric_repr_says_what_it_holds(image_folders):
    real, _ = image_folders
    reference = fsd.compute_stats(real, segmenter=ColorSegmenter(), num_workers=0, progress=False)
    metric = fsd.FSDMetric(ColorSegmenter(), real=reference)
    metric.update(torch.zeros(1, 3, 16, 16), real=False)
    text = repr(metric)
    assert "real: 12 images (reference statistics given up front)" in text and "generated: 1 image" in text
    assert "real=0" not in text


# -- fsd.invert: a tiny generator, an untrained encoder, segmenter weights, two photos ------------------------
@pytest.fixture(scope="module")
def invert_workspace(tmp_path_factory):
    from fsd.invert.encoder import save_encoder
    from fsd.invert.proggan import ProGAN
    from fsd.invert.train import encoder_for
    from tests.conftest import write_folder
    from tests.synthetic import write_upp_weights

    root = tmp_path_factory.mktemp("rough-invert")
    write_upp_weights(root / "weights")
    write_folder(root / "photos", 2, seed=0)
    torch.manual_seed(0)
    generator = ProGAN([16, 16, 16, 16, 8, 8, 8, 8, 4, 4, 4, 4, 4, 4], z_dim=16)
    torch.save(generator.state_dict(), root / "generator.pth")
    save_encoder(encoder_for(generator, width=8, seed=0), root / "encoder.pth")
    return root


def invert(root, out, *args):
    from fsd.invert.cli import cli as invert_cli

    base = [root / "photos", "--generator", root / "generator.pth", "--encoder", root / "encoder.pth",
            "--out", out, "--weights-dir", root / "weights", "--device", "cpu", "-q"]
    return CliRunner().invoke(invert_cli, [str(a) for a in [*base, *args]])


def test_offline_vgg16_downloads_nothing_and_suggests_features_none(invert_workspace, tmp_path, monkeypatch):
    import torchvision

    from fsd.errors import WeightsError
    from fsd.invert.inversion import feature_network

    monkeypatch.setenv("FSD_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache: no VGG16 weights in it

    def no_download(**_):
        raise AssertionError("offline, yet torchvision was asked for VGG16")

    monkeypatch.setattr(torchvision.models, "vgg16", no_download)
    with pytest.raises(WeightsError, match="offline.*features='none'") as caught:
        feature_network("vgg16")
    assert "--features" not in str(caught.value)
    result = invert(invert_workspace, tmp_path / "out", "--steps", "1", "--features", "vgg16")
    assert result.exit_code == 1 and "pass --features none" in result.stderr and "features=" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_invert_prints_its_version():
    from fsd.invert.cli import cli as invert_cli

    result = CliRunner().invoke(invert_cli, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"python -m fsd.invert, version {fsd.__version__}"


def test_invert_help_reads_right():
    from fsd.invert.cli import cli as invert_cli

    text = " ".join(CliRunner().invoke(invert_cli, ["--help"]).output.split())
    assert "a generator without a published one needs" not in text
    assert "trains an inversion encoder, for a generator that has no published one" in text
    assert "Options of python -m fsd.invert PHOTOS (the default command)" in text and "fsd REAL FAKE" not in text
    assert "Default: CUDA, else MPS, else CPU" in text and "cuda if available" not in text


def test_counts_of_one_are_singular_in_the_inversion_outputs():
    from fsd.invert.omissions import OmissionReport, html_page

    names = ["-", "sky", "person"]
    lost = OmissionReport(["a.png"], names, [[0, 50, 50]], [[0, 90, 10]], min_loss=1.0)
    kept = OmissionReport(["a.png"], names, [[0, 50, 50]], [[0, 50, 50]], min_loss=1)
    texts = [lost.format_table(), kept.format_table(), html_page(lost, ["a"]), html_page(kept, ["a"])]
    assert "(1 photo; lost: at least 1 percentage point less" in texts[0]
    assert texts[1] == "no class lost 1 percentage point or more in the photo"
    assert "<p>1 photo. " in texts[2] and "at least 1 percentage point less of it" in texts[2]
    assert "No class was lost by 1 percentage point or more." in texts[3]
    for text in texts:
        assert "1 photos" not in text and "1 percentage points" not in text
    assert "2.5 percentage points" in OmissionReport(["a", "b"], names, lost.real.repeat(2, 0),
                                                     lost.reconstruction.repeat(2, 0), min_loss=2.5).format_table()


def test_train_encoder_says_1_step(invert_workspace, tmp_path):
    from fsd.invert.cli import cli as invert_cli

    result = CliRunner().invoke(invert_cli, [
        "train-encoder", "--generator", str(invert_workspace / "generator.pth"), "--out", str(tmp_path / "e.pth"),
        "--width", "8", "--batch-size", "2", "--backbone-steps", "1", "--layer-steps", "0", "--joint-steps", "0",
        "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    assert "backbone: 1 step, loss" in result.stdout and "1 steps" not in result.stdout


def test_an_unknown_published_generator_is_named_as_such(tmp_path):
    from fsd.invert.cli import cli as invert_cli

    (tmp_path / "photos").mkdir()
    for extra in ([], ["--encoder", __file__]):
        result = CliRunner().invoke(invert_cli, [str(tmp_path / "photos"), "--generator", "proggan:nosuch",
                                                 "--out", str(tmp_path / "out"), "-q", *extra])
        assert result.exit_code == 2
        assert result.stderr.startswith("error: --generator proggan:nosuch: unknown Progressive GAN 'nosuch'; "
                                        "choose one of: bedroom, church,")
        assert "encoder" not in result.stderr and not (tmp_path / "out").exists()


def test_invert_device_errors_exit_2_with_one_line(tmp_path):
    import fsd.devices
    from fsd.invert.cli import cli as invert_cli

    (tmp_path / "photos").mkdir()
    device = ["--generator", "proggan:church", "--device", "gpu", "-q"]
    for args in ([str(tmp_path / "photos"), "--out", str(tmp_path / "out"), "--encoder", __file__, *device],
                 ["train-encoder", "--out", str(tmp_path / "e.pth"), *device]):
        result = CliRunner().invoke(invert_cli, args)
        assert result.exit_code == 2 and result.stderr.strip().splitlines() == [
            "error: unknown device 'gpu' (for an NVIDIA GPU say cuda or cuda:N); devices here: "
            + ", ".join(fsd.devices.available_devices())]


def test_the_ranking_page_never_shows_a_signed_zero():
    from fsd.invert.omissions import OmissionReport, html_page

    names = ["-", "sky", "person"]
    # a: loses person; b: gains a hair of it (-0.001); c: has none in either image
    real = [[0, 50, 50], [0, 80, 20], [0, 100, 0]]
    recon = [[0, 90, 10], [0, 79.999, 20.001], [0, 100, 0]]
    page = html_page(OmissionReport(["a", "b", "c"], names, real, recon), ["a", "b", "c"],
                     rankings={2: "ranked_by_person.csv"})
    ranking = page[page.index('id="ranking-2"'):page.index("<h2>Photos</h2>")]
    assert "(+40.00)" in ranking and ranking.count("(0.00)") == 2
    assert "-0.00" not in ranking and "+0.00" not in ranking


def _documented_outputs(text: str) -> dict[str, str]:
    """``DIR/...`` paths in a document's tables -> a pattern of the file names they stand for."""
    import re

    found = {}
    for path in re.findall(r"`{1,2}DIR/([^`]+)`{1,2}", text):
        pattern = re.escape(path).replace(re.escape("<name>"), "[^/]+").replace(re.escape("<class>"), "[a-z0-9-]+")
        found[path] = pattern
    return found


def test_the_docs_list_every_file_the_inversion_writes(invert_workspace, tmp_path):
    import re
    from pathlib import Path

    import fsd.invert.omissions

    out = tmp_path / "out"
    result = invert(invert_workspace, out, "--steps", "1", "--features", "none", "--rank-by", "person", "--json")
    assert result.exit_code == 0, result.output
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert "ranked_by_lost_person.csv" in written  # named by what it holds, no class id
    docs = (Path(__file__).resolve().parents[1] / "docs" / "invert.md").read_text()
    section = docs[docs.index("## The output folder"):docs.index("## Encoders")]
    for text in (section, fsd.invert.omissions.__doc__):
        documented = _documented_outputs(text)
        assert len(documented) == 9
        for path in written:
            assert [d for d, p in documented.items() if re.fullmatch(p, path)], f"{path} is not documented"
        for doc, pattern in documented.items():
            assert any(re.fullmatch(pattern, path) for path in written), f"{doc} is documented but not written"


def test_train_encoder_progress_shows_the_loss_of_the_step_it_counts(monkeypatch):
    import fsd.invert.train as train
    from fsd.invert.proggan import ProGAN

    shown: dict[str, list[tuple[int, str]]] = {}

    class Bar:  # records what a redraw at each count would show
        def __init__(self, total, initial, desc, **_):
            self.n, self.postfix, self.drawn = initial, "", shown.setdefault(desc, [])

        def set_postfix(self, refresh=True, **values):
            self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())
            if refresh:
                self.drawn.append((self.n, self.postfix))

        def update(self, n=1):
            self.n += n
            self.drawn.append((self.n, self.postfix))

        def close(self):
            self.drawn.append((self.n, self.postfix))

    monkeypatch.setattr(train, "tqdm", Bar)
    torch.manual_seed(0)
    generator = ProGAN([16, 16, 16, 16, 8, 8, 8, 8, 4, 4, 4, 4, 4, 4], z_dim=16)
    config = train.EncoderTrainingConfig(batch_size=2, backbone=3, layers=0, joint=0)
    result = train.train_encoder(generator, encoder=train.encoder_for(generator, width=8, seed=0), config=config,
                                 device="cpu", progress=True)
    losses = result.history["backbone"]
    assert losses.size == 3
    assert shown["encoder backbone"] == [(n, f"loss={losses[n - 1]:.4f}") for n in (1, 2, 3, 3)]


def test_plot_omissions_takes_the_result_of_compute(image_folders):
    pytest.importorskip("matplotlib")
    real, fake = image_folders
    result = fsd.compute(real, fake, segmenter=ColorSegmenter(), num_workers=0, progress=False)
    figure = fsd.plot_omissions(result)
    assert figure.axes[0].get_title().startswith(f"FSD {result.fsd:.2f}")
    with pytest.raises(InputError, match="takes an FSDResult, or the real and the generated Stats"):
        fsd.plot_omissions(result.real)


def test_the_readmes_python_api_names_what_exists(image_folders):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    api = readme[readme.index("## Python API"):]
    api = api[:api.index("```\n", api.index("```python") + 1)]
    real, _ = image_folders
    stats = fsd.compute_stats(real, segmenter=ColorSegmenter(), num_workers=0, progress=False)
    attributes = re.search(r"# fsd\.Stats: (.*)", api).group(1)
    for attribute in re.findall(r"\.(\w+)", attributes):
        assert hasattr(stats, attribute), f"README: fsd.Stats has no .{attribute}"
    unpacked = re.search(r"^(.*) = fsd\.frechet_distance\((.*)\)", api, re.M)
    assert len(unpacked.group(1).split(",")) == len(fsd.FrechetDistance._fields)
    defined = set(re.findall(r"^(\w+(?:, \w+)*) =", api, re.M))
    defined = {name.strip() for group in defined for name in group.split(",")}
    for used in re.findall(r"\b(\w+)\.(?:mu|sigma)\b", unpacked.group(2)):
        assert used in defined, f"README: {used} is used before it is defined"
    assert "mu1" not in readme and "sigma1" not in readme


def test_docs_invert_shows_the_python_entry_points():
    from pathlib import Path

    import fsd.invert

    docs = (Path(__file__).resolve().parents[1] / "docs" / "invert.md").read_text()
    python = docs[docs.index("## Python"):docs.index("## Cost")]
    for name in ("invert_folder", "invert_photos", "omissions_from_labels", "train_encoder", "save_encoder",
                 "load_encoder", "EncoderTrainingConfig", "StageSchedule"):
        assert name in fsd.invert.__all__ and f"fsd.invert.{name}(" in python, name

"""Options for file inputs on the command line (--value-range, --layout, --key or FILE.npz:KEY,
--exif-transpose), and hints that name what exists where the user is: a command-line option in `fsd`,
a keyword in Python; `FSDMetric.update` hints never name the constructor's arguments as update's."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import fsd
from fsd.cli import cli
from fsd.errors import ImageReadError, InputError
from fsd.sources import FolderSource, open_source
from tests.conftest import ColorSegmenter, random_photo

N = 6


@pytest.fixture
def segmenter():
    return ColorSegmenter(size=32)


@pytest.fixture
def cli_segmenter(monkeypatch, segmenter):
    monkeypatch.setattr("fsd.cli._make_segmenter", lambda *args, **kwargs: segmenter)
    return segmenter


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(5)
    return np.stack([np.asarray(random_photo(rng, 48, 36)) for _ in range(N)])  # (N, H, W, 3) uint8


def save_stats(args, tmp_path, name="out.npz"):
    """Run ``fsd --save-stats``; (result, the number of images saved or None)."""
    out = tmp_path / name
    result = CliRunner().invoke(cli, ["--save-stats", *map(str, args[:1]), str(out), *map(str, args[1:]),
                                      "--num-workers", "0", "-q", "--json"])
    n = json.loads(result.stdout)["n"] if result.exit_code == 0 else None
    return result, n


def refused(result, *present, absent=()):
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith("error: ")
    for text in present:
        assert text in line, line
    for text in absent:
        assert text not in line, line
    return line


PYTHON_ONLY = ("ArraySource(", "ArrayFileSource(", "open_source(", "value_range=", "layout=", "key=")


def test_float_arrays_take_value_range_on_the_command_line(tmp_path, images, cli_segmenter):
    path = tmp_path / "float.npz"
    np.savez(path, images.astype(np.float32) / 127.5 - 1)
    result, _ = save_stats([path], tmp_path)
    refused(result, "holds float images", "--value-range -1,1 or --value-range 0,1", absent=PYTHON_ONLY)
    result, n = save_stats([path, "--value-range", "-1,1"], tmp_path)
    assert n == N
    wrong, _ = save_stats([path, "--value-range", "2,3"], tmp_path, "wrong.npz")
    refused(wrong, "--value-range 2,3 was declared", "--value-range 0,1 or -1,1", absent=PYTHON_ONLY)
    with pytest.raises(InputError) as info:
        fsd.compute_stats(path, segmenter=cli_segmenter, num_workers=0, progress=False)
    assert "fsd.sources.open_source(path, value_range=(-1, 1)) or value_range=(0, 1)" in str(info.value)
    assert "--" not in str(info.value)
    uint8 = tmp_path / "uint8.npz"
    np.savez(uint8, images)
    result, _ = save_stats([uint8, "--value-range", "0,1"], tmp_path, "u.npz")
    refused(result, "is uint8 (0..255); --value-range 0,1 does not apply, leave it out", absent=PYTHON_ONLY)


def test_ambiguous_layouts_take_layout_on_the_command_line(tmp_path, cli_segmenter):
    path = tmp_path / "ambiguous.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (4, 3, 40, 3), dtype=np.uint8))
    result, _ = save_stats([path], tmp_path)
    refused(result, "could be NHWC or NCHW", "--layout NHWC or --layout NCHW", absent=PYTHON_ONLY)
    assert save_stats([path, "--layout", "NHWC"], tmp_path, "a.npz")[1] == 4
    assert save_stats([path, "--layout", "NCHW"], tmp_path, "b.npz")[1] == 4
    with pytest.raises(InputError, match=r"open_source\(path, layout='NHWC'\) or layout='NCHW'"):
        open_source(path)


def test_the_array_of_an_npz_is_named_by_key_or_after_a_colon(tmp_path, images, segmenter, cli_segmenter):
    path = tmp_path / "two.npz"
    np.savez(path, labels=np.arange(N), images=images)
    result, _ = save_stats([path], tmp_path)
    refused(result, "none is arr_0", f"--key NAME, or {path}:NAME", absent=PYTHON_ONLY)
    with pytest.raises(InputError, match=r"open_source\(path, key='NAME'\)"):
        open_source(path)
    expected = fsd.compute_stats(images, segmenter=segmenter, num_workers=0, progress=False)
    for args in ([path, "--key", "images"], [f"{path}:images"]):
        result, n = save_stats(args, tmp_path, "k.npz")
        assert n == N, result.output
        saved = fsd.Stats.load(tmp_path / "k.npz")
        assert np.array_equal(saved.count_outer_sum, expected.count_outer_sum)
        (tmp_path / "k.npz").unlink()
    assert len(open_source(f"{path}:images")) == N
    refused(save_stats([f"{path}:nosuch"], tmp_path)[0], "has no array 'nosuch'")
    refused(save_stats([f"{path}:images", "--key", "labels"], tmp_path)[0], "give one")
    np.save(tmp_path / "plain.npy", images)
    refused(save_stats([tmp_path / "plain.npy", "--key", "x"], tmp_path)[0],
            "--key does not apply to the image array", absent=PYTHON_ONLY)


def test_exif_transpose_is_an_option_of_file_inputs(tmp_path, segmenter, cli_segmenter):
    folder = tmp_path / "exif"
    folder.mkdir()
    rng = np.random.default_rng(9)
    for k in range(3):
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees on display
        random_photo(rng, 80, 40).save(folder / f"{k}.jpg", exif=exif, quality=95)
    plain, n = save_stats([folder], tmp_path, "plain.npz")
    assert n == 3, plain.output
    turned, n = save_stats([folder, "--exif-transpose"], tmp_path, "turned.npz")
    assert n == 3, turned.output
    as_api = fsd.compute_stats(FolderSource(folder, exif_transpose=True), segmenter=segmenter, num_workers=0,
                               progress=False)
    assert np.array_equal(fsd.Stats.load(tmp_path / "turned.npz").count_outer_sum, as_api.count_outer_sum)
    assert not np.array_equal(fsd.Stats.load(tmp_path / "plain.npz").count_outer_sum, as_api.count_outer_sum)
    np.save(tmp_path / "a.npy", np.zeros((2, 8, 8, 3), np.uint8))
    refused(save_stats([tmp_path / "a.npy", "--exif-transpose"], tmp_path, "x.npz")[0],
            "--exif-transpose does not apply to the image array")


def test_an_option_that_fits_one_side_is_used_there(tmp_path, images, cli_segmenter):
    folder = tmp_path / "real"
    folder.mkdir()
    for k, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{k}.png")
    path = tmp_path / "fake.npz"
    np.savez(path, extra=np.arange(3), images=images)
    result = CliRunner().invoke(cli, [str(folder), str(path), "--key", "images", "--num-workers", "0", "-q",
                                      "--json", "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["fsd"] == pytest.approx(0.0, abs=1e-6)
    result = CliRunner().invoke(cli, [str(folder), str(folder), "--key", "images", "-q"])
    refused(result, "--key does not apply to the folder")


def test_a_bad_image_hint_names_the_option_or_the_keyword(tmp_path, segmenter, cli_segmenter):
    folder = tmp_path / "bad"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"not a png")
    result, _ = save_stats([folder], tmp_path)
    refused(result, "b.png", "pass --skip-bad-images to skip it", absent=("skip_bad_images",))
    with pytest.raises(ImageReadError) as info:
        fsd.compute_stats(folder, segmenter=segmenter, num_workers=0, progress=False)
    assert "pass skip_bad_images=True to skip it" in str(info.value) and "--" not in str(info.value)
    result, _ = save_stats([folder, "-n", "3"], tmp_path)
    refused(result, "lower --num-samples or add images")


def test_metric_update_hints_speak_of_the_images_not_of_constructor_arguments(segmenter):
    metric = fsd.FSDMetric(segmenter)
    checks = [
        (torch.rand(2, 3, 16, 16) * 255, "this metric was created for images in [-1, 1] (the range is a setting of "
                                         "FSDMetric(value_range=...), not of update)"),
        ([torch.zeros(3, 16, 16)], "not a tensor of images; pass a tensor (N, 3, H, W)"),
        (torch.zeros(2, 16, 16, 3), "images.permute(0, 3, 1, 2) fixes that"),
        (torch.zeros(2, 3, 16, 16, dtype=torch.int32), "must be uint8 or float"),
    ]
    for images, expected in checks:
        with pytest.raises(InputError) as info:
            metric.update(images, real=False)
        message = str(info.value)
        assert message.startswith("images given to FSDMetric.update(real=False)")
        assert expected in message, message
        assert "output_hook" not in message and "value_range=(" not in message and "--" not in message
    as_uint8 = fsd.FSDMetric(segmenter, value_range="uint8")
    with pytest.raises(InputError, match=r"expected uint8 images, got torch.float32; this metric was created for "
                                         r"uint8 images"):
        as_uint8.update(torch.zeros(2, 3, 16, 16), real=True)

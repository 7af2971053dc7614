"""``python -m fsd.invert`` end to end: a tiny 256 px generator, a synthetic segmenter, three photos."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from fsd.invert.cli import cli
from fsd.invert.encoder import HybridEncoder, load_encoder
from fsd.invert.proggan import ProGAN
from tests.conftest import write_folder
from tests.synthetic import write_upp_weights
from tests.test_omissions import assert_page_links_exist

NETS = '''
import torch
from torch import nn


def tiny_features():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU())


def wrong_latent_size():
    from fsd.invert.proggan import ProGAN

    torch.manual_seed(0)
    return ProGAN([16, 16, 16, 16, 8, 8, 8, 8, 4, 4, 4, 4, 4, 4], z_dim=8)  # the encoder gives 16
'''


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Segmenter weights, three photos, a tiny 256 px generator checkpoint and a trained encoder."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("invert-cli")
    write_upp_weights(root / "weights")
    write_folder(root / "photos", 3, seed=0)
    torch.manual_seed(0)
    torch.save(ProGAN([16, 16, 16, 16, 8, 8, 8, 8, 4, 4, 4, 4, 4, 4], z_dim=16).state_dict(),
               root / "generator.pth")
    (root / "nets.py").write_text(NETS)
    result = run([
        "train-encoder", "--generator", root / "generator.pth", "--out", root / "encoder.pth",
        "--width", "8", "--batch-size", "4", "--backbone-steps", "3", "--layer-steps", "3",
        "--joint-steps", "2", "--device", "cpu", "-q",
    ])
    yield root, result
    torch.set_num_threads(threads)


def run(args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_train_encoder_writes_a_loadable_encoder(workspace):
    root, result = workspace
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split(":")[0].strip() for line in lines] == ["backbone", "inv4", "inv3", "inv2", "inv1", "joint"]
    assert "joint: 2 steps, loss" in result.stdout
    assert "wrote the encoder" in result.stderr
    encoder = load_encoder(root / "encoder.pth")
    assert isinstance(encoder, HybridEncoder)
    assert encoder.architecture == {"kind": "hybrid", "z_dim": 16, "layer_channels": [16, 16, 16, 16], "width": 8}
    assert (root / "encoder.pth.training.pt").is_file()
    again = run(["train-encoder", "--generator", root / "generator.pth", "--out", root / "encoder.pth",
                 "--width", "8", "--batch-size", "4", "--backbone-steps", "3", "--layer-steps", "3",
                 "--joint-steps", "2", "--device", "cpu", "-q"])
    assert again.exit_code == 2 and "--resume" in again.stderr


def test_invert_writes_every_promised_file(workspace):
    root, _ = workspace
    out = root / "out"
    result = run([
        root / "photos", "--generator", root / "generator.pth", "--encoder", root / "encoder.pth",
        "--out", out, "--steps", "2", "--features", f"{root / 'nets.py'}:tiny_features",
        "--weights-dir", root / "weights", "--device", "cpu", "--rank-by", "person", "--json", "-q",
    ])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["n_photos"] == 3 and payload["skipped"] == []
    names = ["img_000", "img_001", "img_002"]
    for name in names:
        for folder in ("reconstructions", "encoder_only"):
            image = Image.open(out / folder / f"{name}.png")
            assert image.size == (256, 256) and image.mode == "RGB"
        panel = Image.open(out / "panels" / f"{name}.png")
        assert panel.width > 512 and panel.height > 512
    expected = {"omissions.csv", "omissions_by_photo.csv", "omissions.json", "index.html", "contact_sheet.png",
                "ranked_by_lost_person.csv"}
    assert expected <= {p.name for p in out.iterdir()}
    assert {Path(p).name for p in payload["files"].values()} == expected
    with open(out / "omissions_by_photo.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["name"] for row in rows} == set(names)
    for name in names:  # each photo's percentages (real, and reconstruction) sum to 100
        mine = [row for row in rows if row["name"] == name]
        assert sum(float(r["real"]) for r in mine) == pytest.approx(100.0)
        assert sum(float(r["reconstruction"]) for r in mine) == pytest.approx(100.0)
    report = json.loads((out / "omissions.json").read_text())
    settings = report["settings"]
    assert settings["segmenter"] == "upp-resnet50-upernet" and settings["steps"] == 2
    assert settings["features"]["given_as"] == f"{root / 'nets.py'}:tiny_features"
    assert settings["features"]["name"] == "module" and settings["generator"]["given_as"] == str(root / "generator.pth")
    assert settings["encoder"]["given_as"] == str(root / "encoder.pth") and settings["paper"] is False
    assert [p["files"]["panel"] for p in report["photos"]] == [f"panels/{n}.png" for n in names]
    links = assert_page_links_exist(out / "index.html")
    assert {f"panels/{n}.png" for n in names} <= set(links)

    again = run([root / "photos", "--generator", root / "generator.pth", "--encoder", root / "encoder.pth",
                 "--out", out, "--steps", "0", "--weights-dir", root / "weights"])
    assert again.exit_code == 2 and "--overwrite" in again.stderr


def test_bad_usage_exits_2_with_a_message(workspace):
    root, _ = workspace
    base = [root / "photos", "--out", root / "never", "--weights-dir", root / "weights", "--device", "cpu", "-q"]
    no_encoder = run([*base, "--generator", root / "generator.pth"])
    assert no_encoder.exit_code == 2 and "--encoder" in no_encoder.stderr and "train-encoder" in no_encoder.stderr
    garbage = root / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    bad_generator = run([*base, "--generator", garbage, "--encoder", root / "encoder.pth"])
    assert bad_generator.exit_code == 2 and "garbage.pth" in bad_generator.stderr
    bad_class = run([*base, "--generator", root / "generator.pth", "--encoder", root / "encoder.pth",
                     "--steps", "0", "--features", "none", "--rank-by", "unicorn"])
    assert bad_class.exit_code == 2 and "unicorn" in bad_class.stderr
    assert not (root / "never").exists()


def test_module_entry_point():
    done = subprocess.run([sys.executable, "-m", "fsd.invert", "--help"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert done.returncode == 0, done.stderr
    assert "train-encoder" in done.stdout and "PHOTOS" in done.stdout


def test_split_after_without_offset_layers_is_a_usage_error(workspace):
    root, _ = workspace
    result = run([root / "photos", "--generator", root / "generator.pth", "--encoder", root / "encoder.pth",
                  "--out", root / "never", "--split-after", "layer4", "-q"])
    assert result.exit_code == 2 and "--offset-layers" in result.output and not (root / "never").exists()


def test_a_bad_generator_leaves_nothing_behind_and_a_retry_works(workspace):
    root, _ = workspace
    out = root / "retry"
    base = [root / "photos", "--encoder", root / "encoder.pth", "--out", out, "--steps", "1", "--features", "none",
            "--weights-dir", root / "weights", "--device", "cpu", "-q"]
    bad = run([*base, "--generator", f"{root / 'nets.py'}:wrong_latent_size"])
    assert bad.exit_code == 2, bad.output
    assert "img_000" in bad.stderr and "the generator" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not out.exists()
    (out / "panels").mkdir(parents=True)  # an empty folder left by hand, or by an older version
    good = run([*base, "--generator", root / "generator.pth"])
    assert good.exit_code == 0, good.output
    assert sorted(p.name for p in (out / "panels").iterdir()) == ["img_000.png", "img_001.png", "img_002.png"]
    settings = json.loads((out / "omissions.json").read_text())["settings"]
    assert settings["features"] == {"given_as": "none", "name": "none",
                                    "network": "none: the loss is pixels and offsets only"}
    assert "features: none (the paper's: vgg16)" in settings["differs_from_paper"]
    both = run([*base, "--generator", root / "generator.pth", "--imagenet-normalization", "--overwrite"])
    assert both.exit_code == 2 and "--features none" in both.stderr


def test_a_bad_last_photo_fails_before_the_output_exists(workspace, tmp_path):
    root, _ = workspace
    photos = tmp_path / "photos"
    write_folder(photos, 2, seed=0)
    (photos / "zz_last.png").write_bytes(b"")
    out = tmp_path / "out"
    result = run([photos, "--generator", root / "generator.pth", "--encoder", root / "encoder.pth", "--out", out,
                  "--steps", "1", "--features", "none", "--weights-dir", root / "weights", "--device", "cpu", "-q"])
    assert result.exit_code == 2 and "zz_last.png" in result.stderr and "--skip-bad-images" in result.stderr
    assert not out.exists()

"""Omission tables on hand-made segmentations, and the per-photo pipeline with a cheap segmenter."""

from __future__ import annotations

import csv
import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fsd.errors import ImageReadError, InputError
from fsd.generators import prepare_images
import fsd.invert.omissions as omissions_module
from fsd.invert.inversion import InversionConfig
from fsd.invert.omissions import (
    OmissionReport,
    ReportOptions,
    describe_network,
    invert_folder,
    invert_photos,
    omissions_from_labels,
    output_names,
)
from fsd.invert.proggan import ProGAN
from fsd.invert.split import LayerSplit
from fsd.invert.train import encoder_for
from fsd.segmenters.base import PAPER_PREPROCESSING
from fsd.sources import FolderSource
from tests.conftest import ColorSegmenter, write_folder

CLASSES = ["-", "sky", "person", "car", "tree, arbor"]


pytestmark = pytest.mark.usefixtures("one_thread")


def label_map(counts: dict[int, int], side: int = 20) -> torch.Tensor:
    """A side x side map holding ``counts[c]`` pixels of class c (the rest class 0)."""
    flat = np.zeros(side * side, dtype=np.int64)
    position = 0
    for c, n in counts.items():
        flat[position:position + n] = c
        position += n
    return torch.from_numpy(flat.reshape(side, side))


def hand_made_report(min_loss: float = 1.0) -> OmissionReport:
    # 400 pixels per map: 4 pixels are 1 percent.
    real = torch.stack([
        label_map({1: 200, 2: 120, 3: 80}),          # A: sky 50, person 30, car 20
        label_map({1: 160, 2: 40, 4: 200}),          # B: sky 40, person 10, tree 50
        label_map({1: 240, 3: 156, 2: 4}),           # C: sky 60, car 39, person 1
    ])
    reconstruction = torch.stack([
        label_map({1: 280, 2: 20, 3: 80, 4: 20}),    # A: sky 70, person 5, car 20, tree 5
        label_map({1: 160, 4: 236, 0: 4}),           # B: sky 40, tree 59, nothing 1
        label_map({1: 240, 3: 160}),                 # C: sky 60, car 40
    ])
    return omissions_from_labels(real, reconstruction, CLASSES, ids=["a/A.jpg", "b/B.jpg", "c/C.jpg"],
                                 min_loss=min_loss)


def test_per_photo_lost_classes():
    report = hand_made_report()
    assert report.real.dtype == np.float64 and report.real.shape == (3, 5)
    np.testing.assert_allclose(report.real.sum(1), 100.0)
    assert [(c.name, c.real, c.reconstruction, c.difference) for c in report.lost_in("a/A.jpg")] == [
        ("person", 30.0, 5.0, 25.0)]
    assert [(c.name, c.difference) for c in report.lost_in(1)] == [("person", 10.0)]
    assert [(c.name, c.difference) for c in report.lost_in(2)] == [("person", 1.0)]  # the threshold counts
    assert hand_made_report(min_loss=2.0).lost_in(2) == ()
    present = report.present_in("b/B.jpg")
    assert [(c.name, c.difference) for c in present] == [
        ("person", 10.0), ("sky", 0.0), ("-", -1.0), ("tree, arbor", -9.0)]
    with pytest.raises(InputError, match="no photo"):
        report.lost_in("d/D.jpg")


def test_folder_table_counts_and_sizes_losses():
    rows = hand_made_report().classes()
    assert [r.name for r in rows] == ["person", "car", "tree, arbor", "sky"]
    person = rows[0]
    assert (person.photos_lost, person.photos_present) == (3, 3)
    assert person.mean_loss_when_lost == pytest.approx(12.0)
    assert person.max_loss == pytest.approx(25.0)
    assert person.mean_real == pytest.approx(41 / 3) and person.mean_reconstruction == pytest.approx(5 / 3)
    tree = rows[2]
    assert (tree.photos_lost, tree.photos_present, tree.label) == (0, 1, "tree, arbor")  # the full name, never a first word
    assert tree.mean_difference == pytest.approx(-14 / 3) and tree.max_loss == pytest.approx(0.0)


def test_photos_ranked_by_a_class():
    report = hand_made_report()
    ranking = report.photos_by_class("person")
    assert [(r.position, r.photo, r.difference) for r in ranking] == [
        (1, "a/A.jpg", 25.0), (2, "b/B.jpg", 10.0), (3, "c/C.jpg", 1.0)]
    assert [r.photo for r in report.photos_by_class("TREE")] == ["c/C.jpg", "a/A.jpg", "b/B.jpg"]
    assert report.class_index("tree, arbor") == report.class_index(4) == 4
    with pytest.raises(InputError, match="no class 'dog'"):
        report.photos_by_class("dog")
    ambiguous = OmissionReport(("x",), ("-", "car, auto", "car door"), np.zeros((1, 3)), np.zeros((1, 3)))
    with pytest.raises(InputError, match="ambiguous"):
        ambiguous.class_index("car")


def test_tables_written_as_csv_and_json(tmp_path):
    report = hand_made_report()
    report.write_class_csv(tmp_path / "classes.csv")
    with open(tmp_path / "classes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["name"] for r in rows] == ["person", "car", "tree, arbor", "sky"]
    assert rows[0]["photos_lost"] == "3" and float(rows[0]["mean_loss_when_lost"]) == 12.0
    report.write_photo_csv(tmp_path / "photos.csv", names=["A", "B", "C"])
    with open(tmp_path / "photos.csv", newline="") as handle:
        photo_rows = list(csv.DictReader(handle))
    lost = [(r["name"], r["class"]) for r in photo_rows if r["lost"] == "1"]
    assert lost == [("A", "person"), ("B", "person"), ("C", "person")]
    assert len(photo_rows) == 4 + 4 + 3  # classes present in either map, per photo
    report.write_ranking_csv(tmp_path / "ranked.csv", "person", names=["A", "B", "C"])
    with open(tmp_path / "ranked.csv", newline="") as handle:
        assert [r["name"] for r in csv.DictReader(handle)] == ["A", "B", "C"]
    payload = json.loads(json.dumps(report.to_dict(["A", "B", "C"])))
    assert payload["n_photos"] == 3 and payload["classes"][0]["name"] == "person"
    assert payload["photos"][0]["lost"] == [
        {"index": 2, "class": "person", "real": 30.0, "reconstruction": 5.0, "difference": 25.0}]
    table = report.format_table()
    assert "person" in table and "3/3" in table and "tree" not in table


def test_bad_inputs_are_input_errors():
    with pytest.raises(InputError, match="shape"):
        OmissionReport(("a",), CLASSES, np.zeros((1, 4)), np.zeros((1, 5)))
    with pytest.raises(InputError, match="unique"):
        OmissionReport(("a", "a"), CLASSES, np.zeros((2, 5)), np.zeros((2, 5)))
    with pytest.raises(InputError, match="min_loss"):
        hand_made_report(min_loss=0)
    with pytest.raises(InputError, match="classes"):
        omissions_from_labels(torch.full((1, 2, 2), 7), torch.zeros(1, 2, 2, dtype=torch.long), CLASSES)
    with pytest.raises(InputError, match="label maps"):
        omissions_from_labels(torch.zeros(2, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long), CLASSES)


def test_output_names_are_unique_and_safe():
    ids = ["a/x.jpg", "b/X.png", "c/we ird<name>.jpeg", "d/.hidden", "noext", "archive.zip!dir/y.jpg"]
    assert output_names(ids) == ["x", "X-2", "we_ird_name", "hidden", "noext", "y"]


# -- the pipeline, with a cheap segmenter ---------------------------------------------------------

def tiny_setup():
    torch.manual_seed(0)
    generator = ProGAN([8, 8, 8, 8, 4, 4, 4, 4], z_dim=16).eval()  # 32 px
    encoder = encoder_for(generator, width=4, seed=0).eval()
    torch.manual_seed(1)
    features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    return generator, encoder, features


def test_invert_photos_segments_each_photo_and_its_reconstruction(tmp_path):
    write_folder(tmp_path / "photos", 3, seed=0)
    generator, encoder, features = tiny_setup()
    segmenter = ColorSegmenter()
    results = list(invert_photos(tmp_path / "photos", generator, encoder, segmenter, features=features,
                                 config=InversionConfig(steps=2), batch_size=2, progress=False))
    # one check on the first photo, then two batches (2 + 1 photos), photo and reconstruction each
    assert segmenter.calls == 1 + 4
    source = FolderSource(tmp_path / "photos")
    assert [r.id for r in results] == source.paths
    for k, item in enumerate(results):
        expected_photo = source.read(k, PAPER_PREPROCESSING).transpose(1, 2, 0)
        assert np.array_equal(item.photo, expected_photo)
        assert item.generated.shape == (32, 32, 3) and item.encoder_only.shape == (32, 32, 3)
        resized = prepare_images(torch.from_numpy(item.generated).permute(2, 0, 1)[None], PAPER_PREPROCESSING)
        assert np.array_equal(item.reconstruction, resized[0].permute(1, 2, 0).numpy())
        for image, labels, percentages in ((item.photo, item.photo_labels, item.photo_percentages),
                                           (item.reconstruction, item.reconstruction_labels, item.reconstruction_percentages)):
            expected = segmenter.segment(torch.from_numpy(image).permute(2, 0, 1)[None])[0].numpy()
            assert np.array_equal(labels, expected)
            np.testing.assert_allclose(percentages, np.bincount(expected.ravel(), minlength=4) / 655.36)
        assert item.loss[1] <= item.loss[0]


def test_unreadable_photos_are_named_or_skipped(tmp_path):
    write_folder(tmp_path / "photos", 2, seed=0)
    (tmp_path / "photos" / "broken.png").write_bytes(b"")
    generator, encoder, features = tiny_setup()
    run = lambda **kw: list(invert_photos(tmp_path / "photos", generator, encoder, ColorSegmenter(),  # noqa: E731
                                          features=features, config=InversionConfig(steps=0),
                                          progress=False, **kw))
    with pytest.raises(ImageReadError, match="broken.png"):
        run()
    skipped: list = []
    assert len(run(skip_bad_images=True, skipped=skipped)) == 2
    assert skipped[0][0].endswith("broken.png") and "empty" in skipped[0][1]


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("href", "src") and value is not None:
                self.links.append(value)
            if name == "id":
                self.ids.add(value)


def assert_page_links_exist(page: Path) -> list[str]:
    """Every href/src of ``page`` is a relative path to an existing file, or an anchor on the page."""
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    for link in parser.links:
        parsed = urlparse(link)
        assert not parsed.scheme and not parsed.netloc, f"external link {link}"
        if link.startswith("#"):
            assert unquote(link[1:]) in parser.ids, f"no anchor {link}"
            continue
        target = page.parent / unquote(parsed.path)
        assert target.is_file(), f"{page.name} links to missing {link}"
    return parser.links


def test_invert_folder_writes_the_report(tmp_path):
    write_folder(tmp_path / "photos" / "one", 2, seed=0)
    write_folder(tmp_path / "photos" / "two", 1, seed=1)  # img_000 again: names must stay unique
    generator, encoder, features = tiny_setup()
    out = tmp_path / "out"
    options = ReportOptions(rank_by=("red",), legend_classes=3)
    common = dict(generator=generator, start=encoder, segmenter=ColorSegmenter(), features=features,
                  config=InversionConfig(steps=1), progress=False)
    with pytest.raises(InputError, match="no class 'person'"):
        invert_folder(tmp_path / "photos", out, options=ReportOptions(rank_by=("person",)), **common)
    assert not out.exists()  # refused before anything was written
    result = invert_folder(tmp_path / "photos", out, options=options, **common)
    assert result.names == ["img_000", "img_001", "img_000-2"]
    for name in result.names:
        for folder in ("reconstructions", "encoder_only"):
            assert Image.open(out / folder / f"{name}.png").size == (32, 32)
        assert (out / "panels" / f"{name}.png").is_file()
    assert set(result.files) == {"class_csv", "photo_csv", "json", "contact_sheet", "html", "ranked_1"}
    assert all(path.is_file() for path in result.files.values())
    assert result.files["ranked_1"].name == "ranked_by_lost_red.csv"
    payload = json.loads((out / "omissions.json").read_text())
    assert [p["name"] for p in payload["photos"]] == result.names
    assert payload["photos"][2]["files"]["panel"] == "panels/img_000-2.png"
    assert payload["rankings"] == {"red": "ranked_by_lost_red.csv"} and payload["settings"]["steps"] == 1
    links = assert_page_links_exist(out / "index.html")
    assert "panels/img_000-2.png" in links and "ranked_by_lost_red.csv" in links
    with pytest.raises(InputError, match="already holds files"):
        invert_folder(tmp_path / "photos", out, options=options, **common)
    invert_folder(tmp_path / "photos", out, options=options, overwrite=True, **common)


# -- every check before the first inversion step --------------------------------------------------

def counting_inversions(monkeypatch) -> list[int]:
    """Patch the inversion the pipeline calls; the list grows by one per inverted batch."""
    calls: list[int] = []
    real = omissions_module.invert_layer

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(omissions_module, "invert_layer", counted)
    return calls


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n not really a PNG"], ids=["empty", "corrupt"])
def test_a_bad_last_photo_fails_before_any_inversion_step(tmp_path, monkeypatch, content):
    write_folder(tmp_path / "photos", 2, seed=0)
    (tmp_path / "photos" / "zz_last.png").write_bytes(content)  # listed last
    calls = counting_inversions(monkeypatch)
    generator, encoder, features = tiny_setup()
    out = tmp_path / "out"
    with pytest.raises(ImageReadError, match="zz_last.png"):
        invert_folder(tmp_path / "photos", out, generator=generator, start=encoder, segmenter=ColorSegmenter(),
                      features=features, config=InversionConfig(steps=1), batch_size=1, progress=False)
    assert calls == [] and not out.exists()
    with pytest.raises(ImageReadError, match="zz_last.png"):
        invert_photos(tmp_path / "photos", generator, encoder, ColorSegmenter(), features=features,
                      batch_size=1, progress=False)  # at the call, not at the first next()
    assert calls == []


def test_skipped_photos_are_known_before_the_run(tmp_path, monkeypatch):
    write_folder(tmp_path / "photos", 2, seed=0)
    (tmp_path / "photos" / "zz_last.png").write_bytes(b"")
    generator, encoder, features = tiny_setup()
    skipped: list = []
    inversions = invert_photos(tmp_path / "photos", generator, encoder, ColorSegmenter(), features=features,
                               config=InversionConfig(steps=0), skip_bad_images=True, skipped=skipped,
                               progress=False)
    assert [Path(ident).name for ident, _ in skipped] == ["zz_last.png"]
    assert len(list(inversions)) == 2
    (tmp_path / "photos" / "img_000.jpg").write_bytes(b"")
    (tmp_path / "photos" / "img_001.png").write_bytes(b"")
    with pytest.raises(InputError, match="no readable photos"):
        invert_folder(tmp_path / "photos", tmp_path / "out", generator=generator, start=encoder,
                      segmenter=ColorSegmenter(), features=features, skip_bad_images=True, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_generator_that_fails_on_its_first_call_leaves_nothing_behind(tmp_path, monkeypatch):
    write_folder(tmp_path / "photos", 2, seed=0)
    generator, encoder, features = tiny_setup()
    torch.manual_seed(0)
    other = ProGAN([8, 8, 8, 8, 4, 4, 4, 4], z_dim=12).eval()  # the encoder gives 16 numbers per photo
    calls = counting_inversions(monkeypatch)
    out = tmp_path / "out"
    common = dict(start=encoder, segmenter=ColorSegmenter(), features=features, config=InversionConfig(steps=1),
                  progress=False)
    with pytest.raises(InputError, match=r"img_000.jpg: the generator \(split after 'layer4'\): latents must have shape"):
        invert_folder(tmp_path / "photos", out, generator=other, **common)
    with pytest.raises(InputError, match="layer named 'block9'"):
        invert_folder(tmp_path / "photos", out, generator=generator, split=LayerSplit("block9", ("layer1",)),
                      **common)
    assert calls == [] and not out.exists()
    (out / "reconstructions").mkdir(parents=True)  # empty folders, as an interrupted run may leave
    (out / "panels" / "deeper").mkdir(parents=True)
    result = invert_folder(tmp_path / "photos", out, generator=generator, **common)  # no overwrite needed
    assert result.names == ["img_000", "img_001"] and calls == [1]
    with pytest.raises(InputError, match="already holds files"):
        invert_folder(tmp_path / "photos", out, generator=generator, **common)


def test_settings_tell_a_pixel_only_run_from_the_papers(tmp_path):
    write_folder(tmp_path / "photos", 1, seed=0)
    generator, encoder, features = tiny_setup()
    common = dict(generator=generator, start=encoder, segmenter=ColorSegmenter(), config=InversionConfig(steps=1),
                  progress=False)
    invert_folder(tmp_path / "photos", tmp_path / "pixels", features="none",
                  provenance={"generator": "tiny.py:G"}, **common)
    settings = json.loads((tmp_path / "pixels" / "omissions.json").read_text())["settings"]
    assert settings["paper"] is False and settings["features"]["name"] == "none"
    assert settings["differs_from_paper"][:2] == ["features: none (the paper's: vgg16)",
                                                  "steps: 1 (the paper's: 3000)"]
    assert settings["normalization"] == "none" and settings["loss_weights"] == {"pixel": 1.0, "feature": 1.0,
                                                                                 "offset": 1.0}
    assert settings["generator"]["given_as"] == "tiny.py:G"
    assert settings["generator"]["class"] == "fsd.invert.proggan.ProGAN"
    assert settings["generator"]["parameters"] == sum(p.numel() for p in generator.parameters())
    assert settings["encoder"]["architecture"] == encoder.architecture
    assert "Not the paper's settings" in (tmp_path / "pixels" / "index.html").read_text()

    invert_folder(tmp_path / "photos", tmp_path / "module", features=features, **common)
    again = json.loads((tmp_path / "module" / "omissions.json").read_text())["settings"]
    assert again["features"]["name"] == "module" and again["features"]["class"] == "torch.nn.modules.container.Sequential"
    assert again["generator"]["sha256"] == settings["generator"]["sha256"]
    torch.manual_seed(5)
    other = ProGAN([8, 8, 8, 8, 4, 4, 4, 4], z_dim=16).eval()
    assert describe_network(other)["sha256"] != settings["generator"]["sha256"]
    with pytest.raises(InputError, match="ambiguous"):
        invert_folder(tmp_path / "photos", tmp_path / "never", features=None, **common)
    assert not (tmp_path / "never").exists()


def test_photo_inversions_name_images_and_percentages_alike(tmp_path):
    write_folder(tmp_path / "photos", 2, seed=0)
    generator, encoder, features = tiny_setup()
    items = list(invert_photos(tmp_path / "photos", generator, encoder, ColorSegmenter(), features=features,
                               config=InversionConfig(steps=0), progress=False))
    item = items[0]
    np.testing.assert_allclose(item.photo_percentages.sum(), 100.0)
    with pytest.deprecated_call(match="photo_percentages"):
        assert item.real is item.photo_percentages
    with pytest.deprecated_call(match="reconstruction_percentages"):
        assert item.reconstructed is item.reconstruction_percentages
    # the label maps PhotoInversion hands out (numpy) make the same report as the pipeline's percentages
    ids = [i.id for i in items]
    for real, recon in (([i.photo_labels for i in items], [i.reconstruction_labels for i in items]),
                        (np.stack([i.photo_labels for i in items]), np.stack([i.reconstruction_labels for i in items]))):
        report = omissions_from_labels(real, recon, ColorSegmenter().class_names, ids=ids)
        np.testing.assert_array_equal(report.real, np.stack([i.photo_percentages for i in items]))
        np.testing.assert_array_equal(report.reconstruction, np.stack([i.reconstruction_percentages for i in items]))
    with pytest.raises(InputError, match=r"wrap one photo's \(H, W\) map in a list"):
        omissions_from_labels(item.photo_labels, item.reconstruction_labels, CLASSES)
    with pytest.raises(InputError, match="integer class ids"):
        omissions_from_labels(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), CLASSES)
    with pytest.raises(InputError, match=r"real_labels\[1\] must be one label map"):
        omissions_from_labels([np.zeros((2, 2), int), np.zeros((1, 2, 2), int)], np.zeros((2, 2, 2), int), CLASSES)


def test_a_photo_is_found_by_path_file_name_stem_or_output_name():
    report = hand_made_report()  # ids a/A.jpg, b/B.jpg, c/C.jpg
    assert [c.name for c in report.lost_in("A")] == ["person"]
    assert report.photo_index("B.jpg") == report.photo_index(Path("b/B.jpg")) == report.photo_index("./b/B.jpg") == 1
    twins = OmissionReport(("one/x.jpg", "two/x.png", "two/y.jpg"), CLASSES, np.zeros((3, 5)), np.zeros((3, 5)))
    assert twins.photo_index("x.png") == 1 and twins.photo_index("x-2") == 1 and twins.photo_index("y") == 2
    with pytest.raises(InputError, match="ambiguous.*one/x.jpg, two/x.png"):
        twins.photo_index("x")
    with pytest.raises(InputError, match="no photo 'astronaut' among the report's 3 photos"):
        twins.photo_index("astronaut")

"""The set report (fsd.write_html, --html): content, every source kind, bad input. The browser checks of
the same pages are in tests/test_browser.py."""

from __future__ import annotations

import io
import re
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import fsd
from fsd.cli import cli
from fsd.errors import InputError
from fsd.preprocess import prepare
from fsd.report import class_report
from fsd.set_page import write_html
from tests.conftest import ColorSegmenter

N, SIZE, M = 10, 40, 3
LABELMAP = ["--segmenter", "labelmap", "--num-classes", "6", "--num-workers", "0", "-q"]


def scene(rng: np.random.Generator, red_share: float) -> np.ndarray:
    """A (SIZE, SIZE, 3) picture: a red band of about ``red_share`` of the rows over blue, a green patch."""
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[...] = (30, 60, 200)
    rows = int(round(SIZE * red_share * rng.uniform(0.7, 1.3)))
    image[:rows] = (220, 40, 50)
    g = rng.integers(3, 10)
    image[-g:, -g:] = (40, 210, 60)
    return image


def scenes(seed: int, red_share: float, n: int = N) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([scene(rng, red_share) for _ in range(n)])


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def write_pngs(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True)
    for k, image in enumerate(images):
        (folder / f"{k:03d}.png").write_bytes(png(image))
    return folder


@pytest.fixture(scope="module")
def segmenter() -> ColorSegmenter:
    return ColorSegmenter(size=32)


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    return write_pngs(tmp_path_factory.mktemp("set") / "real", scenes(0, 0.6))


FAKE = scenes(1, 0.15)


def _generator(z: torch.Tensor) -> torch.Tensor:
    """Sample k: a scene whose red band depends on its latent (values in [-1, 1])."""
    rows = (SIZE * (0.15 + 0.05 * torch.tanh(z[:, 0]))).round().long()
    out = torch.empty(len(z), 3, SIZE, SIZE)
    out[:, 0], out[:, 1], out[:, 2] = -0.75, -0.5, 0.55
    for j, r in enumerate(rows.tolist()):
        out[j, :, :r] = torch.tensor([0.73, -0.7, -0.6])[:, None, None]
    return out


def make_kind(kind: str, root: Path):
    """The generated set as one source kind; returns (what compute takes, what write_html gets or None)."""
    if kind == "folder":
        return str(write_pngs(root / "fake", FAKE)), None
    if kind == "zip":
        path = root / "fake.zip"
        with zipfile.ZipFile(path, "w") as archive:
            for k, image in enumerate(FAKE):
                archive.writestr(f"imgs/{k:03d}.png", png(image))
        return str(path), None
    if kind == "npz":
        path = root / "fake.npz"
        np.savez(path, FAKE)
        return str(path), None
    if kind == "lmdb":
        import lmdb

        path = root / "fake_lmdb"
        env = lmdb.open(str(path), map_size=1 << 24)
        with env.begin(write=True) as txn:
            for k, image in enumerate(FAKE):
                txn.put(f"{k:040x}".encode(), png(image))
        env.close()
        return str(path), None
    if kind == "tar":
        (root / "shards").mkdir()
        for s in range(2):
            with tarfile.open(root / "shards" / f"fake-{s:02d}.tar", "w") as archive:
                for k in range(s * N // 2, (s + 1) * N // 2):
                    data = png(FAKE[k])
                    info = tarfile.TarInfo(f"{k:05d}.png")
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
        return str(root / "shards" / "fake-{00..01}.tar"), None
    if kind == "saved dataset":
        import datasets

        folder = write_pngs(root / "pngs", FAKE)
        built = datasets.Dataset.from_dict({"image": [str(p) for p in sorted(folder.iterdir())]},
                                           features=datasets.Features({"image": datasets.Image()}))
        built.save_to_disk(str(root / "saved"))
        return str(root / "saved"), None
    if kind == "dataset":
        import datasets

        built = datasets.Dataset.from_dict({"image": [Image.fromarray(x) for x in FAKE]},
                                           features=datasets.Features({"image": datasets.Image()}))
        return built, built
    if kind == "generator":
        source = fsd.GeneratorSource(_generator, z_dim=4, num_samples=N)
        return source, source
    raise AssertionError(kind)


def examples_of(page: str, side: str, anchor: str) -> list[str]:
    section = page[page.index(f'<section id="{anchor}">'):]
    section = section[:section.index("</section>")]
    block = section[section.index(f"{side.capitalize()} images with the most"):]
    block = block[:block.index("</div>")]
    return re.findall(r'<img src="([^"]+)"', block)


@pytest.mark.parametrize("kind", ["folder", "zip", "npz", "lmdb", "tar", "saved dataset", "dataset", "generator"])
def test_every_source_kind_gives_examples_of_the_omitted_class(kind, real, segmenter, tmp_path, recwarn):
    fake, given = make_kind(kind, tmp_path)
    options = dict(segmenter=segmenter, num_workers=0, progress=False, bootstrap=200)
    result = (fsd.compute(real, generator=given, num_samples=N, seed=5, **options) if kind == "generator"
              else fsd.compute(real, fake, **options))
    report = class_report(result.real, result.fake)
    assert "red" in [r.name for r in report.notable_changes()[0]]
    index = write_html(result, tmp_path / "page", segmenter=segmenter, examples=M, fake_images=given, seed=5)
    assert not [w for w in recwarn if "html report" in str(w.message)]
    page = index.read_text()
    real_examples, fake_examples = examples_of(page, "real", "red"), examples_of(page, "generated", "red")
    assert len(real_examples) == M and len(fake_examples) == M
    for src in real_examples + fake_examples:
        assert (index.parent / src).is_file() and not src.startswith(("/", "http"))
    # The fake examples are the generated images with the most red: by the rows, those images first.
    rows = result.fake.rows
    red = rows.dense()[:, 1]
    top = sorted(range(len(rows)), key=lambda r: (-red[r], rows.index[r]))[:M]
    assert [f"examples/fake-{r:06d}-1.jpg" for r in top] == fake_examples
    # Each full-size view shows the image as the segmenter saw it.
    view = (index.parent / f"examples/fake-{top[0]:06d}.html").read_text()
    assert "segmentation" in view and "legend" in view and "red" in view
    shown = np.asarray(Image.open(index.parent / f"examples/fake-{top[0]:06d}.jpg"))
    if kind == "generator":
        expected = given.images([int(rows.index[top[0]])], seed=5)[0].numpy()
        expected = prepare(Image.fromarray(expected.transpose(1, 2, 0)), segmenter.preprocessing)
    else:
        expected = prepare(Image.fromarray(FAKE[int(rows.index[top[0]]) if kind != "tar" else top[0]]),
                           segmenter.preprocessing)
    assert np.abs(shown.astype(int) - expected.transpose(1, 2, 0).astype(int)).mean() < 4  # JPEG, q 92


def test_the_page_holds_the_score_table_figure_and_settings(real, segmenter, tmp_path):
    fake, _ = make_kind("folder", tmp_path)
    result = fsd.compute(real, fake, segmenter=segmenter, num_workers=0, progress=False, bootstrap=200)
    index = write_html(result, tmp_path / "page", segmenter=segmenter, command="fsd real fake --html page")
    page = index.read_text()
    low, high = result.fsd_ci
    assert f"FSD: {result.fsd:.4f}" in page and f"{low:.4f} to {high:.4f}" in page
    for text in ("fsd real fake --html page", fsd.__version__, segmenter.name, "basic bootstrap, 200 replicates",
                 'id="class-table"', 'class="sortable"', 'data-filter="class-table"', 'href="#red"',
                 "red: ", "of real pixels", "too few"):
        assert text in page, text
    assert (index.parent / "figure.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    # classes.csv is the class report's CSV, as `--csv` writes it.
    assert (index.parent / "classes.csv").read_bytes().decode() == class_report(result.real, result.fake).csv_text()
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert page.count("<script>") == 1


def test_cli_compute_report_and_compare_write_pages(tmp_path):
    from tests.conftest import write_label_folder as labels

    real = tmp_path / "real"
    labels(real, 12, classes=6, seed=0)
    fake = tmp_path / "fake"
    fake.mkdir()
    rng = np.random.default_rng(1)
    for k in range(12):  # class 5 nearly gone
        lab = rng.integers(0, 5, (32, 32), dtype=np.uint8)
        Image.fromarray(lab).save(fake / f"{k}.png")
    runner = CliRunner()
    result = runner.invoke(cli, [str(real), str(fake), *LABELMAP, "--html", str(tmp_path / "p1"),
                                 "--html-examples", "2"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("FSD: ") and "p1" not in result.stdout
    assert f"wrote the HTML report to {tmp_path / 'p1' / 'index.html'}" in result.stderr
    page = (tmp_path / "p1" / "index.html").read_text()
    assert len(examples_of(page, "real", "class-5")) == 2 and "--html-examples 2" in page
    # A folder that holds files is refused before any work, unless --overwrite.
    again = runner.invoke(cli, [str(real), str(fake), *LABELMAP, "--html", str(tmp_path / "p1")])
    assert again.exit_code == 2 and "--overwrite" in again.stderr
    assert runner.invoke(cli, [str(real), str(fake), *LABELMAP, "--html", str(tmp_path / "p1"),
                               "--overwrite"]).exit_code == 0
    # From saved statistics: the images are read again from where the statistics recorded them.
    for name, folder in (("real", real), ("fake", fake)):
        assert runner.invoke(cli, ["--save-stats", str(folder), str(tmp_path / f"{name}.npz"), *LABELMAP]).exit_code == 0
    result = runner.invoke(cli, ["report", str(tmp_path / "real.npz"), str(tmp_path / "fake.npz"),
                                 "--html", str(tmp_path / "p2")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "p2" / "index.html").read_text()
    assert len(examples_of(page, "real", "class-5")) == 6 and "none of the generated images holds it" in page
    # Moved images: the page says why it has no examples and warns, naming the source; --real-images helps.
    moved = tmp_path / "moved"
    real.rename(moved)
    result = runner.invoke(cli, ["report", str(tmp_path / "real.npz"), str(tmp_path / "fake.npz"),
                                 "--html", str(tmp_path / "p3")])
    assert result.exit_code == 0, result.output
    assert str(real) in result.stderr and "does not exist any more" in result.stderr
    page = (tmp_path / "p3" / "index.html").read_text()
    assert "does not exist any more" in page and "not available" in page
    result = runner.invoke(cli, ["report", str(tmp_path / "real.npz"), str(tmp_path / "fake.npz"),
                                 "--html", str(tmp_path / "p4"), "--real-images", str(moved)])
    assert result.exit_code == 0 and "does not exist" not in result.stderr
    assert len(examples_of((tmp_path / "p4" / "index.html").read_text(), "real", "class-5")) == 6
    # compare: a section per model and the pairwise table.
    result = runner.invoke(cli, ["compare", str(moved), str(fake), str(moved), *LABELMAP, "--names", "A,B",
                                 "--html", str(tmp_path / "p5")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "p5" / "index.html").read_text()
    assert 'id="model-a"' in page and 'id="model-b"' in page and 'id="pairs"' in page
    for name, folder in (("A", fake), ("B", moved)):  # the settings name each model's own set
        assert f'<th class="name">model {name}</th><td class="name">{folder} (12 images)</td>' in page
    assert 'id="a-class-5"' in page and len(examples_of(page, "real", "a-class-5")) == 6
    # Options that need --html say so.
    result = runner.invoke(cli, [str(moved), str(fake), *LABELMAP, "--html-classes", "3"])
    assert result.exit_code == 2 and "--html-classes applies with --html" in result.output
    result = runner.invoke(cli, [str(moved), str(fake), *LABELMAP, "--html-classes", "8", "--html-examples", "6"])
    assert result.exit_code == 2 and "--html-classes and --html-examples apply with --html" in result.output


def test_statistics_without_rows_ask_for_a_recompute(real, segmenter, tmp_path):
    fake, _ = make_kind("folder", tmp_path)
    result = fsd.compute(real, fake, segmenter=segmenter, num_workers=0, progress=False, keep_rows=False)
    with pytest.raises(InputError, match="per-image rows.*--no-rows|--no-rows.*per-image rows"):
        write_html(result, tmp_path / "page", segmenter=segmenter)
    assert not (tmp_path / "page").exists()


def test_a_generator_recorded_in_statistics_gives_a_page_without_examples(real, segmenter, tmp_path):
    source = fsd.GeneratorSource(_generator, z_dim=4, num_samples=N)
    result = fsd.compute(real, generator=source, segmenter=segmenter, num_workers=0, progress=False, bootstrap=100)
    with pytest.warns(UserWarning, match="generated set.*nothing to read again"):
        index = write_html(result, tmp_path / "page", segmenter=segmenter)
    page = index.read_text()
    assert len(examples_of(page, "real", "red")) == 6 and "nothing to read again" in page
    with pytest.raises(InputError, match="must be >= 0"):
        write_html(result, tmp_path / "other", segmenter=segmenter, examples=-1)

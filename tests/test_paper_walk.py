"""Folders are read as the paper's walk reads them: .jpg/.jpeg/.png, links to folders not followed;
everything else is opt-in, and what is left out is counted in a warning that says how to include it."""

import json
import os
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import fsd
from fsd.cli import cli
from fsd.errors import InputError
from fsd.sources import FolderSource, ZipSource, list_images, open_source
from tests.conftest import ColorSegmenter

FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF",
           ".tiff": "TIFF", ".gif": "GIF"}


def save(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix.lower()
    image = Image.fromarray(np.full((8, 8, 3), value, np.uint8))
    image.save(path, FORMATS[ext] if ext in FORMATS else "PNG")


def tree(tmp_path):
    """Every kind of entry a folder can hold."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    for name in ["a.jpg", "B.JPEG", "c.png", "D.PNG", "e.webp", "f.bmp", "g.tif", "h.TIFF", "i.gif",
                 "sub/j.png", "sub/k.webp", "sub/deeper/l.jpeg"]:
        save(root / name)
    (root / "notes.txt").write_text("not an image")
    (root / "labels.json").write_text("{}")
    save(outside / "m.png")
    save(outside / "n.bmp")
    os.symlink(outside, root / "linked-folder")  # the paper's walk does not enter it
    os.symlink(outside / "m.png", root / "linked-file.png")  # a link to a file is a file
    os.symlink(root / "missing.png", root / "dangling.png")  # listed, so reading it names it
    return root


def paper_walk(root):
    """The paper's listing, written from its definition: os.walk (links to folders not followed),
    directories in string order of their path, each directory's files in string order."""
    found = {}
    for directory, _, names in os.walk(root):
        found[directory] = sorted(n for n in names if n.lower().endswith((".jpg", ".jpeg", ".png")))
    return [os.path.join(d, n) for d in sorted(found) for n in found[d]]


def test_the_default_listing_is_the_papers_walk(tmp_path):
    root = tree(tmp_path)
    expected = paper_walk(str(root))
    assert [os.path.relpath(p, root) for p in expected] == [
        "B.JPEG", "D.PNG", "a.jpg", "c.png", "dangling.png", "linked-file.png", "sub/j.png", "sub/deeper/l.jpeg"]
    assert list_images(root) == expected
    with pytest.warns(UserWarning) as caught:
        source = FolderSource(root)
    assert source.paths == expected
    (message,) = [str(w.message) for w in caught]
    assert message.startswith(f"{root}: left out 6 image files with other extensions (2 .webp, 1 .bmp, 1 .gif, "
                              "1 .tif, 1 .tiff)")
    assert "the reader takes .jpg, .jpeg, .png (the paper's set)" in message
    assert "extensions=('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp')" in message
    assert "did not follow 1 symbolic link to folders" in message and "linked-folder" in message
    assert "follow_links=True" in message and "--" not in message  # Python keywords in Python


def test_other_extensions_and_links_are_opt_in(tmp_path):
    root = tree(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left out: no warning
        everything = FolderSource(root, extensions="all", follow_links=True)
    rel = [os.path.relpath(p, root) for p in everything.paths]
    assert rel == ["B.JPEG", "D.PNG", "a.jpg", "c.png", "dangling.png", "e.webp", "f.bmp", "g.tif", "h.TIFF",
                   "i.gif", "linked-file.png", "linked-folder/m.png", "linked-folder/n.bmp", "sub/j.png",
                   "sub/k.webp", "sub/deeper/l.jpeg"]
    with pytest.warns(UserWarning, match=r"left out 5 image files with other extensions \(2 \.bmp, 1 \.gif, 1 \.tif, 1 \.tiff\)"):
        some = open_source(root, extensions=[".jpg", "JPEG", "png", "webp"], follow_links=True)
    assert sum(p.lower().endswith(".webp") for p in some.paths) == 2
    assert "linked-folder/m.png" in [os.path.relpath(p, root) for p in some.paths]


def test_archives_take_the_same_default_and_count_what_they_leave_out(tmp_path):
    import zipfile

    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ["x.png", "y.webp", "z.tif", "readme.txt"]:
            zf.writestr(name, b"data")
    with pytest.warns(UserWarning, match=r"a.zip: left out 2 image files with other extensions \(1 \.tif, 1 "
                                         r"\.webp\).*extensions=\("):
        assert ZipSource(archive).members == ["x.png"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ZipSource(archive, extensions="all").members == ["x.png", "y.webp", "z.tif"]


def test_a_folder_of_only_other_kinds_says_how_to_read_them(tmp_path):
    save(tmp_path / "only" / "a.webp")
    (tmp_path / "links").mkdir()
    os.symlink(tmp_path / "only", tmp_path / "links" / "to-only")
    with pytest.raises(InputError, match=r"no images found .*left out 1 image file .*\(1 \.webp\).*extensions="):
        FolderSource(tmp_path / "only")
    with pytest.raises(InputError, match=r"no images found .*did not follow 1 symbolic link to folders"):
        FolderSource(tmp_path / "links")


@pytest.mark.parametrize("bad", ["", ",", "*.png", "a/b"])
def test_bad_extension_lists_are_refused(tmp_path, bad):
    save(tmp_path / "a.png")
    with pytest.raises(InputError, match="extensions"):
        FolderSource(tmp_path, extensions=bad)


def saved_count(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["n"]


def test_the_command_line_reads_the_same_files_and_names_its_options(tmp_path, monkeypatch):
    root = tree(tmp_path)
    os.unlink(root / "dangling.png")
    monkeypatch.setattr("fsd.cli._make_segmenter", lambda *args, **kwargs: ColorSegmenter(32))
    common = ["--num-workers", "0", "-q", "--json"]
    runner = CliRunner()
    default = runner.invoke(cli, ["--save-stats", str(root), str(tmp_path / "a.npz"), *common])
    assert saved_count(default) == 7
    assert "warning: " in default.stderr and "left out 6 image files" in default.stderr
    assert "--extensions .jpg,.jpeg,.png,.bmp,.gif,.tif,.tiff,.webp" in default.stderr
    assert "--follow-links" in default.stderr and "extensions=" not in default.stderr
    everything = runner.invoke(cli, ["--save-stats", str(root), str(tmp_path / "b.npz"), *common,
                                     "--extensions", "all", "--follow-links"])
    assert saved_count(everything) == 15 and "warning" not in everything.stderr
    assert fsd.Stats.load(tmp_path / "b.npz").n == 15
    webp = runner.invoke(cli, ["--save-stats", str(root), str(tmp_path / "c.npz"), *common,
                               "--extensions", "webp"])
    assert saved_count(webp) == 2
    refused = runner.invoke(cli, ["--save-stats", str(root), str(tmp_path / "d.npz"), *common, "--key", "x"])
    assert refused.exit_code == 2
    assert "--key does not apply to the folder" in refused.stderr and "key=" not in refused.stderr

"""Odd and hostile files: each has a decided, tested outcome; nothing is silently dropped or hangs."""

from __future__ import annotations

import builtins
import io
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import fsd
from fsd.cli import cli
from fsd.errors import ImageReadError, InputError
from fsd.preprocess import MAX_RESIZED_PIXELS, prepare, resized_size
from fsd.segmenters.base import PAPER_PREPROCESSING, Preprocessing
from fsd.segmenters.labelmap import LabelMapSegmenter
from fsd.sources import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS_ENV,
    FolderSource,
    MapSource,
    SourceFormatError,
    iterate_batches,
)
from tests.conftest import ColorSegmenter

SMALL = Preprocessing("rgb", 32, "bilinear")


@contextmanager
def deadline(seconds: int):
    """Fail instead of hanging."""
    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def read_all(source, *, skip: bool = False, num_workers: int = 0, preprocessing=SMALL, batch_size: int = 4):
    skipped: list[tuple[str, str]] = []
    ids: list[str] = []
    arrays = []
    for batch in iterate_batches(source, range(len(source)), preprocessing, batch_size=batch_size,
                                 num_workers=num_workers, skip_bad_images=skip, skipped=skipped):
        ids.extend(batch.ids)
        arrays.append(batch.images)
    return ids, skipped, arrays


def read_one(path: Path, preprocessing=PAPER_PREPROCESSING, **options) -> np.ndarray:
    source = FolderSource(path.parent, **options)
    index = source.paths.index(str(path))
    return source.read(index, preprocessing)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_16bit_rgb(pixels: np.ndarray, size: tuple[int, int] | None = None) -> bytes:
    """A 16-bit-per-channel RGB PNG (PIL cannot write one); ``size`` forges the header's dimensions."""
    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", *(size or (w, h)), 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


# -- colour modes and bit depths ---------------------------------------------------------------------

def test_modes_convert_like_the_papers_convert_rgb(tmp_path):
    palette = Image.new("P", (20, 20))
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.paste(1, (0, 0, 20, 20))
    palette.info["transparency"] = 1  # transparency is dropped, the palette colour kept
    cases = {
        "gray.png": (Image.new("L", (20, 20), 77), [77, 77, 77]),
        "palette.png": (palette, [10, 200, 30]),
        "rgba.png": (Image.new("RGBA", (20, 20), (200, 100, 50, 0)), [200, 100, 50]),
        "la.png": (Image.new("LA", (20, 20), (100, 5)), [100, 100, 100]),
        "bilevel.png": (Image.new("1", (20, 20), 1), [255, 255, 255]),
    }
    for name, (image, _) in cases.items():
        image.save(tmp_path / name)
    for name, (_, rgb) in cases.items():
        out = read_one(tmp_path / name)
        assert out.shape == (3, 256, 256) and out.dtype == np.uint8
        assert (out == np.array(rgb, np.uint8)[:, None, None]).all(), name


def test_16_bit_images_keep_their_high_byte(tmp_path):
    Image.fromarray(np.full((16, 16), 0x1234, np.uint16)).save(tmp_path / "gray16.png")
    with Image.open(tmp_path / "gray16.png") as image:
        assert image.mode.startswith("I")
        assert (np.asarray(image.convert("RGB")) == 255).all()  # what convert('RGB') alone would do
    assert (read_one(tmp_path / "gray16.png") == 0x12).all()
    pixels = np.empty((8, 8, 3), np.uint16)
    pixels[...] = [0xFF00, 0x80FF, 0x0100]
    (tmp_path / "rgb16.png").write_bytes(png_16bit_rgb(pixels))
    assert (read_one(tmp_path / "rgb16.png")[:, 0, 0] == [0xFF, 0x80, 0x01]).all()


def test_cmyk_jpeg_uses_pils_conversion(tmp_path):
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    with Image.open(tmp_path / "cmyk.jpg") as image:
        assert image.mode == "CMYK"
        expected = np.asarray(image.convert("RGB").resize((256, 256), Image.Resampling.BILINEAR))
    out = read_one(tmp_path / "cmyk.jpg")
    np.testing.assert_array_equal(out, expected.transpose(2, 0, 1))
    assert abs(int(out[0, 0, 0]) - 255) < 8 and out[1:, 0, 0].max() < 8  # red


def test_exif_orientation_is_ignored_unless_asked_for(tmp_path):
    pixels = np.zeros((40, 80, 3), np.uint8)
    pixels[:, :40] = [250, 0, 0]  # left half red, right half blue
    pixels[:, 40:] = [0, 0, 250]
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=98)
    as_stored = read_one(tmp_path / "rotated.jpg")
    assert as_stored[0, 128, 10] > 200 and as_stored[2, 128, 245] > 200  # red left, blue right: not rotated
    upright = read_one(tmp_path / "rotated.jpg", exif_transpose=True)
    assert upright[0, 10, 128] > 200 and upright[2, 245, 128] > 200  # red on top, blue below


# -- sizes -----------------------------------------------------------------------------------------------

def test_tiny_images_are_upscaled(tmp_path):
    Image.new("RGB", (1, 1), (9, 99, 199)).save(tmp_path / "one.png")
    assert (read_one(tmp_path / "one.png") == np.array([9, 99, 199], np.uint8)[:, None, None]).all()
    rng = np.random.default_rng(0)
    strip = Image.fromarray(rng.integers(0, 256, (300, 10, 3), dtype=np.uint8))
    strip.save(tmp_path / "strip.png")
    manual = strip.resize((256, 7680), Image.Resampling.BILINEAR).crop((0, 3712, 256, 3968))
    np.testing.assert_array_equal(read_one(tmp_path / "strip.png"), np.asarray(manual).transpose(2, 0, 1))


def test_extreme_aspect_ratio_resamples_only_the_crop(tmp_path):
    assert np.prod(resized_size(1, 300_000, 256)) > MAX_RESIZED_PIXELS  # the full resize would need ~60 GB
    column = np.linspace(0, 255, 300_000).astype(np.uint8)
    Image.fromarray(np.repeat(column[:, None, None], 3, axis=2)).save(tmp_path / "thread.png")
    with deadline(30):
        out = read_one(tmp_path / "thread.png")
    assert out.shape == (3, 256, 256)
    assert abs(int(out[0, 128, 0]) - 127) <= 1  # the middle of the gradient


def test_decompression_bombs_are_refused_with_the_way_out(tmp_path, monkeypatch):
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    # A forged header: 100000 x 100000 pixels in a few bytes. Refused before anything is allocated.
    (tmp_path / "bomb.png").write_bytes(png_16bit_rgb(np.zeros((1, 1, 3), np.uint16), size=(100_000, 100_000)))
    limit = 2 * Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageReadError, match=rf"bomb.png: 100000 x 100000 = 10,000,000,000 pixels is over the "
                                             rf"limit of {limit:,}.*{MAX_PIXELS_ENV}"):
        read_one(tmp_path / "bomb.png")
    # Raising the limit lets a trusted large image through (PIL's limit scaled down to keep the test small).
    (tmp_path / "bomb.png").unlink()
    Image.new("RGB", (100, 50)).save(tmp_path / "big.png")  # 5000 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1024)  # PIL refuses above 2048
    with pytest.raises(ImageReadError, match=rf"big.png: 100 x 50 = 5,000 pixels .*2,048.*{MAX_PIXELS_ENV}"):
        read_one(tmp_path / "big.png", SMALL)
    monkeypatch.setenv(MAX_PIXELS_ENV, "5000")
    assert read_one(tmp_path / "big.png", SMALL).shape == (3, 32, 32)
    monkeypatch.setenv(MAX_PIXELS_ENV, "0")  # no limit
    assert read_one(tmp_path / "big.png", SMALL).shape == (3, 32, 32)
    assert Image.MAX_IMAGE_PIXELS == 1024  # PIL's global is left as it was
    monkeypatch.setenv(MAX_PIXELS_ENV, "4999")
    with pytest.raises(ImageReadError, match="over the limit of 4,999"):
        read_one(tmp_path / "big.png", SMALL)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(SourceFormatError, match=MAX_PIXELS_ENV):
        read_all(FolderSource(tmp_path), skip=True)  # a bad setting is not a bad image: never skipped


# -- broken files ----------------------------------------------------------------------------------------

def hostile_folder(root: Path) -> dict[str, str]:
    """A folder of bad files, each with the reason expected in its error."""
    root.mkdir(parents=True, exist_ok=True)
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    png, jpeg = encoded(photo, "PNG"), encoded(photo, "JPEG", quality=90)
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    corrupt = bytearray(png)
    corrupt[60:80] = b"\x00" * 20  # inside the first IDAT chunk: its CRC no longer matches
    (root / "corrupt.png").write_bytes(bytes(corrupt))
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.png").write_text("this is a text file with an image extension\n")
    os.symlink(root / "missing-target.png", root / "dangling.png")
    os.symlink(root / "loop-b.png", root / "loop-a.png")
    os.symlink(root / "loop-a.png", root / "loop-b.png")
    os.mkfifo(root / "pipe.png")  # opening it for reading would block forever
    return {
        "truncated.png": "truncat|broken|EOF",
        "truncated.jpg": "truncated",
        "corrupt.png": "broken|CRC|crc|decompress",
        "empty.jpg": r"empty file \(0 bytes\)",
        "notes.png": "not an image Pillow can decode",
        "dangling.png": "dangling symbolic link",
        "loop-a.png": "symbolic link loop",
        "loop-b.png": "symbolic link loop",
        "pipe.png": "not a regular file",
    }


def test_each_broken_file_is_named_with_its_reason(tmp_path):
    expected = hostile_folder(tmp_path / "bad")
    source = FolderSource(tmp_path / "bad")
    assert sorted(os.path.basename(p) for p in source.paths) == sorted(expected)  # nothing dropped
    with deadline(30):
        for index, path in enumerate(source.paths):
            with pytest.raises(ImageReadError) as info:
                source.read(index, SMALL)
            assert info.value.path == path
            assert re.search(expected[os.path.basename(path)], info.value.reason), info.value.reason


def test_unreadable_permissions_are_named(tmp_path, monkeypatch):
    # Tests run as root, for whom chmod 000 changes nothing: refuse the open itself.
    Image.new("RGB", (8, 8)).save(tmp_path / "locked.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "open.png")
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if str(file).endswith("locked.png"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    with pytest.raises(ImageReadError, match="locked.png: permission denied"):
        read_all(FolderSource(tmp_path))
    ids, skipped, _ = read_all(FolderSource(tmp_path), skip=True)
    assert [os.path.basename(i) for i in ids] == ["open.png"] and skipped[0][0].endswith("locked.png")


def test_skip_bad_images_skips_and_reports_every_one(tmp_path):
    expected = hostile_folder(tmp_path / "mixed")
    for i in range(3):
        Image.new("RGB", (40, 30), (200, 10 * i, 0)).save(tmp_path / "mixed" / f"good{i}.png")
    with deadline(60):
        with pytest.raises(ImageReadError, match="mixed"):
            fsd.compute_stats(tmp_path / "mixed", segmenter=ColorSegmenter(32), num_workers=2, progress=False)
        with pytest.warns(UserWarning, match=f"skipped {len(expected)} unreadable") as record:
            stats = fsd.compute_stats(tmp_path / "mixed", segmenter=ColorSegmenter(32), num_workers=2,
                                      progress=False, skip_bad_images=True)
    assert stats.n == 3
    assert sorted(os.path.basename(p) for p, _ in stats.skipped) == sorted(expected)
    # the skip warning itself (Python 3.12+ adds a DeprecationWarning about fork in a threaded process)
    messages = [str(w.message) for w in record if "unreadable" in str(w.message)]
    assert len(messages) == 1 and all(name in messages[0] for name in expected)


# -- folders ---------------------------------------------------------------------------------------------

def test_empty_and_imageless_folders_say_what_they_hold(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images found .*the folder is empty"):
        fsd.compute_stats(tmp_path / "empty", segmenter=ColorSegmenter(32))
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    for name in ("a.txt", "b.txt", "sub/c.gif", "batch.npz"):
        (docs / name).write_bytes(b"x")
    with pytest.raises(InputError, match=r"4 other files: 2 \.txt.*pass an archive"):
        fsd.compute_stats(docs, segmenter=ColorSegmenter(32))


def test_images_only_in_subfolders_and_folders_named_like_images(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "b" / "deep.png")
    (tmp_path / "looks-like.png").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "looks-like.png" / "inside.jpg")
    names = [os.path.relpath(p, tmp_path) for p in FolderSource(tmp_path).paths]
    assert names == [os.path.join("a", "b", "deep.png"), os.path.join("looks-like.png", "inside.jpg")]


def test_spaces_and_non_ascii_names(tmp_path):
    folder = tmp_path / "mit Leerzeichen" / "ünïcødé 画像"
    folder.mkdir(parents=True)
    Image.new("L", (20, 20), 1).save(folder / "Straße café.png")
    Image.new("L", (20, 20), 2).save(folder / "ß 2.PNG")
    (folder / "défaut 壊れ.png").write_bytes(b"broken")
    with pytest.raises(ImageReadError, match="défaut 壊れ.png"):
        read_all(FolderSource(tmp_path))
    ids, skipped, _ = read_all(FolderSource(tmp_path), skip=True)
    assert [os.path.basename(i) for i in ids] == ["Straße café.png", "ß 2.PNG"]
    result = CliRunner().invoke(cli, ["--save-stats", str(tmp_path), str(tmp_path / "out.npz"), "--segmenter",
                                      "labelmap", "--num-classes", "256", "--num-workers", "0", "-q"])
    assert result.exit_code == 2 and "défaut 壊れ.png" in result.output


# -- fuzzing -------------------------------------------------------------------------------------------

def fuzz_folder(root: Path, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    photo = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    seeds = [encoded(photo, "PNG"), encoded(photo, "JPEG"), encoded(photo, "WEBP"), encoded(photo, "BMP"),
             encoded(photo, "TIFF"), encoded(photo.convert("P"), "PNG"), encoded(photo.convert("L"), "JPEG")]
    root.mkdir()
    for i in range(count):
        kind = i % 3
        if kind == 0:  # random bytes
            data = rng.integers(0, 256, int(rng.integers(0, 2000)), dtype=np.uint8).tobytes()
        else:
            data = bytearray(seeds[int(rng.integers(len(seeds)))])
            if kind == 1:  # flipped bytes, headers included
                for position in rng.integers(0, len(data), int(rng.integers(1, 12))):
                    data[position] = int(rng.integers(256))
            else:  # cut short
                data = data[: int(rng.integers(0, len(data)))]
            data = bytes(data)
        ext = IMAGE_EXTENSIONS[int(rng.integers(len(IMAGE_EXTENSIONS)))]
        (root / f"fuzz_{i:03d}{ext}").write_bytes(data)


def test_fuzzed_files_end_in_a_named_error_or_decode(tmp_path, monkeypatch):
    fuzz_folder(tmp_path / "fuzz", 300, seed=2024)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1 << 20)  # bounds what a forged header can allocate
    source = FolderSource(tmp_path / "fuzz")
    with deadline(120):
        ids, skipped, arrays = read_all(source, skip=True, num_workers=2, batch_size=16)
        assert len(ids) + len(skipped) == 300  # every file is either read or reported
        assert sorted(ids + [p for p, _ in skipped]) == sorted(source.paths)
        assert all(reason and "Traceback" not in reason for _, reason in skipped)
        assert all(a.dtype == torch.uint8 and a.shape[1:] == (3, 32, 32) for a in arrays)
        assert len(skipped) > 150  # most of them are broken
        with pytest.raises(ImageReadError) as info:
            read_all(source, num_workers=2, batch_size=16)
        assert info.value.path in source.paths


# -- dying workers and interrupted runs ------------------------------------------------------------------

class CrashingSource(MapSource):
    """Image ``crash_at`` kills the worker process decoding it, as a segfaulting decoder would."""

    def __init__(self, count: int, crash_at: int):
        self.count, self.crash_at = count, crash_at

    def __len__(self) -> int:
        return self.count

    def identity(self, index: int) -> str:
        return f"item{index}.png"

    def open(self, index: int) -> Image.Image:
        if index == self.crash_at and torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return Image.new("RGB", (8, 8), (index, 0, 0))


def test_a_dying_worker_is_blamed_on_its_image(tmp_path):
    source = CrashingSource(12, crash_at=5)
    with deadline(60):
        with pytest.raises(ImageReadError, match=r"item5.png: the worker process decoding it died"):
            read_all(source, num_workers=2, batch_size=2)
        ids, skipped, arrays = read_all(source, skip=True, num_workers=2, batch_size=2)
    assert ids == [f"item{i}.png" for i in range(12) if i != 5]
    assert [p for p, _ in skipped] == ["item5.png"]
    assert torch.cat(arrays)[:, 0, 0, 0].tolist() == [i for i in range(12) if i != 5]


def test_after_a_dying_worker_read_and_skipped_images_stay_a_prefix(tmp_path):
    """Workers read ahead, so the image that killed one may lie beyond images not yet yielded. It is
    reported when the order reaches it: at every batch, read + skipped images are the first k (what
    resuming from a checkpoint counts on)."""
    source = CrashingSource(16, crash_at=9)
    skipped: list[tuple[str, str]] = []
    seen: list[str] = []
    with deadline(60):
        for batch in iterate_batches(source, range(16), SMALL, batch_size=2, num_workers=2,
                                     skip_bad_images=True, skipped=skipped):
            seen.extend(batch.ids)
            done = sorted(seen + [p for p, _ in skipped], key=lambda name: int(name[4:-4]))
            assert done == [f"item{i}.png" for i in range(len(done))]
    assert [p for p, _ in skipped] == ["item9.png"] and len(seen) == 15


class InterruptingSource(MapSource):
    """Ctrl-C arrives while image ``at`` is being read (in the main process)."""

    def __init__(self, count: int, at: int, delay: float = 0.0):
        self.count, self.at, self.delay = count, at, delay

    def __len__(self) -> int:
        return self.count

    def identity(self, index: int) -> str:
        return f"frame{index}"

    def open(self, index: int) -> Image.Image:
        time.sleep(self.delay)
        if index == self.at:
            raise KeyboardInterrupt
        return Image.new("RGB", (8, 8), (index * 20, 0, 0))


def test_ctrl_c_is_never_taken_for_a_bad_image_and_leaves_no_file(tmp_path):
    out = tmp_path / "stats.npz"
    with pytest.raises(KeyboardInterrupt):
        stats = fsd.compute_stats(InterruptingSource(10, at=6), segmenter=ColorSegmenter(32), num_workers=0,
                                  batch_size=2, progress=False, skip_bad_images=True)
        stats.save(out)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_save_keeps_the_previous_file_whole(tmp_path, monkeypatch):
    stats = fsd.compute_stats(InterruptingSource(6, at=-1), segmenter=ColorSegmenter(32), num_workers=0,
                              progress=False)
    out = tmp_path / "stats.npz"
    stats.save(out)
    before = out.read_bytes()

    def interrupted_savez(fh, **arrays):
        fh.write(b"PK\x03\x04 half written")
        raise KeyboardInterrupt

    monkeypatch.setattr(fsd.stats.np, "savez", interrupted_savez)
    with pytest.raises(KeyboardInterrupt):
        stats.save(out)
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["stats.npz"]


_CTRL_C_SCRIPT = r"""
import gc, multiprocessing, sys, time
from PIL import Image
from fsd.segmenters.base import Preprocessing
from fsd.sources import MapSource, iterate_batches

class Slow(MapSource):
    def __len__(self):
        return 400
    def identity(self, index):
        return f"frame{index}"
    def open(self, index):
        time.sleep(0.02)
        return Image.new("RGB", (8, 8), (index % 200, 0, 0))

if __name__ == "__main__":
    started = None
    try:
        for batch in iterate_batches(Slow(), range(400), Preprocessing("rgb", 32, "bilinear"), batch_size=4,
                                     num_workers=2, skip_bad_images=False, skipped=[]):
            if started is None:
                started = time.monotonic()
                print("reading", flush=True)
        print("finished without an interrupt", flush=True)
        sys.exit(3)
    except KeyboardInterrupt:
        gc.collect()
        waited = time.monotonic()
        while multiprocessing.active_children() and time.monotonic() - waited < 30:
            time.sleep(0.1)
        print(f"interrupted; workers left {len(multiprocessing.active_children())}; "
              f"stopped in {time.monotonic() - waited:.1f} s", flush=True)
        sys.exit(0)
"""


def test_ctrl_c_from_the_terminal_with_workers_stops_cleanly(tmp_path):
    # In its own process: a signal sent to the pytest process can land inside the finalizer of an
    # earlier test's loader iterator, where Python ignores it, so the test would measure the test run.
    script = tmp_path / "ctrl_c.py"
    script.write_text(_CTRL_C_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(Path(fsd.__file__).resolve().parents[1]))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "reading", child.stderr.read()
        time.sleep(0.5)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0, (out, err)
    assert re.fullmatch(r"interrupted; workers left 0; stopped in \d+\.\d s\n", out), (out, err)
    assert float(out.split()[-2]) < 30


def test_cli_interrupted_run_exits_130_without_output(tmp_path, monkeypatch):
    folder = tmp_path / "labels"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(np.full((16, 16), i % 3, np.uint8)).save(folder / f"{i}.png")
    real_open = FolderSource.open

    def open_then_interrupt(self, index):
        if index == 4:
            raise KeyboardInterrupt
        return real_open(self, index)

    monkeypatch.setattr(FolderSource, "open", open_then_interrupt)
    out = tmp_path / "out" / "stats.npz"
    result = CliRunner().invoke(cli, ["--save-stats", str(folder), str(out), "--segmenter", "labelmap",
                                      "--num-classes", "3", "--num-workers", "0", "--batch-size", "2", "-q"])
    assert result.exit_code == 130 and "interrupted" in result.output
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


def test_labelmap_segmenter_reads_label_arrays(tmp_path):
    labels = np.zeros((3, 16, 16, 1), np.uint8)
    labels[1] = 1
    labels[2, :8] = 2
    per_image = fsd.class_percentages_of(labels, segmenter=LabelMapSegmenter(3), num_workers=0, progress=False)
    np.testing.assert_array_equal(per_image.percentages, [[100, 0, 0], [0, 100, 0], [50, 0, 50]])
    with pytest.raises(ImageReadError, match=r"array\[0\].*single-channel"):
        fsd.compute_stats(np.zeros((2, 8, 8, 3), np.uint8), segmenter=LabelMapSegmenter(3), num_workers=0,
                          progress=False)


def test_prepare_of_a_huge_resize_is_not_attempted_for_ordinary_images():
    image = Image.new("RGB", (4000, 3000))
    assert np.prod(resized_size(*image.size, 256)) < MAX_RESIZED_PIXELS
    assert prepare(image, PAPER_PREPROCESSING).shape == (3, 256, 256)


def test_hostile_zip_members_are_named(tmp_path, monkeypatch):
    good = encoded(Image.new("RGB", (8, 8), (1, 2, 3)), "PNG")
    archive = tmp_path / "odd.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("good.png", good)
        z.writestr("empty.png", b"")
        z.writestr("text.png", "hello")
        z.writestr("huge.png", b"\0" * 5000)
        z.writestr("crc.png", good)
    data = bytearray(archive.read_bytes())
    start = data.rindex(b"crc.png", 0, data.index(b"PK\x01\x02")) + len("crc.png")
    data[start + 20] ^= 0xFF  # damage crc.png's compressed bytes: inflating fails or the CRC check does
    archive.write_bytes(bytes(data))
    monkeypatch.setattr(fsd.sources.archives, "MAX_MEMBER_BYTES", 4096)
    source = fsd.sources.ZipSource(archive)
    expected = {"crc.png": "cannot extract from the archive", "empty.png": "empty entry", "huge.png": "zip bomb",
                "text.png": "not an image"}
    ids, skipped, _ = read_all(source, skip=True)
    assert ids == [f"{archive}!good.png"]
    assert sorted(p for p, _ in skipped) == sorted(f"{archive}!{name}" for name in expected)
    for path, reason in skipped:
        assert re.search(expected[path.rsplit("!", 1)[1]], reason), reason

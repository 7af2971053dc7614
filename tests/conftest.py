"""Shared fixtures: tiny image folders and a cheap segmenter that follows the protocol."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fsd.segmenters.base import PAPER_PREPROCESSING, Preprocessing


class ColorSegmenter:
    """A cheap stand-in for a real segmenter: each pixel's label is its brightest channel (1, 2, 3),
    or 0 where the pixel is dark. Deterministic, runs anywhere, follows the protocol."""

    name = "color-demo"
    weights_id = "none"

    def __init__(self, size: int = 256):
        self.class_names = ["-", "red", "green", "blue"]
        self.preprocessing = Preprocessing("rgb", size, "bilinear") if size != 256 else PAPER_PREPROCESSING
        self.calls = 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        images = images.long()
        labels = images.argmax(dim=1) + 1
        labels[images.max(dim=1).values < 40] = 0
        return labels


class LocalFiles(http.server.ThreadingHTTPServer):
    """A local file server for download tests: ``routes`` maps a path to its body (bytes, served as a file)
    or to ``(mode, body)`` with mode ``"ok"``, ``"html"`` (served as text/html) or ``"404"``; ``requests``
    lists the paths asked for, in order; ``base`` is the URL of the root (plus the prefix it was made with)."""

    routes: dict[str, bytes | tuple[str, bytes]]
    requests: list[str]
    base: str


class _LocalFilesHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        self.server.requests.append(self.path)
        route = self.server.routes.get(self.path, ("404", b""))
        mode, body = ("ok", route) if isinstance(route, bytes) else route
        if mode == "404":
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html" if mode == "html" else "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def local_files(prefix: str = "") -> Iterator[LocalFiles]:
    """A running `LocalFiles` on 127.0.0.1, shut down after the block."""
    httpd = LocalFiles(("127.0.0.1", 0), _LocalFilesHandler)
    httpd.routes, httpd.requests = {}, []
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}{prefix}"
    with serving(httpd):
        yield httpd


@contextmanager
def serving(httpd):
    """Serve ``httpd`` (a local test server) on a daemon thread for the duration of the block."""
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks run fastest on one thread; on a busy 2-core machine more threads spin and stall.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def color_segmenter():
    return ColorSegmenter()


def random_photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth, photo-like RGB image: random blobs of colour, upsampled."""
    small = rng.integers(0, 256, size=(max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)


def write_folder(root: Path, count: int, seed: int, sizes=((300, 260), (256, 256), (200, 380))) -> list[Path]:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        w, h = sizes[i % len(sizes)]
        path = root / f"img_{i:03d}.{'png' if i % 2 else 'jpg'}"
        random_photo(rng, w, h).save(path, quality=95)
        paths.append(path)
    return paths


@pytest.fixture
def image_folders(tmp_path):
    """Two small folders of photo-like images (real: 12 images, fake: 10 images)."""
    real, fake = tmp_path / "real", tmp_path / "fake"
    write_folder(real, 12, seed=0)
    write_folder(fake, 10, seed=1)
    return real, fake


def write_label_folder(folder: Path, count: int, classes: int, seed: int, size=(32, 32)) -> Path:
    """``count`` random label maps (PNG, values < ``classes``) named ``0.png``, ``1.png``, ... in ``folder``."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for k in range(count):
        Image.fromarray(rng.integers(0, classes, size, dtype=np.uint8)).save(folder / f"{k}.png")
    return folder


def stats_of(source, segmenter, **options):
    """`fsd.compute_stats` in the main process, without progress bars."""
    import fsd

    return fsd.compute_stats(source, segmenter=segmenter, **{"num_workers": 0, "progress": False, **options})


def assert_same_sums(stats, expected) -> None:
    """The same number of images and the same exact integer sums."""
    assert stats.n == expected.n
    assert np.array_equal(stats.count_sum, expected.count_sum)
    assert np.array_equal(stats.count_outer_sum, expected.count_outer_sum)

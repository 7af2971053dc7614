"""Shared fixtures: tiny image folders and a cheap segmenter that follows the protocol."""

from __future__ import annotations

import threading
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

"""Shared pieces of the benchmarks: a segmenter with synthetic weights, a folder of LSUN-like JPEGs,
timing with medians, and the description of the machine the figures come from.

The published weights cannot be fetched here, so every benchmark runs the exact architecture with the
random, batch-norm-calibrated weights of ``tests/synthetic.py``: speed does not depend on weight values.
Label agreement between modes is measured on the same random weights; those give far less decisive
logits than a trained segmenter, so the agreement figures are a pessimistic check, not the real numbers.
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from fsd.segmenters.upp import UPPSegmenter  # noqa: E402
from tests.synthetic import synthetic_upp_segmenter  # noqa: E402

# LSUN church/bedroom images are stored with the shorter side 256; the long side varies.
LSUN_LIKE_SIZES = ((341, 256), (256, 341), (384, 256), (256, 256), (455, 256), (256, 320))


def build_segmenter(device: str | torch.device, precision: str = "float32", seed: int = 0,
                    weights_dir: Path | None = None) -> UPPSegmenter:
    """The paper's segmenter with the published weights found in ``weights_dir`` (holding
    ``upp-resnet50-upernet/``), or by default the synthetic weights of ``tests/synthetic.py``."""
    if weights_dir is not None:
        return UPPSegmenter.from_pretrained(weights_dir=weights_dir, device=device, progress=False,
                                            precision=precision)  # type: ignore[arg-type]
    return synthetic_upp_segmenter(seed=seed, device=device, precision=precision)


def photo_like(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth colour regions with texture: decodes like a photograph (not a flat or pure-noise image)."""
    small = rng.integers(0, 256, size=(max(2, height // 24), max(2, width // 24), 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC), np.int16)
    texture = rng.normal(0, 12, size=(height, width, 1))
    return Image.fromarray(np.clip(image + texture, 0, 255).astype(np.uint8))


def write_jpeg_folder(folder: Path, count: int, seed: int = 0, quality: int = 85) -> Path:
    """``count`` JPEGs of LSUN-like sizes in ``folder`` (kept if already there with that many files).

    Written into ``<folder>.part`` and renamed when complete, so a run stopped midway (gpu.sh stops a
    section at its time limit) never leaves a folder of the right count holding a truncated file."""
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == count:
        return folder
    partial = folder.with_name(folder.name + ".part")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        width, height = LSUN_LIKE_SIZES[i % len(LSUN_LIKE_SIZES)]
        photo_like(rng, width, height).save(partial / f"img_{i:05d}.jpg", quality=quality)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def synthetic_batch(count: int, seed: int) -> torch.Tensor:
    """Preprocessed uint8 ``(count, 3, 256, 256)`` photo-like images, without touching the disk."""
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(photo_like(rng, 256, 256)).transpose(2, 0, 1) for _ in range(count)]
    return torch.from_numpy(np.ascontiguousarray(np.stack(arrays)))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """Seconds of each repeat; ``items`` processed per repeat."""

    seconds: tuple[float, ...]
    items: int

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def per_second(self) -> float:
        return self.items / self.median

    def describe(self) -> str:
        spread = f" (runs {min(self.seconds):.2f}-{max(self.seconds):.2f} s)" if len(self.seconds) > 1 else ""
        return f"{self.per_second:8.2f} img/s  median {self.median:.2f} s for {self.items}{spread}"


def time_it(run: Callable[[], object], items: int, repeats: int, device: torch.device,
            warmup: bool = True) -> Timing:
    """Median wall time of ``repeats`` calls of ``run`` (after one untimed call when ``warmup``)."""
    if warmup:
        run()
        synchronize(device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return Timing(tuple(seconds), items)


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class PeakGrowth:
    """``with PeakGrowth() as peak: ...``; then ``peak.mb``: how far the resident set rose above its size
    at the start (Linux: the reset ``VmHWM``; elsewhere ``ru_maxrss``, which may hide small steps)."""

    method = "VmHWM"

    def __enter__(self) -> PeakGrowth:
        self.before = _status_mb("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets the peak to the current resident set
        except OSError:
            self.before = None
        if self.before is None:
            PeakGrowth.method = "ru_maxrss"
            self.before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return self

    def __exit__(self, *exc) -> None:
        peak = _status_mb("VmHWM") if self.method == "VmHWM" else None
        if peak is None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.mb = max(0.0, peak - self.before)


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def software_versions() -> str:
    """The versions this very process runs with (Python, torch, torchvision, NumPy, Pillow, fsd)."""
    import PIL
    import torchvision

    import fsd

    cuda = f" (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})" if torch.cuda.is_available() else ""
    return (f"python {platform.python_version()}, torch {torch.__version__}{cuda}, torchvision {torchvision.__version__}, "
            f"numpy {np.__version__}, pillow {PIL.__version__}, fsd {fsd.__version__}")


def machine_description(device: torch.device) -> str:
    """CPU model and cores, GPU if used, the software versions of this run, threads, and the load."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    lines = [
        f"cpu: {cpu}, {cores} cores available, torch with {torch.get_num_threads()} threads",
        f"software: {software_versions()}",
        f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        f"load average (1, 5, 15 min) at start: {load_average()}",
    ]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        if commit:
            lines.append(f"repository at {commit} (plus uncommitted changes, if any)")
    except (OSError, subprocess.SubprocessError):
        pass
    return "\n".join(lines)


def pick_device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def identical_fraction(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of pixels with the same label."""
    return float((a == b).double().mean())

"""Make docs/set-report.png, the README's picture of the set report, from a synthetic run.

    python docs/make_screenshot.py docs/set-report.png

The images are drawn street scenes (sky, building, tree, road, people, cars) in flat colours, and the
segmenter reads each pixel's class from its colour, so the run needs no weights and no data. The
"generated" set draws fewer people and more sky, as a GAN that drops people would. The page is
written by `fsd.write_html` and photographed in headless Chromium (Debian's ``chromium`` and
``chromium-driver``): the top of the page, and the section of the top omission.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import fsd
from fsd.segmenters.base import Preprocessing

CLASSES = ["-", "sky", "building", "tree", "road", "grass", "person", "car"]
COLORS = np.array([(0, 0, 0), (135, 190, 235), (150, 120, 100), (40, 120, 40), (90, 90, 95),
                   (110, 190, 80), (220, 60, 60), (240, 200, 30)], np.uint8)
SIZE = 96


class ColourSegmenter:
    """Each pixel's class is the nearest of the scene colours."""

    name = "scene-colours"
    weights_id = "none"
    class_names = CLASSES
    num_classes = len(CLASSES)
    device = torch.device("cpu")
    preprocessing = Preprocessing("rgb", SIZE, "bilinear")

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.permute(0, 2, 3, 1).float()[..., None, :]            # (n, h, w, 1, 3)
        distance = ((pixels - torch.from_numpy(COLORS).float()) ** 2).sum(-1)  # (n, h, w, classes)
        return distance.argmin(-1)


def scene(rng: np.random.Generator, people: float, sky: float) -> np.ndarray:
    image = np.empty((SIZE, SIZE, 3), np.uint8)
    horizon = int(SIZE * rng.uniform(0.8, 1.2) * sky)
    image[:horizon] = COLORS[1]
    image[horizon:] = COLORS[5]
    image[int(SIZE * 0.75):] = COLORS[4]
    for _ in range(rng.integers(1, 4)):                                  # buildings
        x, w = rng.integers(0, SIZE - 20), rng.integers(15, 35)
        top = rng.integers(max(horizon - 40, 5), max(horizon, 6))
        image[top:int(SIZE * 0.75), x:x + w] = COLORS[2]
    for _ in range(rng.integers(0, 3)):                                  # trees
        x = rng.integers(0, SIZE - 12)
        image[horizon - 10:int(SIZE * 0.72), x:x + 12] = COLORS[3]
    for _ in range(rng.poisson(people)):                                # people
        x, y = rng.integers(0, SIZE - 6), rng.integers(int(SIZE * 0.55), int(SIZE * 0.8))
        image[y:y + 16, x:x + 6] = COLORS[6]
    if rng.random() < 0.6:                                               # a car
        x = rng.integers(0, SIZE - 24)
        image[int(SIZE * 0.78):int(SIZE * 0.9), x:x + 24] = COLORS[7]
    return image


def write_set(folder: Path, seed: int, n: int, people: float, sky: float) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for k in range(n):
        Image.fromarray(scene(rng, people, sky)).save(folder / f"{k:03d}.png")
    return folder


def photograph(index: Path, anchor: str) -> Image.Image:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,1000",
                     "--hide-scrollbars"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(index.resolve().as_uri())
        top = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
        driver.execute_script("document.getElementById(arguments[0]).scrollIntoView()", anchor)
        section = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    finally:
        driver.quit()
    section = section.crop((0, 0, section.width, section.height * 5 // 8))
    both = Image.new("RGB", (top.width, top.height + section.height + 6), (200, 200, 200))
    both.paste(top, (0, 0))
    both.paste(section, (0, top.height + 6))
    return both.resize((both.width * 3 // 4, both.height * 3 // 4), Image.LANCZOS)


def main(out: str) -> None:
    out_path = Path(out).resolve()
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the page names the sets as the command line gave them: real/, generated/
        try:
            write_set(Path("real"), 0, 300, people=3.0, sky=0.35)
            write_set(Path("generated"), 1, 300, people=0.6, sky=0.5)
            segmenter = ColourSegmenter()
            result = fsd.compute("real", "generated", segmenter=segmenter, num_workers=0, progress=False)
            index = fsd.write_html(result, "page", segmenter=segmenter,
                                   command="python -m fsd real generated --html page")
            picture = photograph(Path(tmp) / index, "person")
        finally:
            os.chdir(here)
    out = str(out_path)
    buffer = io.BytesIO()
    picture.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(buffer, "PNG", optimize=True)
    Path(out).write_bytes(buffer.getvalue())
    print(f"{out}: {picture.width}x{picture.height}, {len(buffer.getvalue()) / 1024:.0f} KiB")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/set-report.png")

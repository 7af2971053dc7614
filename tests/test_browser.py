"""Every HTML page the package writes, opened from ``file://`` in a real browser (headless Chromium).

The set report (`fsd.write_html`: a single run, its example views, a comparison) and the inversion
report (`fsd.invert`) are checked alike: every image has loaded, the console holds no error, no request
leaves ``file://``, a click on a column header reorders the table, and the example sections hold what
they promise.

The browser is Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium
chromium-driver``; CI installs them). When either is missing these tests fail and say how to install
them; ``FSD_SKIP_BROWSER=1`` turns that into a skip for a checkout without a browser.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

import fsd
from fsd.invert.inversion import InversionConfig
from fsd.invert.omissions import ReportOptions, invert_folder
from fsd.report import class_report
from fsd.set_page import write_html
from tests.conftest import ColorSegmenter, write_folder
from tests.test_omissions import tiny_setup
from tests.test_set_page import make_kind, scenes, write_pngs

M = 3

pytestmark = pytest.mark.usefixtures("one_thread")


def _find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or (name if os.path.isabs(name) and os.access(name, os.X_OK) else None)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module, logging the console and every network request."""
    chromium = _find(os.environ.get("FSD_CHROMIUM", "chromium"), "chromium-browser", "/usr/lib/chromium/chromium")
    driver_path = _find(os.environ.get("FSD_CHROMEDRIVER", "chromedriver"), "/usr/lib/chromium/chromedriver")
    missing = [what for what, path in (("chromium", chromium), ("chromedriver", driver_path)) if path is None]
    if missing:
        message = (f"the browser tests need {' and '.join(missing)}: install Debian's packages with "
                   "`apt-get install chromium chromium-driver` (or set FSD_CHROMIUM / FSD_CHROMEDRIVER to the "
                   "binaries); set FSD_SKIP_BROWSER=1 to skip these tests instead")
        if os.environ.get("FSD_SKIP_BROWSER") == "1":
            pytest.skip(message)
        pytest.fail(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900", "--allow-file-access-from-files"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver, path: Path) -> None:
    driver.get_log("browser")  # drop what earlier pages left
    driver.get_log("performance")
    driver.get(path.resolve().as_uri())


def images_loaded(driver) -> list[dict]:
    """Every ``<img>`` of the page, each scrolled into view (lazy ones load then) and waited for."""
    count = driver.execute_script("return document.images.length")
    for k in range(count):
        driver.execute_script("document.images[arguments[0]].scrollIntoView()", k)
    deadline = time.monotonic() + 30
    while True:
        state = driver.execute_script(
            "return Array.prototype.map.call(document.images, function (i) {"
            " return {src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth}; })")
        if all(s["complete"] for s in state) or time.monotonic() > deadline:
            return state
        time.sleep(0.1)


def check_page(driver, path: Path) -> dict:
    """Open ``path`` and assert what every page must hold; return the page's images and requests."""
    open_page(driver, path)
    state = images_loaded(driver)
    assert state, f"{path.name} shows no image"
    broken = [s["src"] for s in state if not (s["complete"] and s["width"] > 0)]
    assert not broken, f"{path.name}: images that did not load: {broken}"
    errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert not errors, f"{path.name}: console errors: {errors}"
    requests = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            requests.append(message["params"]["request"]["url"])
    # The log does see the page's own requests (so an empty check cannot pass by seeing nothing) ...
    assert path.resolve().as_uri() in requests, requests
    # ... and every one of them stays on the disk.
    outside = [url for url in requests if not url.startswith(("file://", "data:", "about:"))]
    assert not outside, f"{path.name} makes requests that leave file://: {outside}"
    return {"images": [s["src"] for s in state], "requests": requests}


def column(driver, table_id: str, index: int) -> list[str]:
    return driver.execute_script(
        "var index = arguments[1];"
        "return Array.prototype.map.call(document.getElementById(arguments[0]).tBodies[0].rows,"
        " function (r) { var c = r.cells[index];"
        " return c.hasAttribute('data-sort') ? c.getAttribute('data-sort') : c.textContent.trim(); });",
        table_id, index)


def headers(driver, table_id: str) -> list[str]:
    return driver.execute_script(
        "return Array.prototype.map.call(document.querySelectorAll('#' + arguments[0] + ' thead th'),"
        " function (th) { return th.textContent.trim(); });", table_id)


def click_header(driver, table_id: str, index: int) -> None:
    driver.execute_script("document.querySelectorAll('#' + arguments[0] + ' thead th')[arguments[1]].click()",
                          table_id, index)


def check_sorting(driver, table_id: str, numeric_column: int) -> None:
    """A click on a numeric column's header sorts the rows ascending by it, a second click descending; the
    rows move together (the first column follows)."""
    before_names = column(driver, table_id, 0)
    keys = [float(v) for v in column(driver, table_id, numeric_column) if v != ""]
    assert len(set(keys)) > 1, f"column {numeric_column} of #{table_id} cannot show a reordering"
    pairs = dict(zip(before_names, column(driver, table_id, numeric_column)))
    for clicks, descending in ((1, False), (2, True)):
        click_header(driver, table_id, numeric_column)
        after = [float(v) for v in column(driver, table_id, numeric_column) if v != ""]
        assert after == sorted(keys, reverse=descending), (clicks, after)
        names = column(driver, table_id, 0)
        assert sorted(names) == sorted(before_names)
        assert dict(zip(names, column(driver, table_id, numeric_column))) == pairs  # whole rows moved


def section_examples(driver, anchor: str) -> dict[str, int]:
    """Heading -> number of example thumbnails, for the section ``#anchor``."""
    return driver.execute_script(
        "var out = {}; var s = document.getElementById(arguments[0]);"
        "s.querySelectorAll('h4').forEach(function (h) { var d = h.nextElementSibling;"
        " out[h.textContent] = d && d.classList.contains('examples') ?"
        " d.querySelectorAll('figure.example img').length : 0; }); return out;", anchor)


# -- the set report ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def set_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser-set")
    real = write_pngs(root / "real", scenes(0, 0.6))
    fake, _ = make_kind("folder", root)
    segmenter = ColorSegmenter(size=32)
    options = dict(segmenter=segmenter, num_workers=0, progress=False, bootstrap=200)
    result = fsd.compute(str(real), fake, **options)
    index = write_html(result, root / "page", segmenter=segmenter, examples=M, command="fsd real fake --html page")
    return root, real, fake, segmenter, result, index


def test_the_set_page_in_a_browser(browser, set_run):
    _, _, _, _, result, index = set_run
    seen = check_page(browser, index)
    assert "figure.svg" in seen["images"]
    assert any(url.endswith("/figure.svg") for url in seen["requests"])
    # The class table: sortable by a click, filterable by name (the script runs: the box is shown).
    assert headers(browser, "class-table")[0].startswith("class")
    check_sorting(browser, "class-table", 1)
    box = browser.find_element("css selector", 'input[data-filter="class-table"]')
    assert box.is_displayed()
    box.send_keys("red")
    shown = browser.execute_script(
        "return Array.prototype.filter.call(document.getElementById('class-table').tBodies[0].rows,"
        " function (r) { return !r.hidden; }).map(function (r) { return r.cells[0].textContent.trim(); });")
    assert shown and all("red" in name for name in shown)
    # The top omitted class: M real and M generated examples, and the anchor a link can point at.
    top = class_report(result.real, result.fake).notable_changes()[0][0]
    assert top.name == "red"
    counts = section_examples(browser, "red")
    assert counts == {"Real images with the most red": M, "Generated images with the most red": M}
    browser.get(index.resolve().as_uri() + "#red")
    assert browser.execute_script("return document.getElementById('red').getBoundingClientRect().top") < 200


def test_an_example_view_in_a_browser(browser, set_run):
    _, _, _, _, _, index = set_run
    views = sorted((index.parent / "examples").glob("*.html"))
    assert len(views) >= 2 * M
    for view in (views[0], views[-1]):
        seen = check_page(browser, view)
        assert len(seen["images"]) >= 2  # the image and its segmentation
        assert "legend" in browser.page_source


def test_the_comparison_page_in_a_browser(browser, set_run, tmp_path):
    root, real, fake, segmenter, _, _ = set_run
    other = write_pngs(tmp_path / "other", scenes(2, 0.4))
    comparison = fsd.compare(str(real), [fake, str(other)], names=["A", "B"], segmenter=segmenter,
                             num_workers=0, progress=False, bootstrap=200)
    index = write_html(comparison, tmp_path / "page", segmenter=segmenter, examples=M)
    check_page(browser, index)
    assert headers(browser, "models")[0].lower().startswith("model")
    check_sorting(browser, "models", 2)  # by FSD
    assert browser.find_element("id", "pairs").is_displayed()
    counts = section_examples(browser, "a-red")
    assert counts == {"Real images with the most red": M, "A images with the most red": M}


# -- the inversion report ----------------------------------------------------------------------------

def test_the_inversion_page_in_a_browser(browser, tmp_path):
    write_folder(tmp_path / "photos", 4, seed=0)
    generator, encoder, features = tiny_setup()
    out = tmp_path / "out"
    result = invert_folder(tmp_path / "photos", out, generator=generator, start=encoder,
                           segmenter=ColorSegmenter(), features=features, config=InversionConfig(steps=1),
                           options=ReportOptions(rank_by=("red",), min_loss=0.01), progress=False)
    seen = check_page(browser, out / "index.html")
    assert {f"panels/{name}.png" for name in result.names} <= set(seen["images"])
    # The lost-classes table sorts by a click like the set page's.
    assert headers(browser, "lost-classes")[:2] == ["#", "class"]
    rows = column(browser, "lost-classes", 0)
    assert len(rows) >= 2, "the synthetic run should lose more than one class"
    check_sorting(browser, "lost-classes", 3)
    # The ranking of the top lost class lists every photo that holds it, each linking to its panel.
    ranking = browser.execute_script(
        "var s = document.getElementById(arguments[0]); var list = s.nextElementSibling.nextElementSibling;"
        "return Array.prototype.map.call(list.querySelectorAll('li a'), function (a) {"
        " return a.getAttribute('href'); });", f"ranking-{result.report.class_names.index('red')}")
    assert ranking and all(href.startswith("#photo-") for href in ranking)
    for href in ranking:
        assert browser.execute_script("return document.getElementById(arguments[0]) !== null", href[1:])

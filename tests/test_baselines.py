"""Published baselines by name: download from a local HTTP server, conversion, cache, offline rules."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import fsd
import fsd.cli
from fsd import baselines
from fsd.errors import WeightsError
from fsd.segmenters.base import PAPER_PREPROCESSING
from fsd.stats import Stats, StatsMeta
from tests.conftest import LocalFiles, local_files, write_folder
from tests.synthetic import synthetic_labels

C = 336
P = 256 * 256


@pytest.fixture
def server() -> Iterator[LocalFiles]:
    with local_files("/seeing") as httpd:
        yield httpd


def tally(n: int, seed: int) -> np.ndarray:
    """Per-image fractions like the authors' files: whole pixel counts out of 65536, a few classes each."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((n, C), np.int64)
    for row in counts:
        classes = rng.choice(C, size=rng.integers(1, 6), replace=False)
        cuts = np.sort(rng.integers(0, P, size=len(classes) - 1))
        row[classes] = np.diff(np.concatenate([[0], cuts, [P]]))
    return counts / P


def npy_bytes(array: np.ndarray, tmp_path: Path) -> bytes:
    path = tmp_path / "tally.npy"
    np.save(path, array)
    return path.read_bytes()


@pytest.fixture
def cache(tmp_path, monkeypatch, server) -> Path:
    """An empty cache holding only the segmenter's labels.json, and baselines served by the local server."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FSD_CACHE_DIR", str(cache))
    monkeypatch.delenv("FSD_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("FSD_OFFLINE", raising=False)
    (cache / "upp-resnet50-upernet").mkdir(parents=True)
    (cache / "upp-resnet50-upernet" / "labels.json").write_text(json.dumps(synthetic_labels()))
    local = dataclasses.replace(baselines.LSUN_TALLIES, mirrors=(server.base,))
    for name in ("lsun_church", "lsun_bedroom"):
        # The real files declare min_bytes for 10,000 rows; the served ones are small.
        small = dataclasses.replace(local, files=tuple(baselines.RemoteFile(f.name) for f in local.files))
        monkeypatch.setitem(baselines.BASELINES, name, dataclasses.replace(baselines.BASELINES[name], artifact=small))
    return cache


def upp_meta() -> StatsMeta:
    from fsd.segmenters.upp import UPP_NAME, UPP_WEIGHTS_ID

    return StatsMeta(tuple(synthetic_labels()["object"]), UPP_NAME, UPP_WEIGHTS_ID, PAPER_PREPROCESSING.describe(),
                     fsd.__version__, "test")


@pytest.mark.filterwarnings("ignore:the (real|fake) set has")
def test_baseline_is_downloaded_converted_cached_and_used_by_name(cache, server, tmp_path):
    fractions = tally(12, seed=0)
    server.routes["/seeing/" + baselines.CHURCH_FILE] = npy_bytes(fractions, tmp_path)
    stats = fsd.load_baseline("lsun_church", progress=False)
    assert stats.n == 12 and stats.pixels_per_image == P
    np.testing.assert_allclose(stats.mu, fractions.mean(axis=0) * 100, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(fractions * 100, rowvar=False), rtol=1e-9, atol=1e-9)
    assert stats.class_names == tuple(synthetic_labels()["object"])
    assert server.base + "/" + baselines.CHURCH_FILE in stats.meta.source and "seed 1" in stats.meta.source
    cached = list((cache / "baselines").glob("lsun_church-*.npz"))
    assert len(cached) == 1 and Stats.load(cached[0]).meta.source == stats.meta.source
    assert not [p for p in cache.rglob(".*") if p.name.endswith(".part")]

    # the name works wherever a source does; later uses are served from the cache, offline too
    other = Stats(upp_meta(), P)
    other.update(np.rint(tally(9, seed=1) * P).astype(np.int64))
    requests = len(server.requests)
    result = fsd.compute("lsun_church", other, progress=False)
    direct = fsd.frechet_distance(stats.mu, stats.sigma, other.mu, other.sigma)
    assert result.fsd == pytest.approx(direct.value, rel=1e-12) and result.real.n == 12
    assert fsd.compute_stats("lsun_church", progress=False).n == 12
    assert len(server.requests) == requests
    server.routes.clear()
    assert fsd.load_baseline("lsun_church", progress=False, offline=True).n == 12


def test_an_existing_path_of_that_name_wins(cache, server, tmp_path, monkeypatch, color_segmenter):
    monkeypatch.chdir(tmp_path)
    write_folder(tmp_path / "lsun_church", 3, seed=0)
    stats = fsd.compute_stats("lsun_church", segmenter=color_segmenter, num_workers=0, progress=False)
    assert stats.n == 3 and stats.meta.source == "lsun_church"
    assert server.requests == []


def test_offline_or_unreachable_names_the_file_and_where_to_put_it(cache, server, monkeypatch):
    monkeypatch.setenv("FSD_OFFLINE", "1")
    with pytest.raises(WeightsError, match=baselines.BEDROOM_FILE) as info:
        fsd.load_baseline("lsun_bedroom", progress=False)
    assert "seeing-baselines" in str(info.value)
    monkeypatch.delenv("FSD_OFFLINE")
    with pytest.raises(fsd.DownloadError, match="404"):
        fsd.load_baseline("lsun_bedroom", progress=False)
    assert not (cache / "seeing-baselines" / baselines.BEDROOM_FILE).exists()


@pytest.mark.parametrize("body, message", [
    (b"<html>not found</html>", "the server sent an HTML page, not datasets_lsun_church"),
    (b"\x93NUMPY broken", "not a .npy"),
    ("wrong_shape", r"shape \(4, 10\)"),
    ("not_whole_pixels", "whole pixels"),
])
def test_a_bad_tally_is_refused(cache, server, tmp_path, body, message):
    if body == "wrong_shape":
        body = npy_bytes(np.full((4, 10), 0.1), tmp_path)
    elif body == "not_whole_pixels":
        body = npy_bytes(np.full((4, C), 1.0 / C), tmp_path)
    server.routes["/seeing/" + baselines.CHURCH_FILE] = body
    with pytest.raises(WeightsError, match=message):
        fsd.load_baseline("lsun_church", progress=False)
    assert not (cache / "baselines").exists() or not list((cache / "baselines").iterdir())


def test_zero_rows_of_the_original_code_are_dropped(cache, server, tmp_path):
    fractions = tally(6, seed=3)
    fractions[[1, 4]] = 0.0
    server.routes["/seeing/" + baselines.CHURCH_FILE] = npy_bytes(fractions, tmp_path)
    with pytest.warns(UserWarning, match="dropped 2 all-zero rows"):
        stats = fsd.load_baseline("lsun_church", progress=False)
    assert stats.n == 4


def test_metadata_matches_the_upp_segmenter():
    """A baseline must compare with statistics the UPP segmenter makes (same names, weights, preprocessing)."""
    from fsd.api import _meta_for
    from fsd.segmenters.upernet import ResNet50DeepStem, UPerNetDecoder
    from fsd.segmenters.upp import UPPSegmenter

    with torch.device("meta"):  # the architecture without its memory or initialization cost
        seg = UPPSegmenter(ResNet50DeepStem(), UPerNetDecoder(), synthetic_labels(), device="meta")
    baseline = baselines.stats_from_tally(tally(3, seed=0), tuple(synthetic_labels()["object"]), "test")
    baseline.meta.check_comparable(_meta_for(seg, "generated"))


def test_cli_accepts_baseline_names(cache, server, tmp_path):
    server.routes["/seeing/" + baselines.CHURCH_FILE] = npy_bytes(tally(10, seed=0), tmp_path)
    server.routes["/seeing/" + baselines.BEDROOM_FILE] = npy_bytes(tally(8, seed=1), tmp_path)
    result = CliRunner().invoke(fsd.cli.cli, ["lsun_church", "lsun_bedroom", "-q", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    church, bedroom = (fsd.load_baseline(n, progress=False) for n in ("lsun_church", "lsun_bedroom"))
    assert payload["fsd"] == pytest.approx(fsd.distance(church, bedroom).fsd, rel=1e-12)
    assert payload["real"]["n"] == 10 and "lsun_church" in payload["real"]["source"]
    report = CliRunner().invoke(fsd.cli.cli, ["report", "lsun_church", "lsun_bedroom", "--json"])
    assert report.exit_code == 0, report.output
    assert json.loads(report.stdout)["fsd"] == payload["fsd"]

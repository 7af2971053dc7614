"""`fsd weights download | verify | where`, user mirrors and stamps, against local HTTP servers only."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import fsd
import fsd.invert
import fsd.weights
from fsd import baselines, hub
from fsd.cli import cli
from fsd.errors import DownloadError, InputError, WeightsError
from fsd.hub import Artifact, RemoteFile, fetch
from fsd.invert.encoder import HybridEncoder
from fsd.invert.proggan import ProGAN, standard_channels
from fsd.invert.weights import PROGGAN_ARTIFACTS
from fsd.segmenters.weights import DECODER_FILE, ENCODER_FILE, LABELS_FILE, UPP_NAME
from tests.conftest import LocalFiles, local_files, serving
from tests.synthetic import synthetic_labels, write_upp_weights

# The modules themselves, for monkeypatching (fsd.invert.encoder is also the name of a function).
encoder_module = sys.modules["fsd.invert.encoder"]
generator_module = sys.modules["fsd.invert.weights"]

PROGGAN_FILE = PROGGAN_ARTIFACTS["church"].files[0].name
ENCODER_NAME = "church_invert_hybrid_cse-43e52428.pth"
CHURCH, BEDROOM = baselines.CHURCH_FILE, baselines.BEDROOM_FILE


@pytest.fixture
def server() -> Iterator[LocalFiles]:
    with local_files() as httpd:
        yield httpd


@pytest.fixture(autouse=True)
def no_outside_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Any URL not on 127.0.0.1 (the published mirrors) fails at once, as it would on a compute node."""
    refused: list[str] = []
    real = hub.urllib.request.urlopen

    def local_only(request: urllib.request.Request, timeout: float) -> object:
        if urllib.parse.urlsplit(request.full_url).hostname != "127.0.0.1":
            refused.append(request.full_url)
            raise urllib.error.URLError("no outside network in tests")
        return real(request, timeout=timeout)

    monkeypatch.setattr(hub.urllib.request, "urlopen", local_only)
    return refused


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("FSD_CACHE_DIR", str(cache))
    for name in ("FSD_WEIGHTS_DIR", "FSD_OFFLINE", "FSD_MIRRORS", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    return cache


def tiny_generator(seed: int) -> ProGAN:
    torch.manual_seed(seed)
    return ProGAN([4] * len(standard_channels(256)), z_dim=8).eval()  # 256 px, a few thousand parameters


def tiny_encoder(seed: int) -> HybridEncoder:
    torch.manual_seed(seed)
    return HybridEncoder(z_dim=16, layer_channels=(16, 16, 12, 12), width=8).eval()


def saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def tally_bytes(rows: int) -> bytes:
    fractions = np.zeros((rows, baselines.TALLY_CLASSES))
    fractions[np.arange(rows), np.arange(rows) % 7 + 1] = 0.5
    fractions[:, 0] = 0.5
    buffer = io.BytesIO()
    np.save(buffer, fractions)
    return buffer.getvalue()


@pytest.fixture
def declared(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small stand-ins for what cannot be synthesized: a tally with few rows, generator and encoder files
    without the published hash prefix (no synthetic file matches it). Names, layout and structural checks
    stay the published ones."""
    small = dataclasses.replace(baselines.LSUN_TALLIES, files=(RemoteFile(CHURCH), RemoteFile(BEDROOM)))
    for name in ("lsun_church", "lsun_bedroom"):
        monkeypatch.setitem(baselines.BASELINES, name, dataclasses.replace(baselines.BASELINES[name], artifact=small))
    church = dataclasses.replace(PROGGAN_ARTIFACTS["church"], files=(RemoteFile(PROGGAN_FILE, min_bytes=1000),))
    monkeypatch.setattr(generator_module, "PROGGAN_ARTIFACTS", MappingProxyType({"church": church}))

    def verify_encoder(path: Path, remote: RemoteFile) -> None:
        HybridEncoder.from_state_dict(torch.load(path, weights_only=True), source=remote.name)

    encoder = dataclasses.replace(encoder_module.ENCODER_ARTIFACTS["church"],
                                  files=(RemoteFile(ENCODER_NAME, min_bytes=1000),), verify=verify_encoder)
    monkeypatch.setattr(encoder_module, "ENCODER_ARTIFACTS", MappingProxyType({"church": encoder}))


def serve_mirror(server: LocalFiles, prefix: str = "/lab") -> str:
    """The small artifacts in the mirror layout BASE/<artifact>/<file>; returns BASE."""
    files = {
        f"{UPP_NAME}/{LABELS_FILE}": json.dumps(synthetic_labels()).encode(),
        f"seeing-baselines/{CHURCH}": tally_bytes(12),
        f"seeing-baselines/{BEDROOM}": tally_bytes(9),
        f"proggan-church/{PROGGAN_FILE}": saved(tiny_generator(1).state_dict()),
        f"encoder-church/{ENCODER_NAME}": saved(tiny_encoder(2).state_dict()),
    }
    for path, body in files.items():
        server.routes[f"{prefix}/{path}"] = ("ok", body)
    return server.base + prefix


def run(*args: object, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- download: every kind, into a folder --weights-dir then reads offline ---------------------------


@pytest.mark.parametrize("what", ["lsun_church", "lsun_bedroom", "proggan:church", "encoder:church"])
def test_download_each_kind_into_a_folder_read_offline(what, server, env, declared, tmp_path, monkeypatch):
    base = serve_mirror(server)
    store = tmp_path / "store"
    result = run("weights", "download", what, "--to", store, "--mirror", base, "--quiet")
    assert result.exit_code == 0, result.output
    expected = {
        "lsun_church": [f"seeing-baselines/{CHURCH}", f"{UPP_NAME}/{LABELS_FILE}"],
        "lsun_bedroom": [f"seeing-baselines/{BEDROOM}", f"{UPP_NAME}/{LABELS_FILE}"],
        "proggan:church": [f"proggan-church/{PROGGAN_FILE}"],
        "encoder:church": [f"encoder-church/{ENCODER_NAME}"],
    }[what]
    lines = result.stdout.splitlines()
    assert len(lines) == len(expected)
    for line, relative in zip(lines, expected):
        path = store / relative
        status, size, digest, shown = line.split()
        assert (status, int(size), digest, shown) == ("ok", path.stat().st_size, sha(path), str(path))
        assert json.loads((path.parent / f".{path.name}.verified").read_text())["sha256"] == digest
    assert sorted(p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file()
                  and not p.name.startswith(".")) == sorted(expected)

    server.shutdown()  # from here on there is no server at all
    monkeypatch.setenv("FSD_OFFLINE", "1")
    if what.startswith("lsun_"):
        stats = fsd.load_baseline(what, weights_dir=store, progress=False)
        assert stats.n == {"lsun_church": 12, "lsun_bedroom": 9}[what] and stats.meta.class_names[1] == "wall"
        # The command line reads the folder through --weights-dir the same way.
        result = run("report", what, what, "--weights-dir", store, "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["fsd"] == pytest.approx(0.0, abs=1e-9)
    elif what == "proggan:church":
        generator = fsd.invert.proggan("church", weights_dir=store, progress=False)
        z = torch.randn(1, 8)
        assert torch.equal(generator(z), tiny_generator(1)(z))
        result = run("sample", what, tmp_path / "samples", "-n", 1, "--weights-dir", store, "--device", "cpu",
                     "--quiet")
        assert result.exit_code == 0, result.output
        assert [p.name for p in (tmp_path / "samples").iterdir()] == ["000000.png"]
    else:
        model = fsd.invert.encoder("church", weights_dir=store, progress=False)
        assert model.architecture == tiny_encoder(2).architecture
    assert not env.exists() or not any(p.suffix == ".pth" for p in env.rglob("*"))


def test_download_the_segmenter_by_default_then_all_into_a_folder_read_offline(
    server, env, declared, tmp_path, monkeypatch
):
    published = write_upp_weights(tmp_path / "published")  # the exact architecture, random weights
    for name in (ENCODER_FILE, DECODER_FILE):
        server.routes[f"/lab/{UPP_NAME}/{name}"] = ("ok", (published / name).read_bytes())
    serve_mirror(server)  # labels.json (the synthetic one write_upp_weights writes), baselines, generator, encoder
    store = tmp_path / "store"
    monkeypatch.setenv("FSD_MIRRORS", server.base + "/lab")
    result = run("weights", "download", "--to", store, "--quiet")  # no WHAT: the segmenter
    assert result.exit_code == 0, result.output
    segmenter_files = [store / UPP_NAME / n for n in (ENCODER_FILE, DECODER_FILE, LABELS_FILE)]
    assert [line.split()[0::3] for line in result.stdout.splitlines()] == [["ok", str(p)] for p in segmenter_files]
    assert all(line.split()[2] == sha(p) for line, p in zip(result.stdout.splitlines(), segmenter_files))
    assert sha(store / UPP_NAME / ENCODER_FILE) == sha(published / ENCODER_FILE)
    assert f"--weights-dir {store}" in result.stderr

    asked = len(server.requests)
    result = run("weights", "download", "--all", "--to", store, "--quiet")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 7  # 3 segmenter files, 2 tallies, a generator, an encoder
    assert server.requests[asked:] == [f"/lab/seeing-baselines/{CHURCH}", f"/lab/seeing-baselines/{BEDROOM}",
                                       f"/lab/proggan-church/{PROGGAN_FILE}", f"/lab/encoder-church/{ENCODER_NAME}"]

    server.shutdown()  # from here on there is no server at all
    monkeypatch.setenv("FSD_OFFLINE", "1")
    monkeypatch.delenv("FSD_MIRRORS")
    reports = fsd.weights.download(to=store, progress=False)  # the Python default: the segmenter, all present
    assert [(r.status, r.path, r.sha256) for r in reports] == [("ok", p, sha(p)) for p in segmenter_files]
    from fsd.segmenters.upp import UPPSegmenter

    segmenter = UPPSegmenter.from_pretrained(weights_dir=store, progress=False)
    assert segmenter.num_classes == 336
    assert fsd.load_baseline("lsun_bedroom", weights_dir=store, progress=False).n == 9
    assert fsd.invert.encoder("church", weights_dir=store, progress=False).architecture == tiny_encoder(2).architecture
    assert [r.status for r in fsd.weights.verify(store)] == ["ok"] * 7
    assert not env.exists() or not any(p.suffix == ".pth" for p in env.rglob("*"))


def test_download_all_names_every_artifact_and_goes_on_after_a_failure(server, env, declared, tmp_path):
    base = serve_mirror(server)  # serves everything but the segmenter's two checkpoints
    result = run("weights", "download", "--all", "--to", tmp_path / "store", "--mirror", base, "--quiet")
    assert result.exit_code == 1
    assert "1 artifact of 4 not fetched" in result.stderr and "3 artifacts fetched" in result.stderr
    assert f"could not download {ENCODER_FILE} of {UPP_NAME}" in result.stderr
    for relative in (f"seeing-baselines/{CHURCH}", f"seeing-baselines/{BEDROOM}", f"proggan-church/{PROGGAN_FILE}",
                     f"encoder-church/{ENCODER_NAME}"):
        assert (tmp_path / "store" / relative).is_file()
    assert run("weights", "download", "--all", "segmenter").exit_code == 2  # WHAT or --all
    unknown = run("weights", "download", "proggan:cats")
    assert unknown.exit_code == 2 and "proggan:NAME takes one of: church" in unknown.stderr


def test_download_removes_stale_temporary_files(server, env, declared, tmp_path):
    base = serve_mirror(server)
    store = tmp_path / "store"
    assert run("weights", "download", "proggan:church", "--to", store, "--mirror", base).exit_code == 0
    stale = [store / "proggan-church" / f".{PROGGAN_FILE}.k1ll3d.part",  # a download killed mid-file
             store / "proggan-church" / f"..{PROGGAN_FILE}.verified.k1ll3d.part",  # ... while writing its stamp
             store / "encoder-church" / f".{ENCODER_NAME}.k1ll3d.part"]  # of an artifact not asked for
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a download")
    mine = store / "encoder-church" / "notes.part"  # not a temporary file of this package: kept
    mine.write_bytes(b"mine")
    result = run("weights", "verify", store)
    assert [line.split()[0] for line in result.stdout.splitlines() if ".k1ll3d." in line] == ["leftover"] * 3
    assert "`fsd weights download --to` this folder removes it" in result.stdout
    asked = len(server.requests)
    assert run("weights", "download", "proggan:church", "--to", store, "--mirror", base).exit_code == 0
    assert len(server.requests) == asked  # the generator was there: nothing downloaded, still cleaned up
    assert [path for path in stale if path.exists()] == []
    assert mine.read_bytes() == b"mine"


# ---- mirrors -------------------------------------------------------------------------------------


def toy(server: LocalFiles) -> Artifact:
    """An artifact whose published mirror is the local server's /published."""
    server.routes["/published/w.bin"] = ("ok", b"good bytes" * 100)
    return Artifact("toy", (RemoteFile("w.bin", sha256=hashlib.sha256(b"good bytes" * 100).hexdigest()),),
                    (server.base + "/published",))


def test_a_user_mirror_is_tried_first(server, env, monkeypatch):
    artifact = toy(server)
    server.routes["/lab/toy/w.bin"] = ("ok", b"good bytes" * 100)
    monkeypatch.setenv("FSD_MIRRORS", f"{server.base}/lab/")
    fetch(artifact, progress=False)
    assert server.requests == ["/lab/toy/w.bin"]
    folder = fetch(dataclasses.replace(artifact, name="toy2"), mirrors=[server.base + "/published"], progress=False)
    # The argument replaces $FSD_MIRRORS (no /lab request): its 404, then the published mirror.
    assert server.requests[1:] == ["/published/toy2/w.bin", "/published/w.bin"]
    assert (folder / "w.bin").read_bytes() == b"good bytes" * 100


@pytest.mark.parametrize("broken", ["404", "html", "wrong bytes", "refused"])
def test_a_broken_user_mirror_falls_back_to_the_published_ones(broken, server, env, monkeypatch):
    artifact = toy(server)
    if broken == "refused":
        mirror = "http://127.0.0.1:9/lab"  # the discard port: nothing listens
    else:
        mirror = server.base + "/lab"
        server.routes["/lab/toy/w.bin"] = {"404": ("404", b""), "html": ("html", b"<html>login</html>"),
                                           "wrong bytes": ("ok", b"evil bytes" * 100)}[broken]
    monkeypatch.setenv("FSD_MIRRORS", mirror)
    folder = fetch(artifact, progress=False)
    assert (folder / "w.bin").read_bytes() == b"good bytes" * 100
    assert server.requests[-1] == "/published/w.bin"


@pytest.mark.parametrize("how", ["--mirror", "$FSD_MIRRORS", "mirrors="])
def test_download_falls_back_from_a_broken_user_mirror_to_the_published_one(how, server, env, declared, tmp_path,
                                                                          monkeypatch):
    # The generator's published mirror is the local server's /published; the user's mirror answers 404.
    church = dataclasses.replace(generator_module.PROGGAN_ARTIFACTS["church"], mirrors=(server.base + "/published",))
    monkeypatch.setattr(generator_module, "PROGGAN_ARTIFACTS", MappingProxyType({"church": church}))
    body = saved(tiny_generator(1).state_dict())
    server.routes[f"/published/{PROGGAN_FILE}"] = ("ok", body)
    broken, store = server.base + "/lab", tmp_path / "store"
    if how == "--mirror":
        assert run("weights", "download", "proggan:church", "--to", store, "--mirror", broken).exit_code == 0
    elif how == "$FSD_MIRRORS":
        monkeypatch.setenv("FSD_MIRRORS", broken)
        assert run("weights", "download", "proggan:church", "--to", store).exit_code == 0
    else:
        fsd.weights.download("proggan:church", to=store, mirrors=[broken], progress=False)
    assert server.requests == [f"/lab/proggan-church/{PROGGAN_FILE}", f"/published/{PROGGAN_FILE}"]
    assert (store / "proggan-church" / PROGGAN_FILE).read_bytes() == body


def test_every_mirror_failing_lists_the_user_mirror_first(server, env, monkeypatch):
    artifact = toy(server)
    server.routes["/published/w.bin"] = ("html", b"<html>maintenance</html>")
    monkeypatch.setenv("FSD_MIRRORS", server.base + "/lab")
    with pytest.raises(DownloadError) as info:
        fetch(artifact, progress=False)
    message = str(info.value)
    assert message.index(f"{server.base}/lab/toy/w.bin: HTTP 404") < message.index(
        f"{server.base}/published/w.bin: the server sent an HTML page, not w.bin")


def test_bad_mirror_lists_are_refused(env, monkeypatch):
    monkeypatch.setenv("FSD_MIRRORS", "lab-server:/srv/fsd")
    with pytest.raises(InputError, match=r"\$FSD_MIRRORS: 'lab-server:/srv/fsd' is not an http\(s\) base URL"):
        fsd.weights.download("segmenter", progress=False)
    assert hub.user_mirrors(["http://a/x/", "https://b"]) == ("http://a/x", "https://b")
    assert hub.user_mirrors("http://a, http://b  http://c") == ("http://a", "http://b", "http://c")
    monkeypatch.setenv("FSD_MIRRORS", "")
    assert hub.user_mirrors() == ()


# ---- verify --------------------------------------------------------------------------------------


@pytest.fixture
def store(server, env, declared, tmp_path) -> Path:
    """A folder filled by `download` with the baselines, a generator and an encoder."""
    store = tmp_path / "store"
    fsd.weights.download("lsun_church", "lsun_bedroom", "proggan:church", "encoder:church", to=store,
                         mirrors=serve_mirror(server), progress=False)
    return store


def _verify_lines(result) -> dict[str, list[str]]:
    return {line.split()[3]: line.split(maxsplit=4) for line in result.stdout.splitlines()}


def test_verify_a_good_folder(store):
    result = run("weights", "verify", store)
    assert result.exit_code == 0, result.output
    lines = _verify_lines(result)
    files = [f"{UPP_NAME}/{LABELS_FILE}", f"encoder-church/{ENCODER_NAME}", f"proggan-church/{PROGGAN_FILE}",
             f"seeing-baselines/{CHURCH}", f"seeing-baselines/{BEDROOM}"]
    for relative in files:
        path = store / relative
        assert lines[relative][:3] == ["ok", str(path.stat().st_size), sha(path)]
    # The segmenter's checkpoints are named as missing (not damage): only labels.json was asked for.
    assert lines[f"{UPP_NAME}/{ENCODER_FILE}"][0] == "missing"
    assert f"fsd weights download segmenter --to {store}" in lines[f"{UPP_NAME}/{ENCODER_FILE}"][4]
    assert len(lines) == len(files) + 2
    assert "5 ok, 2 missing" in result.stderr
    assert [r.status for r in fsd.weights.verify(store)].count("ok") == 5


def test_verify_a_truncated_file(store):
    tally = store / "seeing-baselines" / CHURCH
    tally.write_bytes(tally.read_bytes()[:200])
    result = run("weights", "verify", store)
    assert result.exit_code == 2
    line = _verify_lines(result)[f"seeing-baselines/{CHURCH}"]
    assert line[:3] == ["damaged", "200", sha(tally)] and "not a .npy array" in line[4]
    assert (f"error: 1 damaged file in {store}: {tally}. Delete it and fetch a good copy with "
            f"`fsd weights download lsun_church --to {store}`") in result.stderr
    assert len(result.stderr.strip().splitlines()) == 2  # the counts, then the one-line error


def test_verify_a_swapped_file(store):
    # Two files of the same size exchanged: each now fails its structural check, and the line says the
    # bytes are not the ones verified.
    church, bedroom = store / "seeing-baselines" / CHURCH, store / "seeing-baselines" / BEDROOM
    labels = store / UPP_NAME / LABELS_FILE
    before = sha(labels)
    church_bytes = church.read_bytes()
    church.write_bytes(labels.read_bytes())
    labels.write_bytes(church_bytes)
    result = run("weights", "verify", store)
    assert result.exit_code == 2
    line = _verify_lines(result)[f"{UPP_NAME}/{LABELS_FILE}"]
    assert line[0] == "damaged" and f"its sha256 was {before} when it was verified" in line[4]
    assert "2 damaged files" in result.stderr and "lsun_church segmenter --to" in result.stderr
    assert _verify_lines(result)[f"seeing-baselines/{BEDROOM}"][0] == "ok"
    assert sha(bedroom) == _verify_lines(result)[f"seeing-baselines/{BEDROOM}"][2]


def test_a_replaced_file_that_passes_is_reported_as_changed_and_warned_about(store, monkeypatch):
    path = store / "proggan-church" / PROGGAN_FILE
    first = sha(path)
    path.write_bytes(saved(tiny_generator(7).state_dict()))  # another generator of the same shape
    with pytest.warns(UserWarning, match=rf"changed since it was verified \(sha256 {first} then, {sha(path)} now"):
        fsd.invert.proggan("church", weights_dir=store, progress=False)  # a run uses it, not silently
    result = run("weights", "verify", store)
    assert result.exit_code == 0
    line = _verify_lines(result)[f"proggan-church/{PROGGAN_FILE}"]
    assert line[0] == "changed" and f"its sha256 was {first}" in line[4]
    assert _verify_lines(run("weights", "verify", store))[f"proggan-church/{PROGGAN_FILE}"][0] == "ok"  # re-verified


def test_verify_an_empty_or_missing_folder(tmp_path, env):
    (tmp_path / "empty").mkdir()
    result = run("weights", "verify", tmp_path / "empty")
    assert result.exit_code == 2
    assert "holds no model files" in result.stderr and "fsd weights download --to" in result.stderr
    assert run("weights", "verify", tmp_path / "nowhere").exit_code == 2
    with pytest.raises(InputError, match="holds no model files"):
        fsd.weights.verify(tmp_path / "empty")


def test_verify_reads_the_flat_layout_and_names_what_it_does_not_know(store, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / PROGGAN_FILE).write_bytes((store / "proggan-church" / PROGGAN_FILE).read_bytes())
    (flat / "notes.txt").write_text("mine")
    (flat / f".{PROGGAN_FILE}.abc.part").write_bytes(b"x")
    statuses = {r.path.name: r.status for r in fsd.weights.verify(flat)}
    assert statuses == {PROGGAN_FILE: "ok", "notes.txt": "unknown", f".{PROGGAN_FILE}.abc.part": "leftover"}


# ---- stamps --------------------------------------------------------------------------------------


def test_a_file_changed_with_its_mtime_put_back_is_checked_again(server, env):
    artifact = toy(server)
    folder = fetch(artifact, progress=False)
    path = folder / "w.bin"
    stat = path.stat()
    path.write_bytes(b"evil bytes" * 100)  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same mtime
    with pytest.raises(WeightsError, match="fails its check"):
        fetch(artifact, progress=False)


# ---- where ---------------------------------------------------------------------------------------


def test_where_lists_the_folders_in_order_and_what_each_holds(store, env, monkeypatch):
    result = run("weights", "where")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "1. weights folder: not set (weights_dir / --weights-dir / $FSD_WEIGHTS_DIR)"
    assert lines[1] == f"2. cache: {env} ($FSD_CACHE_DIR); missing files are downloaded into it"
    assert lines[2] == "     no model files"
    assert lines[3].startswith("3. mirror: http://netdissect.csail.mit.edu/") and "(published)" in lines[3]

    monkeypatch.setenv("FSD_WEIGHTS_DIR", str(store))
    monkeypatch.setenv("FSD_MIRRORS", "http://lab.example/fsd")
    lines = run("weights", "where").stdout.splitlines()
    assert lines[0].startswith(f"1. weights folder: {store} ($FSD_WEIGHTS_DIR); used alone")
    assert lines[1:5] == [
        f"     {UPP_NAME}  1 of 3 files, missing: {ENCODER_FILE}, {DECODER_FILE}",
        "     seeing-baselines      complete (2 files)",
        "     proggan-church        complete (1 file)",
        "     encoder-church        complete (1 file)",
    ]
    cache = next(i for i, line in enumerate(lines) if line.startswith("2. cache:"))
    assert "not used while a weights folder is set" in lines[cache]
    assert lines[cache + 2] == ("3. mirror: http://lab.example/fsd ($FSD_MIRRORS); tried first, as "
                                "BASE/<artifact>/<file>; not tried: a weights folder is set")
    places = fsd.weights.where()
    assert [p.kind for p in places[:3]] == ["weights folder", "cache", "mirror"]
    assert places[0].holds["proggan-church"] == (PROGGAN_FILE,) and places[0].used and not places[1].used


# ---- offline -------------------------------------------------------------------------------------


def test_offline_with_a_complete_folder_works_and_an_incomplete_one_names_the_missing_files(
    store, server, env, monkeypatch
):
    monkeypatch.setenv("FSD_OFFLINE", "1")
    asked = len(server.requests)
    result = run("weights", "download", "lsun_church", "proggan:church", "--to", store)
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["ok", "ok", "ok"]
    assert len(server.requests) == asked
    (store / "seeing-baselines" / CHURCH).unlink()
    result = run("weights", "download", "lsun_church", "--to", store)
    assert result.exit_code == 1
    assert f"not downloading 1 missing file of seeing-baselines: {CHURCH}" in result.stderr
    assert len(server.requests) == asked
    with pytest.raises(WeightsError, match=f"lacks 1 file of seeing-baselines: {CHURCH}"):
        fsd.load_baseline("lsun_church", weights_dir=store, progress=False)


def test_a_downloaded_folder_served_as_is_is_a_mirror(store, env, tmp_path, monkeypatch):
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(store))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    with serving(httpd):
        monkeypatch.setenv("FSD_MIRRORS", f"http://127.0.0.1:{httpd.server_address[1]}")
        monkeypatch.setenv("FSD_WEIGHTS_DIR", str(tmp_path / "copy"))  # download without --to fills it
        result = run("weights", "download", "lsun_church", "lsun_bedroom", "proggan:church", "encoder:church")
    assert result.exit_code == 0, result.output
    copied = sorted(p.relative_to(tmp_path / "copy") for p in (tmp_path / "copy").rglob("*") if p.is_file()
                    and not p.name.startswith("."))
    assert copied == sorted(p.relative_to(store) for p in store.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert all(sha(tmp_path / "copy" / p) == sha(store / p) for p in copied)


def test_the_python_equivalents_come_with_import_fsd():
    code = ("import sys, fsd; from fsd import *; "
            "print(weights.download is fsd.weights.download, callable(fsd.weights.verify), "
            "callable(fsd.weights.where), callable(fsd.weights.format_where), 'fsd.invert' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "True", "True", "False"]  # fsd.invert loads only when needed

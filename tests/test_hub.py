"""fsd.hub against a local HTTP server the tests control; no outside network."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import serving
from fsd import hub
from fsd.errors import DownloadError, InputError, WeightsError
from fsd.hub import Artifact, RemoteFile, cache_dir, fetch, fetch_file, sha256_of

PAYLOAD_A = bytes(range(256)) * 40  # 10,240 bytes
PAYLOAD_B = b'{"object": ["-", "wall"]}'


@dataclass
class Server:
    base: str
    # path -> ("ok", body) | ("404", b"") | ("truncate", body) | ("close", b"") | ("html", body)
    #         | ("stall", body): half the body, then nothing until ``release`` is set
    routes: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


def _handler(server: Server) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            server.requests.append(self.path)
            mode, body = server.routes.get(self.path, ("404", b""))
            if mode == "close":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if mode == "404":
                self.send_error(404, "Not Found")
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8" if mode == "html" else "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body if mode in ("ok", "html") else body[: len(body) // 2])
            if mode == "stall":
                self.wfile.flush()
                server.release.wait(timeout=60)
            if mode in ("truncate", "stall"):
                self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:  # keep test output clean
            pass

    return Handler


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server(base="")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    with serving(httpd):
        yield state
        state.release.set()


@pytest.fixture
def dead_mirror() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/models"  # nothing listens there: connection refused


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("FSD_CACHE_DIR", str(root))
    monkeypatch.delenv("FSD_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("FSD_OFFLINE", raising=False)
    return root


def _art(mirrors: tuple[str, ...], **file_a: object) -> Artifact:
    return Artifact(
        name="toy-model",
        files=(RemoteFile("weights.pth", **file_a), RemoteFile("labels.json")),  # type: ignore[arg-type]
        mirrors=mirrors,
        description="a toy model",
    )


def _serve_both(server: Server, prefix: str = "/good") -> str:
    server.routes[f"{prefix}/weights.pth"] = ("ok", PAYLOAD_A)
    server.routes[f"{prefix}/labels.json"] = ("ok", PAYLOAD_B)
    return server.base + prefix


def _listing(folder: Path) -> dict[str, int]:
    """Every file under folder (hidden ones too) with its mtime."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- cache folder --------------------------------------------------------------------------------


def test_cache_dir_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FSD_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == tmp_path / "home" / ".cache" / "fsd"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert cache_dir() == tmp_path / "home" / ".cache" / "fsd"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "fsd"
    monkeypatch.setenv("FSD_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.setenv("FSD_CACHE_DIR", "")
    assert cache_dir() == tmp_path / "xdg" / "fsd"


# ---- downloads -----------------------------------------------------------------------------------


@pytest.mark.parametrize("first", ["refused", "404", "close"])
def test_first_mirror_down_second_serves(first: str, server: Server, cache: Path, dead_mirror: str) -> None:
    good = _serve_both(server)
    if first == "refused":
        bad = dead_mirror
    else:
        bad = server.base + "/bad"
        server.routes["/bad/weights.pth"] = (first, b"")
        server.routes["/bad/labels.json"] = (first, b"")
    folder = fetch(_art((bad, good)), progress=False)
    assert folder == cache / "toy-model"
    assert (folder / "weights.pth").read_bytes() == PAYLOAD_A
    assert (folder / "labels.json").read_bytes() == PAYLOAD_B
    assert not list(folder.glob("*.part"))


def test_all_mirrors_down_lists_urls_and_leaves_nothing(server: Server, cache: Path, dead_mirror: str) -> None:
    server.routes["/m2/weights.pth"] = ("404", b"")
    art = _art((dead_mirror, server.base + "/m2"))
    with pytest.raises(DownloadError) as info:
        fetch(art, progress=False)
    message = str(info.value)
    assert f"{dead_mirror}/weights.pth" in message
    assert f"{server.base}/m2/weights.pth: HTTP 404" in message
    assert str(cache / "toy-model") in message and "--weights-dir" in message and "FSD_WEIGHTS_DIR" in message
    assert isinstance(info.value, WeightsError)
    assert list((cache / "toy-model").iterdir()) == []


def test_unreachable_mirror_is_not_retried_for_the_next_file(
    server: Server, cache: Path, dead_mirror: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = _serve_both(server)
    opened: list[str] = []
    real_urlopen = urllib.request.urlopen

    def counting_urlopen(request: urllib.request.Request, timeout: float) -> object:
        opened.append(request.full_url)
        return real_urlopen(request, timeout=timeout)

    monkeypatch.setattr(hub.urllib.request, "urlopen", counting_urlopen)
    fetch(_art((dead_mirror, good)), progress=False)
    assert opened == [f"{dead_mirror}/weights.pth", f"{good}/weights.pth", f"{good}/labels.json"]


def test_truncated_response_is_an_error_and_leaves_nothing(server: Server, cache: Path) -> None:
    server.routes["/t/weights.pth"] = ("truncate", PAYLOAD_A)
    with pytest.raises(DownloadError, match=r"truncated transfer: received 5120 of 10240 bytes"):
        fetch_file(_art((server.base + "/t",)), "weights.pth", progress=False)
    assert list((cache / "toy-model").iterdir()) == []


def test_sha256_pin_mismatch_leaves_nothing(server: Server, cache: Path) -> None:
    good = _serve_both(server)
    with pytest.raises(DownloadError, match=r"expected " + "0" * 64):
        fetch(_art((good,), sha256="0" * 64), progress=False)
    assert list((cache / "toy-model").iterdir()) == []


def test_sha256_mismatch_on_first_mirror_moves_to_next(server: Server, cache: Path) -> None:
    good = _serve_both(server)
    server.routes["/evil/weights.pth"] = ("ok", b"x" * len(PAYLOAD_A))
    folder = fetch(_art((server.base + "/evil", good), sha256=_sha(PAYLOAD_A).upper()), progress=False)
    assert (folder / "weights.pth").read_bytes() == PAYLOAD_A
    assert server.requests[:2] == ["/evil/weights.pth", "/good/weights.pth"]


def test_sha256_prefix(server: Server, cache: Path) -> None:
    good = _serve_both(server)
    with pytest.raises(DownloadError, match="does not start with ffffffff"):
        fetch_file(_art((good,), sha256_prefix="ffffffff"), "weights.pth", progress=False)
    assert list((cache / "toy-model").iterdir()) == []
    path = fetch_file(_art((good,), sha256_prefix=_sha(PAYLOAD_A)[:8]), "weights.pth", progress=False)
    assert path.read_bytes() == PAYLOAD_A


def test_min_bytes_rejects_small_error_page(server: Server, cache: Path) -> None:
    server.routes["/small/weights.pth"] = ("ok", b"moved")
    with pytest.raises(DownloadError, match="at least 1000"):
        fetch_file(_art((server.base + "/small",), min_bytes=1000), "weights.pth", progress=False)
    assert list((cache / "toy-model").iterdir()) == []


def test_verify_sees_temp_file_in_cache_and_its_failure_leaves_nothing(server: Server, cache: Path) -> None:
    good = _serve_both(server)
    seen: list[Path] = []

    def verify(path: Path, file: RemoteFile) -> None:
        seen.append(path)
        assert path.read_bytes() in (PAYLOAD_A, PAYLOAD_B)
        raise WeightsError(f"{file.name}: key 'conv1.weight' has the wrong shape")

    art = Artifact("toy-model", (RemoteFile("weights.pth"),), (good,), verify=verify)
    with pytest.raises(DownloadError, match="conv1.weight"):
        fetch(art, progress=False)
    assert seen[0].parent == cache / "toy-model"
    assert seen[0].name.startswith(".") and seen[0].name.endswith(".part")
    assert list((cache / "toy-model").iterdir()) == []


def test_verify_raising_other_exception_is_a_failure(server: Server, cache: Path) -> None:
    good = _serve_both(server)

    def verify(path: Path, file: RemoteFile) -> None:
        raise RuntimeError("unpickling failed")

    art = Artifact("toy-model", (RemoteFile("weights.pth"),), (good,), verify=verify)
    with pytest.raises(DownloadError, match="RuntimeError: unpickling failed"):
        fetch(art, progress=False)
    assert list((cache / "toy-model").iterdir()) == []


def test_keyboard_interrupt_in_verify_leaves_nothing(server: Server, cache: Path) -> None:
    good = _serve_both(server)

    def verify(path: Path, file: RemoteFile) -> None:
        raise KeyboardInterrupt

    art = Artifact("toy-model", (RemoteFile("weights.pth"),), (good, good), verify=verify)
    with pytest.raises(KeyboardInterrupt):
        fetch(art, progress=False)
    assert list((cache / "toy-model").iterdir()) == []
    assert len(server.requests) == 1  # an interrupt stops; it does not move on to the next mirror


def test_keyboard_interrupt_mid_stream_leaves_nothing(
    server: Server, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = _serve_both(server)
    real_urlopen = urllib.request.urlopen
    partial: list[list[str]] = []

    class Interrupting:
        def __init__(self, response: object) -> None:
            self.response = response
            self.headers = response.headers  # type: ignore[attr-defined]
            self.chunks = 0

        def __enter__(self) -> Interrupting:
            return self

        def __exit__(self, *exc: object) -> None:
            self.response.close()  # type: ignore[attr-defined]

        def read(self, size: int) -> bytes:
            self.chunks += 1
            if self.chunks == 2:
                partial.append([p.name for p in (cache / "toy-model").iterdir()])
                raise KeyboardInterrupt
            return self.response.read(100)  # type: ignore[attr-defined]

    def interrupting_urlopen(request: urllib.request.Request, timeout: float) -> Interrupting:
        return Interrupting(real_urlopen(request, timeout=timeout))

    monkeypatch.setattr(hub.urllib.request, "urlopen", interrupting_urlopen)
    with pytest.raises(KeyboardInterrupt):
        fetch(_art((good,)), progress=False)
    assert len(partial) == 1 and len(partial[0]) == 1 and partial[0][0].endswith(".part")  # existed mid-stream
    assert list((cache / "toy-model").iterdir()) == []


def test_progress_bar_goes_to_stderr(server: Server, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _serve_both(server)
    fetch_file(_art((good,)), "weights.pth", progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""


def test_concurrent_fetches_do_not_corrupt(server: Server, cache: Path) -> None:
    good = _serve_both(server)
    art = _art((good,), sha256=_sha(PAYLOAD_A))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fetch(art, progress=False)
        except BaseException as err:  # collected and re-checked below
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    folder = cache / "toy-model"
    assert (folder / "weights.pth").read_bytes() == PAYLOAD_A
    assert not list(folder.glob("*.part"))


# ---- cache reuse ---------------------------------------------------------------------------------


def test_cached_files_make_no_request(server: Server, cache: Path) -> None:
    good = _serve_both(server)
    art = _art((good,), sha256=_sha(PAYLOAD_A))
    fetch(art, progress=False)
    assert len(server.requests) == 2
    mtimes = _listing(cache)
    assert fetch(art, progress=False) == cache / "toy-model"
    assert fetch_file(art, "labels.json", progress=False) == cache / "toy-model" / "labels.json"
    assert len(server.requests) == 2
    assert _listing(cache) == mtimes


def test_only_missing_files_are_downloaded(server: Server, cache: Path) -> None:
    good = _serve_both(server)
    folder = cache / "toy-model"
    folder.mkdir(parents=True)
    (folder / "labels.json").write_bytes(b"hand placed")
    fetch(_art((good,)), progress=False)
    assert server.requests == ["/good/weights.pth"]
    assert (folder / "labels.json").read_bytes() == b"hand placed"


def test_fetch_file_downloads_only_that_file(server: Server, cache: Path) -> None:
    good = _serve_both(server)
    path = fetch_file(_art((good,)), "labels.json", progress=False)
    assert path == cache / "toy-model" / "labels.json" and path.read_bytes() == PAYLOAD_B
    assert server.requests == ["/good/labels.json"]
    with pytest.raises(InputError, match="no file 'other.bin'.*weights.pth, labels.json"):
        fetch_file(_art((good,)), "other.bin", progress=False)


def test_bad_hand_placed_file_in_cache_is_rejected(server: Server, cache: Path) -> None:
    good = _serve_both(server)
    folder = cache / "toy-model"
    folder.mkdir(parents=True)
    (folder / "weights.pth").write_bytes(b"not the weights")
    (folder / "labels.json").write_bytes(PAYLOAD_B)
    with pytest.raises(WeightsError, match=r"cached file .*weights.pth fails its check.*Delete it"):
        fetch(_art((good,), sha256=_sha(PAYLOAD_A)), progress=False)
    assert server.requests == []


def test_cached_file_replaced_after_stamp_is_checked_again(server: Server, cache: Path) -> None:
    good = _serve_both(server)
    art = _art((good,), sha256=_sha(PAYLOAD_A))
    folder = fetch(art, progress=False)
    (folder / "weights.pth").write_bytes(PAYLOAD_A[:-1] + b"!")
    with pytest.raises(WeightsError, match="fails its check"):
        fetch(art, progress=False)
    (folder / "weights.pth").write_bytes(PAYLOAD_A)  # a good copy put back by hand is accepted
    assert fetch(art, progress=False) == folder


def test_pin_declared_later_applies_to_cached_files(server: Server, cache: Path) -> None:
    good = _serve_both(server)
    fetch(_art((good,)), progress=False)
    with pytest.raises(WeightsError, match=r"cached file .*weights.pth fails its check"):
        fetch(_art((good,), sha256="0" * 64), progress=False)
    assert fetch(_art((good,), sha256=_sha(PAYLOAD_A)), progress=False) == cache / "toy-model"
    assert len(server.requests) == 2


# ---- offline -------------------------------------------------------------------------------------


def test_offline_never_touches_the_network(server: Server, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = _serve_both(server)
    art = _art((good,))
    with pytest.raises(WeightsError, match=r"offline.*weights.pth, labels.json") as info:
        fetch(art, offline=True, progress=False)
    assert not isinstance(info.value, DownloadError)
    assert f"{good}/weights.pth" in str(info.value) and str(cache / "toy-model") in str(info.value)
    monkeypatch.setenv("FSD_OFFLINE", "true")
    with pytest.raises(WeightsError, match="offline"):
        fetch(art, progress=False)
    assert server.requests == []
    assert fetch(art, offline=False, progress=False) == cache / "toy-model"  # the argument wins
    assert fetch(art, progress=False) == cache / "toy-model"  # cached files work offline
    assert len(server.requests) == 2
    monkeypatch.setenv("FSD_OFFLINE", "maybe")
    with pytest.raises(InputError, match="FSD_OFFLINE"):
        fetch(art, progress=False)


# ---- user folder ---------------------------------------------------------------------------------


@pytest.mark.parametrize("nested", [True, False])
@pytest.mark.parametrize("via_env", [True, False])
def test_weights_dir_used_as_is_and_never_written(
    nested: bool, via_env: bool, tmp_path: Path, cache: Path, dead_mirror: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = tmp_path / "user"
    folder = user / "toy-model" if nested else user
    folder.mkdir(parents=True)
    (folder / "weights.pth").write_bytes(PAYLOAD_A)
    (folder / "labels.json").write_bytes(PAYLOAD_B)
    os.chmod(folder, 0o555)  # a write attempt would fail loudly (unless running as root)
    before = _listing(user)
    calls: list[Path] = []
    art = Artifact(
        "toy-model",
        (RemoteFile("weights.pth", sha256=_sha(PAYLOAD_A)), RemoteFile("labels.json")),
        (dead_mirror,),
        verify=lambda path, file: calls.append(path),
    )
    try:
        if via_env:
            monkeypatch.setenv("FSD_WEIGHTS_DIR", str(user))
            got, one = fetch(art), fetch_file(art, "labels.json")
        else:
            got, one = fetch(art, weights_dir=user), fetch_file(art, "labels.json", weights_dir=str(user))
    finally:
        os.chmod(folder, 0o755)
    assert got == folder and one == folder / "labels.json"
    assert _listing(user) == before
    assert not cache.exists()
    assert sorted(p.name for p in calls) == ["labels.json", "weights.pth"]  # checked once per process


def test_missing_file_in_weights_dir_names_it(tmp_path: Path, cache: Path, dead_mirror: str) -> None:
    user = tmp_path / "user"
    (user / "toy-model").mkdir(parents=True)
    (user / "toy-model" / "labels.json").write_bytes(PAYLOAD_B)
    with pytest.raises(WeightsError) as info:
        fetch(_art((dead_mirror,)), weights_dir=user, progress=False)
    message = str(info.value)
    assert "lacks 1 file of toy-model: weights.pth" in message
    assert str(user / "toy-model") in message and f"{dead_mirror}/weights.pth" in message
    assert not cache.exists()
    with pytest.raises(WeightsError, match="does not exist"):
        fetch(_art((dead_mirror,)), weights_dir=tmp_path / "nowhere", progress=False)


def test_bad_file_in_weights_dir_is_rejected(tmp_path: Path, cache: Path, dead_mirror: str) -> None:
    (tmp_path / "weights.pth").write_bytes(PAYLOAD_A)
    (tmp_path / "labels.json").write_bytes(PAYLOAD_B)
    with pytest.raises(WeightsError, match=r"weights.pth fails its check: .*does not start with 00000000"):
        fetch(_art((dead_mirror,), sha256_prefix="00000000"), weights_dir=tmp_path, progress=False)
    assert fetch(_art((dead_mirror,), sha256_prefix=_sha(PAYLOAD_A)[:8]), weights_dir=tmp_path) == tmp_path


# ---- declarations --------------------------------------------------------------------------------


def test_declarations_are_validated(tmp_path: Path) -> None:
    assert sha256_of(_write(tmp_path / "f", PAYLOAD_A)) == _sha(PAYLOAD_A)
    for bad in ["", "../x", "a/b", ".hidden"]:
        with pytest.raises(ValueError, match="plain"):
            RemoteFile(bad)
    with pytest.raises(ValueError, match="64 hex"):
        RemoteFile("w.pth", sha256="abc")
    with pytest.raises(ValueError, match="hex"):
        RemoteFile("w.pth", sha256_prefix="xyz")
    with pytest.raises(ValueError, match="twice"):
        Artifact("a", (RemoteFile("w"), RemoteFile("w")), ())
    with pytest.raises(ValueError, match="http"):
        Artifact("a", (RemoteFile("w"),), ("ftp://host/x",))
    art = Artifact("a", (RemoteFile("w", sha256_prefix="ABCD"),), ("https://h/x/",), meta={"params": 3})
    assert art.file("w").sha256_prefix == "abcd"
    assert art.urls("w") == ("https://h/x/w",)
    assert art.meta["params"] == 3 and hash(art) == hash(art)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ---- temporary files of interrupted downloads ------------------------------------------------------


def _start_stalled_download(server: Server, cache: Path) -> tuple[subprocess.Popen, Path]:
    """A separate process downloading weights.pth, stopped half-way; returns it and its .part file."""
    server.routes["/slow/weights.pth"] = ("stall", PAYLOAD_A)
    code = (
        "from fsd.hub import Artifact, RemoteFile, fetch_file\n"
        f"art = Artifact('toy-model', (RemoteFile('weights.pth'), RemoteFile('labels.json')), ({server.base + '/slow'!r},))\n"
        "fetch_file(art, 'weights.pth', progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "FSD_CACHE_DIR": str(cache)})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        parts = list((cache / "toy-model").glob(".weights.pth.*.part"))
        if parts and "/slow/weights.pth" in server.requests:  # the request is out: the file is locked
            return proc, parts[0]
        assert proc.poll() is None, "the download ended before it stalled"
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the download never started")


def test_stale_part_of_a_killed_download_is_removed_by_the_next_fetch(server: Server, cache: Path) -> None:
    proc, part = _start_stalled_download(server, cache)
    proc.send_signal(signal.SIGKILL)  # no cleanup can run
    proc.wait(timeout=30)
    assert part.is_file()
    good = _serve_both(server)
    fetch_file(_art((good,)), "labels.json", progress=False)  # any fetch of the artifact cleans up
    assert not part.exists()
    assert sorted(p.name for p in (cache / "toy-model").iterdir()) == [".labels.json.verified", "labels.json"]


def test_a_running_download_keeps_its_part(server: Server, cache: Path) -> None:
    proc, part = _start_stalled_download(server, cache)
    try:
        good = _serve_both(server)
        fetch_file(_art((good,)), "labels.json", progress=False)
        assert part.is_file()  # locked by the live download: not stale
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert hub.remove_stale_parts(cache / "toy-model", _art((good,))) == [part]


def test_sigterm_mid_download_removes_the_part_and_ends_the_process(server: Server, cache: Path) -> None:
    proc, part = _start_stalled_download(server, cache)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM  # ended as SIGTERM ends it, only without the leftover
    assert list((cache / "toy-model").iterdir()) == []


def test_a_programs_own_sigterm_handler_is_left_in_charge(tmp_path: Path) -> None:
    def own(signum: int, frame: object) -> None:
        pass

    previous = signal.signal(signal.SIGTERM, own)
    try:
        with hub._removed_on_termination(tmp_path / "x.part"):
            assert signal.getsignal(signal.SIGTERM) is own
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with hub._removed_on_termination(tmp_path / "x.part"):
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---- what a bad mirror sends -----------------------------------------------------------------------


def _upp_from(server: Server, prefix: str) -> Artifact:
    from fsd.segmenters.weights import UPP_WEIGHTS

    return dataclasses.replace(UPP_WEIGHTS, mirrors=(server.base + prefix,))


@pytest.mark.parametrize("mode", ["html", "ok"])  # with Content-Type text/html, and an HTML body without it
def test_an_html_page_for_labels_json_is_named_as_such(mode: str, server: Server, cache: Path) -> None:
    page = b"<!DOCTYPE html>\n<html><body>Site under maintenance" + b" " * 2000 + b"</body></html>"
    server.routes["/m/upp-resnet50-upernet/labels.json"] = (mode, page)
    server.routes["/m/labels.json"] = (mode, page)
    with pytest.raises(DownloadError) as info:
        fetch_file(_upp_from(server, "/m"), "labels.json", progress=False)
    message = str(info.value)
    assert f"{server.base}/m/labels.json: the server sent an HTML page, not labels.json" in message
    assert ".part" not in message and "delete it" not in message
    assert list((cache / "upp-resnet50-upernet").iterdir()) == []


def test_a_broken_answer_is_reported_by_its_url_not_a_temporary_file(server: Server, cache: Path) -> None:
    server.routes["/m/labels.json"] = ("ok", b'{"object": [' + b" " * 2000)
    with pytest.raises(DownloadError) as info:
        fetch_file(_upp_from(server, "/m"), "labels.json", progress=False)
    message = str(info.value)
    assert f"cannot read {server.base}/m/labels.json as labels.json (JSONDecodeError" in message
    assert ".part" not in message and "delete it and download" not in message

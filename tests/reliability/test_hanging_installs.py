"""Installs that never finish (URLs that send a byte every half second, FIFOs named
`*.safetensors`) do not take the server down: other routes answer while 40 of them hang, each
is answered by its deadline (`limits.install_timeout_s`, 408 naming the setting) and its
download stops; a FIFO is refused at once. Before, the 40 installs held every request thread
and `GET /api/models` stopped answering; an install of a FIFO blocked forever."""

from __future__ import annotations

import contextlib
import os
import socketserver
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from loraworks.models import ModelError, ModelManager
from loraworks.server.app import create_app
from tests.server.conftest import live_server

HANGING = 40
TIMEOUT_S = 10


class _Trickle(socketserver.BaseRequestHandler):
    """Answers any request with a 1 MB body sent one byte every half second."""

    def handle(self) -> None:
        server: TrickleServer = self.server  # type: ignore[assignment]
        with server.lock:
            server.open += 1
            server.seen += 1
        try:
            self.request.settimeout(120)
            self.request.recv(65536)
            self.request.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n"
                b"Content-Type: application/octet-stream\r\n\r\n"
            )
            while not server.stopping.is_set():
                self.request.sendall(b"\0")
                server.stopping.wait(0.5)
        except OSError:
            pass  # the client gave up: what the test wants
        finally:
            with server.lock:
                server.open -= 1


class TrickleServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Trickle)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.open = 0
        self.seen = 0


@pytest.fixture
def trickle() -> Iterator[TrickleServer]:
    server = TrickleServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.stopping.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def manager(tmp_path) -> Iterator[ModelManager]:
    root = tmp_path / "root"
    root.mkdir()
    (root / "config.toml").write_text(f"[limits]\ninstall_timeout_s = {TIMEOUT_S}\n")
    mm = ModelManager.open(root)
    yield mm
    mm.close()


def _wait_until(condition, limit_s: float = 60) -> bool:
    """Poll `condition` (a hang guard only: no test result depends on the time)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_other_routes_answer_while_40_installs_hang(manager, trickle):
    port = trickle.server_address[1]
    with live_server(create_app(manager, start_worker=False), manager) as live:

        def install(i: int) -> httpx.Response:
            source = f"http://127.0.0.1:{port}/lora-{i}.safetensors"
            body = {"source": source}
            return httpx.post(f"{live.url}/api/models/install", json=body, timeout=120)

        with ThreadPoolExecutor(HANGING) as clients:
            answers = [clients.submit(install, i) for i in range(HANGING)]
            try:
                assert _wait_until(lambda: trickle.seen >= 4), "no install reached the URL"
                _wait_until(lambda: trickle.seen >= HANGING, limit_s=2)  # settle, whatever it is
                assert not any(a.done() for a in answers), "the installs should still hang"
                started = time.monotonic()
                try:
                    listing = httpx.get(f"{live.url}/api/models", timeout=1)
                except httpx.TimeoutException:
                    pytest.fail("GET /api/models did not answer within 1 s while installs hang")
                assert listing.status_code == 200 and time.monotonic() - started < 1
                results = [a.result() for a in answers]
                # the abandoned downloads stop (the server sees each client go)
                assert _wait_until(lambda: trickle.open == 0), "downloads went on"
            finally:
                trickle.stopping.set()  # on a failure, ends the downloads that still hang
        for result in results:
            assert result.status_code == 408, result.text
            assert "limits.install_timeout_s" in result.json()["error"]
        assert not list(manager.paths.cache.glob("download-*"))
        assert httpx.get(f"{live.url}/api/models", timeout=5).json() == []


def _release(fifo: Path) -> None:
    """Unblock a reader stuck opening `fifo` (old code), so the test can end."""
    with contextlib.suppress(OSError):  # no reader: nothing is stuck
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_a_fifo_install_is_refused_at_once(manager, tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    result: list[httpx.Response] = []
    with live_server(create_app(manager, start_worker=False), manager) as live:
        body = {"source": str(fifo)}
        post = threading.Thread(
            target=lambda: result.append(
                httpx.post(f"{live.url}/api/models/install", json=body, timeout=60)
            ),
            daemon=True,
        )
        post.start()
        post.join(30)  # a hang guard only
        blocked = post.is_alive()
        _release(fifo)
        post.join(30)
    assert not blocked, "the install blocked on the FIFO"
    assert result[0].status_code == 400
    assert "not a regular file" in result[0].json()["error"]


def test_a_fifo_inside_an_installed_folder_is_refused(manager, tmp_path):
    from tests.models.lora_files import write_lcm_folder

    folder = write_lcm_folder(tmp_path / "lcm")
    os.mkfifo(folder / "notes.txt")
    done = threading.Event()
    errors: list[Exception] = []

    def install() -> None:
        try:
            manager.install(folder)
        except Exception as exc:
            errors.append(exc)
        done.set()

    threading.Thread(target=install, daemon=True).start()
    finished = done.wait(30)  # a hang guard only
    _release(folder / "notes.txt")
    assert finished, "the copy blocked on the FIFO"
    assert errors and "not a regular file" in str(errors[0])
    assert manager.list() == []


def test_a_link_loop_inside_an_installed_folder_is_refused(manager, tmp_path):
    from tests.models.lora_files import write_lcm_folder

    folder = write_lcm_folder(tmp_path / "looped")
    (folder / "a").mkdir()
    (folder / "a" / "up").symlink_to(folder)
    (folder / "a" / "again").symlink_to(folder)
    with pytest.raises(ModelError, match="link to a folder"):
        manager.install(folder)
    assert manager.list() == []
    assert not [p for p in manager.paths.models.iterdir() if not p.name.startswith(".")]


def test_a_source_over_the_size_limit_is_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "config.toml").write_text("[limits]\nmax_install_gb = 0.5\n")
    mm = ModelManager.open(root)
    sparse = tmp_path / "big.safetensors"
    with sparse.open("wb") as f:
        f.truncate(2 << 30)
    try:
        with pytest.raises(ModelError, match=r"limits\.max_install_gb"):
            mm.install(sparse)
    finally:
        mm.close()

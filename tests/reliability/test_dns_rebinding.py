"""DNS rebinding in the default (token-less) mode: a page whose name was pointed at 127.0.0.1
sends its own name as `Host` (and `Origin`), so those requests are refused with 403 and
change nothing; the server's own loopback names and port are served. With a token the token
decides, as before. Before, such a page could list, queue, install and delete."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient

from loraworks.server.app import create_app
from tests.models.lora_files import kohya_sd1_tensors, write
from tests.server.conftest import live_server

REBOUND = ("evil.example", "evil.example:9090", "127.0.0.1.nip.io", "192.168.1.5", "")


@pytest.fixture
def lora_key(manager, tmp_path) -> str:
    return manager.install(write(tmp_path / "r.safetensors", kohya_sd1_tensors(9))).key


@pytest.mark.parametrize("host", REBOUND)
def test_a_rebound_host_is_refused_and_changes_nothing(manager, lora_key, host):
    with TestClient(create_app(manager, start_worker=False)) as client:
        headers = {"Host": host}
        for method, path in (
            ("GET", "/api/models"),
            ("GET", "/"),
            ("POST", "/api/models/scan"),
            ("POST", "/api/queue"),
            ("DELETE", f"/api/models/{lora_key}"),
        ):
            answer = client.request(method, path, headers=headers, json={})
            assert answer.status_code == 403, (method, path, answer.text)
            assert "Host" in answer.json()["error"]
    assert manager.get(lora_key).status == "ok"


@pytest.mark.parametrize("host", ("127.0.0.1", "localhost", "[::1]", "127.0.0.1:80"))
def test_loopback_hosts_of_this_server_are_served(manager, host):
    with TestClient(create_app(manager, start_worker=False)) as client:
        assert client.get("/api/models", headers={"Host": host}).status_code == 200


def test_a_loopback_host_with_another_port_is_refused(manager):
    """The test client's server listens on port 80."""
    with TestClient(create_app(manager, start_worker=False)) as client:
        assert client.get("/api/models", headers={"Host": "127.0.0.1:9999"}).status_code == 403


@pytest.mark.parametrize("origin", ("http://evil.example", "https://127.0.0.1.nip.io", "null"))
def test_a_foreign_origin_may_not_change_anything(manager, lora_key, origin):
    with TestClient(create_app(manager, start_worker=False)) as client:
        headers = {"Host": "127.0.0.1", "Origin": origin}
        deleted = client.delete(f"/api/models/{lora_key}", headers=headers)
        assert deleted.status_code == 403 and origin in deleted.json()["error"]
        assert client.post("/api/models/scan", headers=headers).status_code == 403
        assert client.get("/api/models", headers=headers).status_code == 200  # reads: CORS
        local = {"Host": "127.0.0.1", "Origin": "http://localhost:9090"}
        assert client.post("/api/models/scan", headers=local).status_code == 200
    assert manager.get(lora_key).status == "ok"


def test_with_a_token_the_token_decides(manager):
    app = create_app(manager, start_worker=False, token="s3cret")
    with TestClient(app) as client:
        bearer = {"Host": "evil.example", "Authorization": "Bearer s3cret"}
        assert client.get("/api/models", headers=bearer).status_code == 200
        assert client.get("/api/models", headers={"Host": "evil.example"}).status_code == 401


def test_a_live_server_checks_its_own_port(manager):
    with live_server(create_app(manager, start_worker=False), manager) as live:
        port = live.url.rsplit(":", 1)[1]
        for host, status in (
            (f"127.0.0.1:{port}", 200),
            (f"localhost:{port}", 200),
            (f"evil.example:{port}", 403),
            ("127.0.0.1:1", 403),
        ):
            answer = httpx.get(f"{live.url}/api/models", headers={"Host": host}, timeout=30)
            assert answer.status_code == status, host

"""Binding and tokens: a non-loopback bind needs a token; with one, every request needs it."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from loraworks.cli import app as cli_app
from loraworks.server import create_app
from loraworks.server.auth import BindRefused, check_bind, is_loopback

TOKEN = "s3cret-token"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.20", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_check_bind_refuses_public_hosts_without_a_token():
    with pytest.raises(BindRefused, match=r"0\.0\.0\.0.*--token"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", TOKEN)
    check_bind("127.0.0.1", None)


def test_serve_command_refuses_a_public_bind_without_a_token(tmp_path):
    result = CliRunner().invoke(
        cli_app, ["serve", "--host", "0.0.0.0", "--root", str(tmp_path / "root")]
    )
    assert result.exit_code == 1
    assert "Refusing to listen on 0.0.0.0" in result.output
    assert "Traceback" not in result.output


@pytest.fixture
def guarded(manager, fake_generate):
    with TestClient(create_app(manager, token=TOKEN, generate=fake_generate)) as client:
        yield client


@pytest.mark.parametrize(
    "path", ["/", "/app.js", "/docs", "/openapi.json", "/api/models", "/api/images"]
)
def test_without_the_token_every_path_is_401(guarded, path):
    response = guarded.get(path)
    assert response.status_code == 401
    assert "token" in response.json()["error"]


def test_a_wrong_token_is_401(guarded):
    assert guarded.get("/api/models", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert guarded.get("/api/models", params={"token": "nope"}).status_code == 401


def test_bearer_header_or_query_token_is_accepted(guarded):
    by_header = guarded.get("/api/models", headers={"Authorization": f"Bearer {TOKEN}"})
    assert by_header.status_code == 200 and by_header.json()
    by_query = guarded.post(
        "/api/queue",
        params={"token": TOKEN},
        json={"model": "tiny-sd1", "prompt": "a red circle"},
    )
    assert by_query.status_code == 202


def test_the_page_opened_with_the_token_sets_a_cookie_for_its_own_requests(manager, fake_generate):
    with TestClient(create_app(manager, token=TOKEN, generate=fake_generate)) as browser:
        assert browser.get("/", params={"token": TOKEN}).status_code == 200
        assert browser.get("/api/images").status_code == 200  # cookie only
        browser.cookies.clear()
        assert browser.get("/api/images").status_code == 401

"""Security headers on every answer, no Swagger page loading code from a CDN, and a web UI
that needs nothing the Content-Security-Policy forbids (no inline script, style or handler;
the live Chromium run in test_live_ui.py checks the same in a browser)."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from loraworks.server.app import WEB_DIR

EXPECTED = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/"), ("GET", "/app.js"), ("GET", "/api/models"), ("GET", "/api/queue/nope")],
)
def test_pages_and_api_answers_carry_csp_and_frame_denial(client, method, path):
    response = client.request(method, path)
    for name, value in EXPECTED.items():
        assert response.headers[name] == value, (path, name)
    csp = dict(
        part.strip().split(" ", 1)
        for part in response.headers["content-security-policy"].split(";")
    )
    assert csp["default-src"] == "'self'" and csp["frame-ancestors"] == "'none'"
    assert "'unsafe-inline'" not in response.headers["content-security-policy"]


def test_a_refused_host_also_carries_the_headers(client):
    response = client.get("/api/models", headers={"host": "rebound.example"})
    assert response.status_code == 403
    assert response.headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/docs/oauth2-redirect"])
def test_no_swagger_or_redoc_page_loading_a_cdn(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert "cdn.jsdelivr.net" not in response.text


def test_the_schema_stays_available(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200 and "/api/queue" in response.json()["paths"]


class _InlineFinder(HTMLParser):
    """Everything in a page that a `default-src 'self'` policy without 'unsafe-inline' blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.blocked: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if tag == "style" or (tag == "script" and "src" not in names):
            self.blocked.append(f"inline <{tag}>")
        self.blocked += [f"{tag} {a}=" for a in names if a == "style" or a.startswith("on")]
        if any((v or "").lstrip().lower().startswith("javascript:") for v in names.values()):
            self.blocked.append(f"{tag} javascript: URL")


def test_the_web_ui_has_no_inline_code_the_policy_would_block():
    finder = _InlineFinder()
    finder.feed((WEB_DIR / "index.html").read_text())
    assert finder.blocked == []
    script = (WEB_DIR / "app.js").read_text()
    for blocked in ("eval(", "new Function(", 'setAttribute("style"'):
        assert blocked not in script

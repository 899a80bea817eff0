"""Without a token, only pages of this server on this machine may talk to it (DNS rebinding).

A web page at `evil.example` can make its own name resolve to 127.0.0.1 and then send requests
the browser treats as same-origin: to loopback, without a token, it could queue jobs, install
and delete. Such requests still carry the page's name, so a request whose `Host` is not a
loopback name or address with this server's port is refused, and so is a state-changing request
whose `Origin` is not loopback. With a token, the token guards instead (a rebound page never
has it, nor the cookie, which belongs to the real origin).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from loraworks.server.auth import is_loopback
from loraworks.server.errors import error_response

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _host_and_port(authority: str, scheme: str) -> tuple[str, int | None]:
    """`[::1]:9090` → (`::1`, 9090); `localhost` → (`localhost`, 80); a bad port → None."""
    try:
        parts = urlsplit(f"{scheme}://{authority}")
        return parts.hostname or "", parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        return "", None


def _is_local_authority(authority: str, scheme: str, port: int | None) -> bool:
    host, given_port = _host_and_port(authority, scheme)
    return is_loopback(host) and host != "" and (port is None or given_port == port)


def _is_local_origin(origin: str) -> bool:
    parts = urlsplit(origin)
    return parts.scheme in _DEFAULT_PORTS and is_loopback(parts.hostname or "")


class LoopbackOnly:
    """ASGI middleware for the token-less server: refuses (403) a `Host` that is not this
    server on loopback, and a non-loopback `Origin` on a state-changing request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        server = scope.get("server")
        port = server[1] if server else None
        scheme = scope.get("scheme", "http")
        origin = headers.get("origin")
        if not _is_local_authority(headers.get("host", ""), scheme, port):
            message = (
                "Refused: the Host header is not this server on 127.0.0.1, [::1] or localhost "
                "(a web page whose name was pointed at this machine?). Open the server by its "
                "loopback address, or set a token to reach it under another name."
            )
        elif scope["method"] not in SAFE_METHODS and origin and not _is_local_origin(origin):
            message = f"Refused: a request from the web page at {origin} may not change anything."
        else:
            await self.app(scope, receive, send)
            return
        await error_response(403, message)(scope, receive, send)

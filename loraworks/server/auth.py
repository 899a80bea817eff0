"""Who may talk to the server: anyone on loopback, or whoever knows the token.

A non-loopback bind without a token would hand the machine's models, disk space and compute to
the whole network, so it is refused before the server starts.
"""

from __future__ import annotations

import ipaddress
import secrets

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loraworks.server.errors import error_response

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


class BindRefused(ValueError):
    """A non-loopback bind was asked for without a token."""


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and the name localhost; unknown host names count as public."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Raise `BindRefused` for a non-loopback `host` without a token."""
    if not is_loopback(host) and not token:
        raise BindRefused(
            f"Refusing to listen on {host}: it is reachable from other machines and no token is "
            "set. Pass --token <secret> (or set `token` under [server] in config.toml), or bind "
            "to 127.0.0.1."
        )


TOKEN_COOKIE = "loraworks_token"


class TokenAuth:
    """ASGI middleware: every HTTP request must carry `Authorization: Bearer <token>`, a
    `token` query parameter or the cookie set when the query parameter was used — browsers
    cannot set headers on `<img>`, `EventSource` or the `/docs` page's own requests.
    """

    def __init__(self, app: ASGIApp, token: str):
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        scheme, _, value = conn.headers.get("authorization", "").partition(" ")
        from_query = conn.query_params.get("token")
        offered = (value.strip() if scheme.lower() == "bearer" else from_query) or conn.cookies.get(
            TOKEN_COOKIE
        )
        if not (offered and secrets.compare_digest(offered.encode(), self.token.encode())):
            response = error_response(
                401, "A token is required: send `Authorization: Bearer <token>` or ?token=<token>."
            )
            await response(scope, receive, send)
            return
        if from_query != offered:
            await self.app(scope, receive, send)
            return

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                cookie = f"{TOKEN_COOKIE}={offered}; Path=/; HttpOnly; SameSite=Strict"
                message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie.encode())]
            await send(message)

        await self.app(scope, receive, send_with_cookie)

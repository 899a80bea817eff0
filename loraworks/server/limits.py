"""`[limits]` of config.toml as the server enforces them: on each generation request when it is
queued, and on every request body as it arrives. Each refusal names its setting, so that the
user of a small machine knows what to lower, and the owner of a large one what to raise.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loraworks.generation.request import GenerateRequest
from loraworks.models.config import Limits
from loraworks.server.errors import ApiError, error_response


def check_request_limits(request: GenerateRequest, limits: Limits) -> None:
    """422 for a size, batch or step count over its `[limits]` setting. A size left unset
    (the model's native size, at most 1024) is not checked here."""
    asked = (
        ("width", request.width, "max_side", limits.max_side),
        ("height", request.height, "max_side", limits.max_side),
        ("batch_size", request.batch_size, "max_batch", limits.max_batch),
        ("steps", request.steps, "max_steps", limits.max_steps),
    )
    for field, value, setting, limit in asked:
        if value is not None and value > limit:
            raise ApiError(
                422,
                f"{field} {value} is over the limit of {limit} (limits.{setting} in the root's "
                "config.toml).",
            )


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` is answered 413 before it is read whole
    (by its Content-Length, or as its chunks arrive when it has none)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.message = (
            f"The request body is over {max_bytes:,} bytes (limits.max_request_bytes in the "
            "root's config.toml)."
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            await error_response(413, self.message)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # the app's handlers answer it
                    raise HTTPException(413, self.message)
            return message

        await self.app(scope, counted, send)

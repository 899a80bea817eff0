"""Talking to a running `loraworks serve` from Python (`loraworks generate --server URL`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from loraworks.generation.request import GenerateRequest


class ServerError(ValueError):
    """The server refused or failed the request, or could not be reached; the message says why.

    A `ValueError` like every other error a user can act on, so the CLI prints one line."""


def _error_message(response: httpx.Response) -> str:
    try:
        return response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:200]}"


def _sse_events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """Parse `event:`/`data:` blocks; yields each event's JSON data."""
    data: list[str] = []
    for line in response.iter_lines():
        if line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            yield json.loads("\n".join(data))
            data = []


def submit_and_wait(
    url: str,
    request: GenerateRequest,
    token: str | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> list[str]:
    """Queue `request` on the server at `url`, follow its events, return the image URLs.

    `on_event` gets every event (`queued`, `started`, `step` with step/total, …) as a dict.
    Raises `ServerError` when the server refuses the request or the generation fails.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    base = url.rstrip("/")
    try:
        with httpx.Client(
            base_url=base, headers=headers, timeout=httpx.Timeout(30, read=None)
        ) as client:
            response = client.post(
                "/api/queue", json=request.model_dump(mode="json", exclude_unset=True)
            )
            if response.status_code >= 400:
                raise ServerError(_error_message(response))
            item_id = response.json()["id"]
            with client.stream("GET", f"/api/queue/{item_id}/events") as stream:
                if stream.status_code >= 400:
                    stream.read()
                    raise ServerError(_error_message(stream))
                for event in _sse_events(stream):
                    if on_event is not None:
                        on_event(event)
                    if event["type"] == "done":
                        return [base + image["url"] for image in event["images"]]
                    if event["type"] in ("failed", "cancelled"):
                        raise ServerError(event.get("message") or event["type"])
    except httpx.HTTPError as exc:
        raise ServerError(f"Cannot talk to the server at {base}: {exc}") from None
    raise ServerError("The server closed the event stream before the generation finished.")

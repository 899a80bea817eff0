"""The generation queue: enqueue, list, status, cancel, and per-item progress events (SSE)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.sse import EventSourceResponse, ServerSentEvent

from loraworks.generation import check_request as generation_check
from loraworks.generation.request import GenerateRequest
from loraworks.server.errors import ApiError
from loraworks.server.limits import check_request_limits
from loraworks.server.queue import QueueFull, QueueItem, QueueItemFinished, QueueItemNotFound
from loraworks.server.state import ServerState, server_state

router = APIRouter(prefix="/queue", tags=["queue"])
State = Annotated[ServerState, Depends(server_state)]


def check_request(state: ServerState, request: GenerateRequest) -> None:
    """Refuse now what would fail later: init images outside the root (the API must not read
    arbitrary files; refused first, so the answer is the same whether such a path exists),
    sizes, batches and steps over `[limits]`, then whatever generation's own `check_request`
    refuses from the records (unknown or unusable models, LoRAs also named by `<lora:...>`
    tags, a LoRA named twice, wrong bases, a missing init image — no file is read)."""
    manager = state.manager
    if request.init_image is not None:
        root = manager.root.resolve()
        if not Path(request.init_image).resolve().is_relative_to(root):
            raise ApiError(403, f"init_image must be a file under the models root ({root}).")
    check_request_limits(request, manager.config.limits)
    generation_check(request, manager)


def _item(state: ServerState, item_id: str) -> QueueItem:
    try:
        return state.queue.get(item_id)
    except QueueItemNotFound as exc:
        raise ApiError(404, str(exc)) from None


@router.post("", status_code=202)
def enqueue(request: GenerateRequest, state: State) -> QueueItem:
    """Queue a generation (the same request shape as `loraworks.generation.generate`)."""
    check_request(state, request)
    try:
        return state.queue.submit(request, max_active=state.manager.config.limits.max_queue)
    except QueueFull as exc:
        raise ApiError(429, str(exc)) from None


@router.get("")
def list_queue(state: State) -> list[QueueItem]:
    """Queued, running and recently finished items, oldest first."""
    return state.queue.list()


@router.get("/{item_id}")
def get_item(item_id: str, state: State) -> QueueItem:
    return _item(state, item_id)


@router.post("/{item_id}/cancel")
def cancel_item(item_id: str, state: State) -> QueueItem:
    """A queued item is dropped at once; a running one stops after its current step."""
    try:
        return state.queue.cancel(item_id)
    except QueueItemNotFound as exc:
        raise ApiError(404, str(exc)) from None
    except QueueItemFinished as exc:
        raise ApiError(409, str(exc)) from None


def _existing_item_id(item_id: str, state: State) -> str:
    """Dependency: a 404 before the event stream starts, not an empty stream."""
    return _item(state, item_id).id


@router.get("/{item_id}/events", response_class=EventSourceResponse)
async def item_events(
    item_id: Annotated[str, Depends(_existing_item_id)], state: State
) -> AsyncIterator[ServerSentEvent]:
    """Server-Sent Events: `queued`, `started`, `step` (step/total), then one of `done`
    (images), `failed` (message) or `cancelled`; the stream ends after that."""
    async for event in state.bus.follow(item_id):
        yield ServerSentEvent(event=event.type, data=event)

"""Per-item progress events, published by the queue's worker thread and followed by any number
of Server-Sent-Event streams running on the server's event loop.

A stream that connects late first gets the item's story so far (every event, of the step events
only the latest), so a browser that reloads mid-generation still sees where things stand. Only
that latest step is kept, so the history stays small however many steps (and previews) pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

EventType = Literal["queued", "started", "loading", "step", "done", "failed", "cancelled"]
TERMINAL_EVENTS: frozenset[str] = frozenset({"done", "failed", "cancelled"})


class ImageRef(BaseModel):
    """A generated image as the API names it."""

    id: int
    url: str
    recipe_url: str


class QueueEvent(BaseModel):
    item_id: str
    type: EventType
    step: int | None = None
    total: int | None = None
    elapsed: float | None = None
    message: str | None = None
    preview: str | None = None  # step events: a small PNG data URL of the current latents
    images: list[ImageRef] = []
    warnings: list[str] = []

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS


@dataclass(eq=False)
class _Subscriber:
    loop: asyncio.AbstractEventLoop
    inbox: asyncio.Queue[QueueEvent]

    def deliver(self, event: QueueEvent) -> None:
        # A closed loop means the stream has ended; its `finally` unsubscribes it.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.inbox.put_nowait, event)


class EventBus:
    """Thread-safe fan-out of `QueueEvent`s with a per-item history for late subscribers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._history: dict[str, list[QueueEvent]] = {}
        self._subscribers: dict[str, list[_Subscriber]] = {}

    def publish(self, event: QueueEvent) -> None:
        with self._lock:
            history = self._history.setdefault(event.item_id, [])
            if event.type in ("loading", "step") and history and history[-1].type == event.type:
                history[-1] = event  # a late reader gets the latest of a run of them
            else:
                history.append(event)
            subscribers = list(self._subscribers.get(event.item_id, ()))
        for subscriber in subscribers:
            subscriber.deliver(event)

    def forget(self, item_id: str) -> None:
        """Drop a pruned item's history."""
        with self._lock:
            self._history.pop(item_id, None)

    async def follow(self, item_id: str) -> AsyncIterator[QueueEvent]:
        """The item's events from the start, ending after its terminal event."""
        subscriber = _Subscriber(asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:  # snapshot and subscribe at once: each event is in exactly one of them
            past = list(self._history.get(item_id, ()))
            self._subscribers.setdefault(item_id, []).append(subscriber)
        try:
            for event in past:
                yield event
                if event.terminal:
                    return
            while True:
                event = await subscriber.inbox.get()
                yield event
                if event.terminal:
                    return
        finally:
            with self._lock:
                self._subscribers[item_id].remove(subscriber)
                if not self._subscribers[item_id]:
                    del self._subscribers[item_id]

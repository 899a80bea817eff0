"""The generation queue: one worker thread runs requests strictly in order.

One worker, because the loaded model is shared: two requests running at once would patch their
LoRAs into the same weights. Items live in memory and, with a journal, on disk at each change
of state; finished ones are pruned oldest first.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

from loraworks.generation.errors import GenerationCancelled
from loraworks.generation.request import GenerateRequest
from loraworks.server.events import EventBus, ImageRef, QueueEvent

if TYPE_CHECKING:
    from loraworks.server.journal import QueueJournal

log = logging.getLogger("loraworks.server")

ItemStatus = Literal["queued", "running", "done", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"done", "failed", "cancelled"})


class QueueItem(BaseModel):
    id: str
    status: ItemStatus
    request: GenerateRequest
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    step: int = 0
    total: int | None = None
    cancel_requested: bool = False
    images: list[ImageRef] = []
    warnings: list[str] = []
    error: str | None = None


@dataclass
class RunOutcome:
    images: list[ImageRef]
    warnings: list[str] = field(default_factory=list)


@dataclass
class Progress:
    """One finished denoise step as the runner reports it, or (`loading` set) the main model's
    component `step` of `total` starting to load."""

    step: int
    total: int
    elapsed: float
    preview: str | None = None  # PNG data URL
    loading: str | None = None  # "unet", "vae", "text_encoder", "text_encoder_2"


RunFn = Callable[[GenerateRequest, Callable[[Progress], None], threading.Event], RunOutcome]


class QueueItemNotFound(LookupError):
    pass


class QueueItemFinished(ValueError):
    pass


class QueueFull(RuntimeError):
    """As many items as the limit allows are queued or running."""


class GenerationQueue:
    """Holds items, runs them one at a time on a worker thread and publishes their events."""

    def __init__(
        self,
        run: RunFn,
        bus: EventBus,
        journal: QueueJournal | None = None,
        keep_finished: int = 200,
        workers: int = 1,
        resume: bool = False,
    ):
        """`workers` > 1 and `resume` only where the runner allows them (a cluster: each job
        runs on a replica of its own and images are saved only when a job has finished, so a
        job interrupted by a stop runs again whole after a restart)."""
        self._run = run
        self._journal = journal
        self._bus = bus
        self._keep_finished = keep_finished
        self._cond = threading.Condition()
        self._items: dict[str, QueueItem] = {}
        self._cancels: dict[str, threading.Event] = {}
        self._pending: deque[str] = deque()
        self._stopping = False
        self._workers = workers
        self._threads: list[threading.Thread] = []
        if journal is not None:
            self._restore(journal.load(), resume)

    # --- public API used by the routes -----------------------------------------------------

    def submit(self, request: GenerateRequest, max_active: int | None = None) -> QueueItem:
        """Queue `request`; `QueueFull` when `max_active` items are already queued or running."""
        item = QueueItem(
            id=uuid.uuid4().hex[:12], status="queued", request=request, created_at=time.time()
        )
        with self._cond:
            active = sum(1 for i in self._items.values() if i.status not in FINISHED)
            if max_active is not None and active >= max_active:
                raise QueueFull(
                    f"The queue already holds {active} requests (limits.max_queue in the root's "
                    "config.toml); try again when some have finished."
                )
            self._items[item.id] = item
            self._cancels[item.id] = threading.Event()
            self._pending.append(item.id)
            self._prune()
            self._save()
            # published before the worker can see the item, so `queued` always precedes `started`
            self._bus.publish(QueueEvent(item_id=item.id, type="queued"))
            self._cond.notify()
            return item.model_copy()

    def list(self) -> list[QueueItem]:
        """All kept items, oldest first."""
        with self._cond:
            return [item.model_copy() for item in self._items.values()]

    def get(self, item_id: str) -> QueueItem:
        with self._cond:
            return self._item(item_id).model_copy()

    def cancel(self, item_id: str) -> QueueItem:
        """A queued item is cancelled at once; a running one stops after its current step."""
        with self._cond:
            item = self._item(item_id)
            if item.status in FINISHED:
                raise QueueItemFinished(f"Queue item {item_id} has already {item.status}.")
            item.cancel_requested = True
            self._cancels[item_id].set()
            if item.status == "running":
                return item.model_copy()
            self._pending.remove(item_id)
            self._finish(item, "cancelled")
        self._bus.publish(QueueEvent(item_id=item_id, type="cancelled", message="cancelled"))
        return self.get(item_id)

    # --- worker ----------------------------------------------------------------------------

    def start(self) -> None:
        for n in range(self._workers):
            thread = threading.Thread(target=self._work, name=f"loraworks-queue-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the running item (asked to cancel); queued items stay unrun."""
        with self._cond:
            self._stopping = True
            for item in self._items.values():
                if item.status == "running":
                    self._cancels[item.id].set()
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                item = self._items[self._pending.popleft()]
                item.status, item.started_at = "running", time.time()
                self._save()
                request, cancel = item.request, self._cancels[item.id]
            self._bus.publish(QueueEvent(item_id=item.id, type="started"))
            self._run_one(item, request, cancel)

    def _run_one(self, item: QueueItem, request: GenerateRequest, cancel: threading.Event) -> None:
        def on_progress(progress: Progress) -> None:
            loading = progress.loading is not None
            if not loading:  # the item's step counts denoise steps only
                with self._cond:
                    item.step, item.total = progress.step, progress.total
            self._bus.publish(
                QueueEvent(
                    item_id=item.id,
                    type="loading" if loading else "step",
                    step=progress.step,
                    total=progress.total,
                    elapsed=None if loading else progress.elapsed,
                    preview=progress.preview,
                    message=f"loading the model: {progress.loading}" if loading else None,
                )
            )

        try:
            outcome = self._run(request, on_progress, cancel)
        except GenerationCancelled:
            self._end(item, QueueEvent(item_id=item.id, type="cancelled", message="cancelled"))
        except ValueError as exc:  # every error a user can cause subclasses ValueError
            self._end(item, QueueEvent(item_id=item.id, type="failed", message=str(exc)))
        except Exception as exc:
            log.exception("generation of queue item %s failed", item.id)
            message = f"Generation failed unexpectedly ({type(exc).__name__}: {exc})."
            self._end(item, QueueEvent(item_id=item.id, type="failed", message=message))
        else:
            event = QueueEvent(
                item_id=item.id, type="done", images=outcome.images, warnings=outcome.warnings
            )
            self._end(item, event)

    # --- helpers (called with the lock held unless noted) ----------------------------------

    def _end(self, item: QueueItem, event: QueueEvent) -> None:
        """Record the outcome and publish it (lock not held)."""
        with self._cond:
            item.images, item.warnings = event.images, event.warnings
            item.error = event.message if event.type == "failed" else None
            self._finish(item, event.type)
        self._bus.publish(event)

    def _finish(self, item: QueueItem, status: ItemStatus) -> None:
        item.status, item.finished_at = status, time.time()
        self._save()

    def _save(self) -> None:
        if self._journal is not None:
            self._journal.save(list(self._items.values()))

    def _restore(self, items: list[QueueItem], resume: bool) -> None:
        """Take back the last run's items; what was queued or running then has failed, or with
        `resume` is queued again (in its order)."""
        for item in items:
            if resume and item.status not in FINISHED:
                item.status, item.started_at, item.step = "queued", None, 0
                self._pending.append(item.id)
            elif item.status not in FINISHED:
                item.error = (
                    f"Interrupted: the server stopped while this item was {item.status}; "
                    "submit it again."
                )
                item.status, item.finished_at = "failed", time.time()
            self._items[item.id] = item
            self._cancels[item.id] = threading.Event()
            self._bus.publish(
                QueueEvent(
                    item_id=item.id,
                    type=item.status,
                    message={"failed": item.error, "cancelled": "cancelled"}.get(item.status),
                    images=item.images,
                    warnings=item.warnings,
                )
            )
        self._save()

    def _item(self, item_id: str) -> QueueItem:
        try:
            return self._items[item_id]
        except KeyError:
            raise QueueItemNotFound(f"No queue item {item_id!r}.") from None

    def _prune(self) -> None:
        finished = [i for i in self._items.values() if i.status in FINISHED]
        for item in finished[: max(0, len(finished) - self._keep_finished)]:
            del self._items[item.id]
            del self._cancels[item.id]
            self._bus.forget(item.id)

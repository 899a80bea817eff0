"""`create_app`: the FastAPI application — API routes, queue worker, autoimport watcher, web UI.

Everything is wired from one `ModelManager`; tests inject a fake `generate` with the real one's
signature to exercise the queue and events without a model.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from loraworks.generation.request import GenerateRequest
from loraworks.models import ModelManager
from loraworks.server.auth import TokenAuth
from loraworks.server.errors import install_handlers
from loraworks.server.events import EventBus
from loraworks.server.queue import GenerationQueue, Progress, RunFn, RunOutcome
from loraworks.server.routes import images, models, queue, settings
from loraworks.server.routes.images import image_ref
from loraworks.server.state import ServerState

WEB_DIR = Path(__file__).parent / "web"

GenerateFn = Callable[..., Any]
"""`generate(request, *, manager, progress, cancel) -> GenerateResult` (uses `.image_ids`,
`.warnings`)."""


def _runner(manager: ModelManager, generate: GenerateFn) -> RunFn:
    """Adapt `generate` to the queue: overall progress across a batch, images as API refs."""

    def run(
        request: GenerateRequest, progress: Callable[[Progress], None], cancel: threading.Event
    ) -> RunOutcome:
        def on_step(event: Any) -> None:
            done = event.image * event.total + event.step
            progress(Progress(step=done, total=event.images * event.total, elapsed=event.elapsed))

        result = generate(request, manager=manager, progress=on_step, cancel=cancel)
        return RunOutcome(images=[image_ref(i) for i in result.image_ids], warnings=result.warnings)

    return run


def create_app(
    manager: ModelManager,
    *,
    token: str | None = None,
    start_worker: bool = True,
    watch: bool = False,
    generate: GenerateFn | None = None,
) -> FastAPI:
    """The app. `watch` runs the autoimport watcher while the app runs (`loraworks serve`)."""
    if generate is None:
        from loraworks.generation import generate
    bus = EventBus()
    state = ServerState(
        manager=manager, queue=GenerationQueue(_runner(manager, generate), bus), bus=bus
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop_watching = threading.Event()
        if start_worker:
            state.queue.start()
        if watch:
            threading.Thread(
                target=manager.watch, args=(stop_watching,), name="loraworks-watch", daemon=True
            ).start()
        try:
            yield
        finally:
            stop_watching.set()
            state.queue.stop()

    app = FastAPI(
        title="loraworks",
        summary="Local Stable Diffusion generation around LoRAs and LCM-LoRAs.",
        lifespan=lifespan,
    )
    app.state.server = state
    install_handlers(app)
    for module in (models, queue, images, settings):
        app.include_router(module.router, prefix="/api")
    app.mount("/", StaticFiles(directory=WEB_DIR, html=True), name="web")
    if token:
        app.add_middleware(TokenAuth, token=token)
    return app

"""`create_app`: the FastAPI application — API routes, queue worker, autoimport watcher, web UI.

Everything is wired from one `ModelManager`; tests inject a fake `generate` with the real one's
signature to exercise the queue and events without a model.
"""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from PIL import Image

from loraworks.generation import LoadEvent, reporting_loads
from loraworks.generation.request import GenerateRequest
from loraworks.models import ModelManager
from loraworks.server.auth import TokenAuth
from loraworks.server.errors import install_handlers
from loraworks.server.events import EventBus
from loraworks.server.headers import SecurityHeaders
from loraworks.server.hosts import LoopbackOnly
from loraworks.server.installs import InstallRunner
from loraworks.server.journal import QueueJournal
from loraworks.server.limits import BodyLimit
from loraworks.server.queue import GenerationQueue, Progress, RunFn, RunOutcome
from loraworks.server.routes import cluster as cluster_routes
from loraworks.server.routes import images, models, queue, settings
from loraworks.server.routes import recall as recall_routes
from loraworks.server.routes.images import image_ref
from loraworks.server.state import ServerState

WEB_DIR = Path(__file__).parent / "web"

GenerateFn = Callable[..., Any]
"""`generate(request, *, manager, progress, cancel) -> GenerateResult` (uses `.image_ids`,
`.warnings`)."""


PREVIEW_SIDE = 128


def preview_data_url(image: Image.Image | None) -> str | None:
    """The step preview as a small PNG data URL (cheap: latent-sized, no VAE pass)."""
    if image is None:
        return None
    image = image.copy()
    image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _runner(manager: ModelManager, generate: GenerateFn) -> RunFn:
    """Adapt `generate` to the queue: overall progress across a batch, previews as data URLs,
    images as API refs."""

    def run(
        request: GenerateRequest, progress: Callable[[Progress], None], cancel: threading.Event
    ) -> RunOutcome:
        def on_step(event: Any) -> None:
            done = event.image * event.total + event.step
            total = event.images * event.total
            preview = preview_data_url(event.preview)
            progress(Progress(step=done, total=total, elapsed=event.elapsed, preview=preview))

        def on_load(event: LoadEvent) -> None:
            progress(Progress(event.index + 1, event.total, 0.0, loading=event.component))

        with reporting_loads(on_load):  # a main model loaded for this request: its components
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
    cluster: Any = None,
) -> FastAPI:
    """The app. `watch` runs the autoimport watcher while the app runs (`loraworks serve`).
    `cluster` (a started `loraworks.cluster.head.Cluster`) generates instead of this process:
    as many jobs at once as its replicas hold, and the journal's unfinished jobs run again."""
    if cluster is not None:
        generate = cluster.generate
    elif generate is None:
        from loraworks.generation import generate
    bus = EventBus()
    journal = QueueJournal(manager.paths.databases / "queue.json")
    parallel = {"workers": cluster.concurrency, "resume": True} if cluster is not None else {}
    generation_queue = GenerationQueue(_runner(manager, generate), bus, journal, **parallel)
    state = ServerState(
        manager=manager,
        queue=generation_queue,
        bus=bus,
        installs=InstallRunner(manager),
        cluster=cluster,
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
            state.installs.shutdown()
            state.queue.stop()

    app = FastAPI(
        title="loraworks",
        summary="Local Stable Diffusion generation around LoRAs and LCM-LoRAs.",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI would load unpinned code from a CDN (server/headers.py)
        redoc_url=None,
    )
    app.state.server = state
    install_handlers(app)
    for module in (models, queue, images, settings, cluster_routes, recall_routes):
        app.include_router(module.router, prefix="/api")
    app.mount("/", StaticFiles(directory=WEB_DIR, html=True), name="web")
    app.add_middleware(BodyLimit, max_bytes=manager.config.limits.max_request_bytes)
    if token:
        app.add_middleware(TokenAuth, token=token)
    else:
        app.add_middleware(LoopbackOnly)
    app.add_middleware(SecurityHeaders)  # outermost: refusals carry the headers too
    return app

"""Installs asked for over HTTP, run on a few threads of their own.

A plain (sync) route runs on the server's shared request threads (40): 40 installs that never
finish (a FIFO named `*.safetensors`, a URL that sends a byte every 10 s) held all of them and
every route, the web UI included, stopped answering. Here the route only awaits: the install
runs on `WORKERS` threads of its own, its request is answered by its deadline
(`limits.install_timeout_s`, counted from the request) whatever the install is doing, and the
install is cancelled when the deadline passes or the client goes away.

A client may name its install (`progress_id`) and ask where it is while it runs
(`GET /api/models/install/{progress_id}`: the stage — download, hash, copy, probe — and its
bytes), so a multi-GB install does not look hung.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from starlette.requests import Request

from loraworks.models import ModelManager
from loraworks.models.guard import InstallCancelled, InstallTimedOut
from loraworks.models.progress import InstallProgress
from loraworks.models.records import ModelRecord
from loraworks.server.errors import ApiError

#: installs that run at once; more wait their turn (their deadline runs while they wait)
WORKERS = 4
#: how often a waiting request looks at its deadline and its client
POLL_S = 0.25


class InstallRunner:
    """Runs `ModelManager.install` off the request threads, with a deadline and cancel."""

    def __init__(self, manager: ModelManager) -> None:
        self._manager = manager
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="loraworks-install")
        #: progress_id -> where that install is; only while it runs
        self._progress: dict[str, InstallProgress | None] = {}

    def progress(self, progress_id: str) -> InstallProgress | None:
        """Where the install named `progress_id` is (None: started, nothing reported yet);
        KeyError when no install of that name is running."""
        return self._progress[progress_id]

    async def install(
        self, request: Request, source: str, copy: bool, progress_id: str | None = None
    ) -> ModelRecord:
        timeout_s = self._manager.config.limits.install_timeout_s
        started = time.monotonic()
        cancel = threading.Event()
        if progress_id is not None:
            if progress_id in self._progress:
                raise ApiError(409, f"an install named {progress_id!r} is already running")
            self._progress[progress_id] = None

        def report(step: InstallProgress) -> None:
            if progress_id is not None:
                self._progress[progress_id] = step

        future = self._pool.submit(
            self._manager.install, source, copy=copy, progress=report, cancel=cancel
        )
        waiting = asyncio.wrap_future(future)
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=POLL_S)
                if done:
                    return waiting.result()
                if await request.is_disconnected():
                    raise InstallCancelled("the client went away; the install was cancelled")
                if time.monotonic() - started > timeout_s:
                    raise InstallTimedOut.after(timeout_s)
        finally:
            if progress_id is not None:
                self._progress.pop(progress_id, None)
            if not future.done():
                cancel.set()  # a running install stops at its next chunk
                future.cancel()  # a waiting one never starts

    def shutdown(self) -> None:
        """Stop waiting installs; running ones stop at their next chunk."""
        self._pool.shutdown(wait=False, cancel_futures=True)

"""The Ray Serve deployment: one `Worker` per replica, affinity by model multiplexing.

`stack(stack_id)` is the `@serve.multiplexed` loader; its "model" is only the id, since the
worker's `ModelCache` holds the models (LRU in its memory budget) and the patcher the weights.
A replica reports the last `STACKS_REPORTED` stacks it was sent, so
`handle.options(multiplexed_model_id=…)` sends a job where its stack is patched or next; when
that replica holds `max_ongoing_requests` jobs, Ray's router tries the replicas with the
fewest ids, then any (spill-over, no starvation). The head keeps about half of that sent per
replica (`Cluster.concurrency`), so the router has room to wait for the right replica.

The multiplexed id is the replica's only stack key, as it is Ray's (`@serve.batch` splits its
batches by it): jobs waiting in a replica run its patched stack first (`turns.py`), and jobs
sent without one (`affinity` off) run first come, first served, as a stack-blind server does.

Same-stack batching (`[cluster] batch_window_ms` > 0): `run` goes through `@serve.batch`,
which collects the jobs that reach the replica within the window or wait there together, split
by multiplexed id; `_together` splits them again by `batched.batch_key` (size, step settings)
and runs each group as one UNet batch in one turn.

`run(job)` streams: the worker runs in the replica's one generation thread, each step comes
back as a `JobStep`, the end as a `JobResult` or a `JobFailed` (a refusal the head re-raises
with its own message, never a remote traceback). A cancelled request (the head's
`response.cancel()`) sets the worker's cancel flag: it stops between steps and restores.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import ray
from ray import serve

from loraworks.cluster.jobs import Job, JobStep
from loraworks.cluster.turns import StackTurns
from loraworks.cluster.worker import ReplicaStats, Worker, WorkerSettings
from loraworks.generation.batched import batch_key
from loraworks.generation.errors import GenerationCancelled
from loraworks.generation.events import StepEvent

DEPLOYMENT = "Generator"
#: stacks a replica reports to the router: the last ones it was sent (one patched, the next
#: waiting); with more, every replica soon reports every stack of a small working set
STACKS_REPORTED = 2


@dataclass
class JobFailed:
    """A job the worker refused or that was cancelled: `kind` names the head's exception."""

    kind: str  # "cancelled" | "refused"
    message: str
    stats: ReplicaStats


def _node() -> str:
    """The node as a person finds it: host name and Ray's address of it."""
    return f"{socket.gethostname()} ({ray.util.get_node_ip_address()})"


def _trimmed(event: StepEvent) -> StepEvent:
    """The step without the batch's latents, only what its preview reads (the first latent's
    four channels): a few KB per step to the head instead of the whole tensor."""
    latents = event.latents[:1, :4].clone() if event.latents is not None else None
    return replace(event, latents=latents)


@serve.deployment(name=DEPLOYMENT)
class Generator:
    def __init__(self, settings: WorkerSettings, capacity: int):
        replica = serve.get_replica_context().replica_id.unique_id
        self.worker = Worker(settings, replica, _node())
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loraworks-gen")
        self._turns = StackTurns(capacity)
        window = settings.config.cluster.batch_window_ms
        self._batching = window > 0
        self._together.set_max_batch_size(capacity)
        self._together.set_batch_wait_timeout_s(window / 1000)

    @serve.multiplexed(max_num_models_per_replica=STACKS_REPORTED)
    async def stack(self, stack_id: str) -> str:
        return stack_id

    async def stats(self) -> ReplicaStats:
        return self.worker.snapshot()

    async def run(self, job: Job) -> Any:
        if key := serve.get_multiplexed_model_id():
            await self.stack(key)  # reported to the router as one of this replica's
        if not self._batching or batch_key(job.settings) is None:
            async with self._turns.turn(key):
                async for item in self._run(job):
                    yield item
            return
        cancel = threading.Event()
        try:
            async for item in self._together(_Entry(job, cancel, key)):
                if item is not None:
                    yield item
        finally:
            cancel.set()  # the head went away (cancel): this job leaves its batch

    async def _run(self, job: Job) -> Any:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()
        replica = self.worker.stats.id

        def progress(event: StepEvent) -> None:
            loop.call_soon_threadsafe(events.put_nowait, JobStep(_trimmed(event), replica))

        task = loop.run_in_executor(self._thread, self.worker.run, job, progress, cancel)
        task.add_done_callback(lambda _: events.put_nowait(None))
        try:
            while (step := await events.get()) is not None:
                yield step
        finally:
            cancel.set()  # the head went away (cancel): stop between steps and restore
        try:
            result = task.result()
        except GenerationCancelled as exc:
            yield JobFailed("cancelled", str(exc), self.worker.snapshot())
        except ValueError as exc:  # every refusal a user can cause
            yield JobFailed("refused", str(exc), self.worker.snapshot())
        else:
            yield result, self.worker.snapshot()

    @serve.batch(max_batch_size=1)  # sized and timed from the config in __init__
    async def _together(self, entries: list[_Entry]) -> AsyncIterator[list[Any]]:
        """Ray's batch (one multiplexed id) in groups of one `batch_key`, each group one UNet
        batch in one turn. Ray wants one item per job per yield: None is "nothing for this
        job now" (`run` skips it), StopIteration "this job is done"."""
        groups: dict[Any, list[int]] = {}
        for i, entry in enumerate(entries):
            groups.setdefault((entry.job.stack_id, batch_key(entry.job.settings)), []).append(i)
        done: set[int] = set()

        def row(items: dict[int, Any]) -> list[Any]:
            return [StopIteration if i in done else items.get(i) for i in range(len(entries))]

        for members in groups.values():
            async with self._turns.turn(entries[members[0]].key):
                async for items in self._run_group([entries[i] for i in members]):
                    yield row({members[k]: item for k, item in items.items()})
            done.update(members)

    async def _run_group(self, group: list[_Entry]) -> AsyncIterator[dict[int, Any]]:
        """`Worker.run_together` in the generation thread: {job's index: its step} per step,
        then {index: its end} for all."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()
        replica = self.worker.stats.id

        def progress(k: int) -> Any:
            def put(event: StepEvent) -> None:
                step = JobStep(_trimmed(event), replica)
                loop.call_soon_threadsafe(events.put_nowait, {k: step})

            return put

        jobs = [entry.job for entry in group]
        listeners = [progress(k) for k in range(len(group))]
        cancels = [entry.cancel for entry in group]
        task = loop.run_in_executor(
            self._thread, self.worker.run_together, jobs, listeners, cancels
        )
        task.add_done_callback(lambda _: events.put_nowait(None))
        while (steps := await events.get()) is not None:
            yield steps
        try:
            results: list[Any] = task.result()
        except ValueError as exc:  # a refusal: every job of the group shares it
            results = [exc] * len(group)
        stats = self.worker.snapshot()
        yield {k: _end(result, stats) for k, result in enumerate(results)}


@dataclass
class _Entry:
    """A job in a same-stack batch, its cancel flag and its multiplexed id."""

    job: Job
    cancel: threading.Event
    key: str


def _end(result: Any, stats: ReplicaStats) -> Any:
    """What `run` yields last for a job: its result, or why it has none."""
    if isinstance(result, GenerationCancelled):
        return JobFailed("cancelled", str(result), stats)
    if isinstance(result, ValueError):
        return JobFailed("refused", str(result), stats)
    return result, stats

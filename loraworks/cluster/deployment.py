"""The Ray Serve deployment: one `Worker` per replica, affinity by model multiplexing.

`stack(stack_id)` is the `@serve.multiplexed` loader; its "model" is only the id, since the
worker's `ModelCache` holds the models (LRU in its memory budget) and the patcher the weights.
A replica reports the last `STACKS_REPORTED` stacks it was sent, so
`handle.options(multiplexed_model_id=…)` sends a job where its stack is patched or next; when
that replica is at `max_ongoing_requests`, Ray's router tries the replicas with the fewest ids,
then any (spill-over, no starvation).

Jobs waiting in a replica run its patched stack first (`turns.py`). `run(job)` streams: the
worker runs in the replica's one generation thread, each step comes
back as a `JobStep`, the end as a `JobResult` or a `JobFailed` (a refusal the head re-raises
with its own message, never a remote traceback). A cancelled request (the head's
`response.cancel()`) sets the worker's cancel flag: it stops between steps and restores.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import ray
from ray import serve

from loraworks.cluster.jobs import Job, JobStep
from loraworks.cluster.turns import StackTurns
from loraworks.cluster.worker import ReplicaStats, Worker, WorkerSettings
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
    def __init__(self, settings: WorkerSettings, patience: int):
        replica = serve.get_replica_context().replica_id.unique_id
        self.worker = Worker(settings, replica, _node())
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loraworks-gen")
        self._turns = StackTurns(patience)

    @serve.multiplexed(max_num_models_per_replica=STACKS_REPORTED)
    async def stack(self, stack_id: str) -> str:
        return stack_id

    async def stats(self) -> ReplicaStats:
        return self.worker.snapshot()

    async def run(self, job: Job) -> Any:
        if stack_id := serve.get_multiplexed_model_id():
            await self.stack(stack_id)  # reported to the router as one of this replica's
        async with self._turns.turn(job.stack_id):
            async for item in self._run(job):
                yield item

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

"""What one replica does with a job: verify the files, load and patch, render, hand back the
images with their recipes (the head saves them). No Ray here, so it is tested on its own.

The steps are `generate`'s (generation/api.py) without the database: the LoRAs and the main
model come from the replica's own `ModelCache`, whose `patched` sets the stack on the model's
long-lived patcher (so the same stack next time costs nothing) and restores it on cancel or
error, and `render_seeds` gives image i the job's seed + i. Hence the pixels equal the
single-process path's.

A file is hashed the first time this replica loads it (per path and expected hash): shared
storage that serves another file under the same path (a stale copy on one node) is refused
naming the node and the file, before any weight is read.
"""

from __future__ import annotations

import tempfile
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from loraworks.cluster.errors import FileMismatch
from loraworks.cluster.jobs import Job, JobImage, JobResult
from loraworks.generation.batched import render_together
from loraworks.generation.cache import ModelCache
from loraworks.generation.conditioning import is_sdxl
from loraworks.generation.denoise import StepCallback
from loraworks.generation.errors import GenerationCancelled
from loraworks.generation.events import CancelFlag, ProgressCallback, StepReporter
from loraworks.generation.placement import placement
from loraworks.generation.recipe import build_recipe
from loraworks.generation.render import render_seeds, with_native_size
from loraworks.lora import LoRAPatcher
from loraworks.models import ModelRecord
from loraworks.models.config import Config
from loraworks.models.loading import load_pipeline
from loraworks.models.probe import content_hash


def _image_steps(steps: StepReporter, image: int) -> StepCallback:
    """`steps` told which of its job's images a batched step belongs to."""

    def on_step(i: int, total: int, latents: torch.Tensor) -> None:
        steps.image = image
        steps(i, total, latents)

    return on_step


@dataclass(frozen=True)
class WorkerSettings:
    """What the head tells every replica: its config, the models root's cache folder
    (single-file configs) on the shared storage path, and its torch threads (CPU kernels sum
    in an order that depends on the thread count: the same count, the same pixels)."""

    config: Config
    cache_dir: Path
    threads: int = 1


@dataclass
class ReplicaStats:
    """One replica as `GET /api/cluster` shows it."""

    id: str
    node: str
    models: list[str] = field(default_factory=list)  # main models loaded, oldest first
    stack: list[str] = field(default_factory=list)  # the last job's LoRAs, `name:weight`
    jobs: int = 0
    switches: int = 0  # jobs that had to change the patched stack
    batches: int = 0  # UNet batches of several jobs (same-stack batching)


class Worker:
    def __init__(self, settings: WorkerSettings, replica: str, node: str):
        torch.set_num_threads(settings.threads)
        self.cache = ModelCache.from_config(
            settings.config,
            lambda record, dtype, progress, originals: load_pipeline(
                record, settings.cache_dir, dtype=dtype, progress=progress, originals=originals
            ),
        )
        self.stats = ReplicaStats(replica, node)
        self._verified: set[tuple[str, str | None]] = set()
        #: each loaded model's patcher -> the stack_id patched into it (a model loaded again
        #: has a new patcher, with nothing patched)
        self._patched: weakref.WeakKeyDictionary[LoRAPatcher, str] = weakref.WeakKeyDictionary()
        self._names: dict[str, str] = {}  # main model key -> name
        self._lock = threading.Lock()

    def run(self, job: Job, progress: ProgressCallback | None, cancel: CancelFlag) -> JobResult:
        stack, noticed = self._stack(job)
        loaded = self.cache.model(job.main)
        settings = with_native_size(loaded.pipe, job.settings)
        steps = StepReporter(progress, cancel, is_sdxl(loaded.pipe))
        images = []
        try:
            with (
                self._init_image(job) as init,
                self.cache.patched(job.main, stack, [steps]) as (loaded, report),
            ):
                self._count(job, loaded.patcher)
                compute = placement(loaded.pipe.unet)
                local = replace(settings, init_image=init)  # the head's image, as a file here
                for seeded, rendered in render_seeds(
                    loaded.pipe, local, job.batch_size, steps, loaded.conds
                ):
                    recorded = replace(seeded, init_image=settings.init_image)
                    recipe = build_recipe(job.main, job.loras, recorded, compute)
                    images.append(JobImage(rendered.image, recipe))
        except BaseException:
            self._patched.pop(loaded.patcher, None)  # nothing patched now (`patched` restored)
            raise
        warnings = [*noticed, *report.user_warnings(), *job.warnings]
        return JobResult(images, warnings, self.stats.id)

    def run_together(
        self, jobs: list[Job], progress: list[ProgressCallback | None], cancel: list[CancelFlag]
    ) -> list[JobResult | GenerationCancelled]:
        """Jobs of one stack, size and step settings (`batched.batch_key`) as one UNet batch:
        every image of every job; each job's steps go to its own `progress`, and a cancelled
        job leaves the batch (its result is the `GenerationCancelled`)."""
        first = jobs[0]
        stack, noticed = self._stack(first)
        loaded = self.cache.model(first.main)
        sdxl = is_sdxl(loaded.pipe)
        reporters = [StepReporter(p, c, sdxl) for p, c in zip(progress, cancel, strict=True)]
        items, owners, callbacks = [], [], []
        for j, (job, steps) in enumerate(zip(jobs, reporters, strict=True)):
            steps.images = job.batch_size
            settings = with_native_size(loaded.pipe, job.settings)
            for i in range(job.batch_size):
                items.append(replace(settings, seed=settings.seed + i))
                owners.append(j)
                callbacks.append(_image_steps(steps, i))
        try:
            # start=/stop=: the first image's callback switches
            with self.cache.patched(first.main, stack, reporters) as (loaded, report):
                for job in jobs:
                    self._count(job, loaded.patcher)
                with self._lock:
                    self.stats.batches += len(jobs) > 1
                compute = placement(loaded.pipe.unet)
                rendered = render_together(loaded.pipe, items, callbacks, loaded.conds)
        except BaseException:
            self._patched.pop(loaded.patcher, None)  # nothing patched now (`patched` restored)
            raise
        warnings = [*noticed, *report.user_warnings()]
        out: list[JobResult | GenerationCancelled] = [
            JobResult([], [*warnings, *job.warnings], self.stats.id) for job in jobs
        ]
        for j, seeded, image in zip(owners, items, rendered, strict=True):
            result = out[j]
            if isinstance(image, GenerationCancelled) or isinstance(result, GenerationCancelled):
                out[j] = GenerationCancelled("generation cancelled")
                continue
            recipe = build_recipe(jobs[j].main, jobs[j].loras, seeded, compute)
            result.images.append(JobImage(image.image, recipe))
        return out

    def _stack(self, job: Job) -> tuple[list, list[str]]:
        """The job's files verified, its LoRAs loaded with their weights, and their notes."""
        for record in [job.main, *(entry.record for entry in job.loras)]:
            self._verify(record)
        stack = [(self.cache.lora(entry.record), entry.weight) for entry in job.loras]
        noticed = [f"LoRA '{lora.name}': {note}" for lora, _ in stack for note in lora.warnings]
        return stack, noticed

    def snapshot(self) -> ReplicaStats:
        with self._lock:
            models = [self._names.get(m.key, m.key) for m in self.cache.loaded()]
            return replace(self.stats, models=models, stack=list(self.stats.stack))

    def _count(self, job: Job, patcher: LoRAPatcher) -> None:
        """A switch is a job whose stack is not the one its model had patched (a model freshly
        loaded has none patched; a job without LoRAs on it is no switch)."""
        patched = self._patched.get(patcher, Job(job.main, [], job.settings, 1).stack_id)
        with self._lock:
            self._names[job.main.key] = job.main.name
            self.stats.switches += patched != job.stack_id
            self.stats.jobs += 1
            self.stats.stack = job.stack_label
        self._patched[patcher] = job.stack_id

    def _verify(self, record: ModelRecord) -> None:
        """Hash `record`'s file(s) the first time this replica meets them."""
        key = (str(record.path), record.hash)
        if key in self._verified:
            return
        node = self.stats.node
        try:
            found = content_hash(Path(record.path))
        except (OSError, ValueError) as exc:
            raise FileMismatch(
                f"node {node} cannot read '{record.name}' at {record.path} ({exc}); every node "
                "needs the models root at the same path (docs/cluster.md)"
            ) from None
        if found != record.hash:
            raise FileMismatch(
                f"node {node}: {record.path} is not the '{record.name}' the head recorded "
                f"(hash {found}, expected {record.hash}); copy the same file to this node's "
                "models root or rescan the head's"
            )
        self._verified.add(key)

    @contextmanager
    def _init_image(self, job: Job) -> Iterator[Path | None]:
        """The head's init image as a file on this node, for the length of the job."""
        if job.init_image is None:
            yield None
            return
        with tempfile.NamedTemporaryFile(suffix=".png") as file:
            file.write(job.init_image)
            file.flush()
            yield Path(file.name)

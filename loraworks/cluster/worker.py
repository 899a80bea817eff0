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
from loraworks.generation.cache import ModelCache
from loraworks.generation.conditioning import is_sdxl
from loraworks.generation.events import CancelFlag, ProgressCallback, StepReporter
from loraworks.generation.placement import placement
from loraworks.generation.recipe import build_recipe
from loraworks.generation.render import render_seeds, with_native_size
from loraworks.lora import LoRAPatcher
from loraworks.models import ModelRecord
from loraworks.models.config import Config
from loraworks.models.loading import load_pipeline
from loraworks.models.probe import content_hash


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
    batches: int = 0  # UNet batches of several jobs


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
        for record in [job.main, *(entry.record for entry in job.loras)]:
            self._verify(record)
        stack = [(self.cache.lora(entry.record), entry.weight) for entry in job.loras]
        noticed = [f"LoRA '{lora.name}': {note}" for lora, _ in stack for note in lora.warnings]
        loaded = self.cache.model(job.main)
        settings = with_native_size(loaded.pipe, job.settings)
        steps = StepReporter(progress, cancel, is_sdxl(loaded.pipe))
        images = []
        try:
            with (
                self._init_image(job) as init,
                self.cache.patched(job.main, stack) as (loaded, report),
            ):
                self._count(job, loaded.patcher)
                loaded.conds.sync(report)
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

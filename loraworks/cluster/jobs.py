"""Self-contained jobs: what the head sends a worker, and what comes back.

The head resolves a request against its records once (`resolve_job`: the same checks and
defaults as `generate`, the seed drawn there), so a job carries the main model's and each
LoRA's record (path and hash included), every setting and the seed; a worker needs no database
and a retry on another replica draws the same pixels.

The multiplexed id (`stack_id`) names the main model and the stack — names, hashes and weights
— so two jobs with one id patch identical weights: Ray Serve routes a job to the replica that
last loaded that id (docs/cluster.md).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from PIL import Image

from loraworks.generation.api import check_request
from loraworks.generation.events import StepEvent
from loraworks.generation.presets import StackEntry, resolve
from loraworks.generation.recipe import Recipe
from loraworks.generation.render import RenderSettings
from loraworks.generation.request import GenerateRequest
from loraworks.models import ModelManager, ModelRecord


@dataclass(frozen=True)
class Job:
    main: ModelRecord
    loras: list[StackEntry]  # every weight filled
    settings: RenderSettings  # seed: the first image's
    batch_size: int
    warnings: list[str] = field(default_factory=list)  # the head's (presets), shown first
    init_image: bytes | None = None  # the init image's file, read in the head

    @property
    def stack_id(self) -> str:
        """The multiplexed model id: one per (main model, stack) whose weights differ."""
        key = [
            self.main.hash or self.main.key,
            [(e.record.name, e.record.hash, e.weight) for e in self.loras],
        ]
        digest = hashlib.blake2b(json.dumps(key).encode(), digest_size=12).hexdigest()
        return f"{self.main.name}+{len(self.loras)}:{digest}"

    @property
    def stack_label(self) -> list[str]:
        """The stack as people read it: `name:weight`, in order."""
        return [f"{e.record.name}:{e.weight}" for e in self.loras]


@dataclass
class JobImage:
    image: Image.Image
    recipe: Recipe


@dataclass
class JobResult:
    images: list[JobImage]
    warnings: list[str]
    replica: str


@dataclass
class JobStep:
    """A worker's step event on its way to the head (the latents trimmed to the preview's)."""

    event: StepEvent
    replica: str


def resolve_job(request: GenerateRequest, manager: ModelManager) -> Job:
    """`request` as a job: checked and resolved exactly as `generate` does before any file is
    read, so a refusal happens in the head and the pixels equal the single-process path."""
    checked = check_request(request, manager)
    resolved = resolve(request, checked.prompt, checked.main, checked.stack, manager.config)
    init = resolved.settings.init_image
    return Job(
        main=checked.main,
        loras=resolved.loras,
        settings=resolved.settings,
        batch_size=request.batch_size,
        warnings=resolved.warnings,
        init_image=init.read_bytes() if init is not None else None,
    )

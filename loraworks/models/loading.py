"""Main models → diffusers pipelines, never touching the network."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from loraworks.models.errors import ModelError
from loraworks.models.folder import folder_bytes, load_folder
from loraworks.models.loadevents import LoadProgress
from loraworks.models.originals import FileOriginals
from loraworks.models.records import ModelRecord
from loraworks.models.singlefile import checkpoint_bytes, load_checkpoint


def pipeline_class(base: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if base == "sdxl" else StableDiffusionPipeline


def load_pipeline(
    record: ModelRecord,
    cache: Path,
    dtype: torch.dtype | None = None,
    progress: LoadProgress | None = None,
    originals: FileOriginals | None = None,
    **kwargs: Any,
):
    """`StableDiffusionPipeline` or `StableDiffusionXLPipeline` for `record`, its weights in
    `dtype` (float32 when None); `kwargs` go to the pipeline. Folders load with
    `local_files_only`; single files never touch the hub at all. `progress` hears of each
    model component (UNet, VAE, text encoders) as it starts loading; `originals` is told
    where each weight of a safetensors file came from (the patcher's *file* strategy)."""
    cls = pipeline_class(record.base or "sd1")
    if record.base != "sdxl":
        kwargs.setdefault("safety_checker", None)
        kwargs.setdefault("requires_safety_checker", False)
        kwargs.setdefault("feature_extractor", None)
    with _load_errors(record), _without_loading_bars():
        if record.format == "diffusers":
            return load_folder(cls, record.path, dtype, progress, originals, **kwargs)
        if record.format == "checkpoint":
            base = record.base or "sd1"
            return load_checkpoint(
                cls, record.path, base, cache, dtype, progress, originals, **kwargs
            )
    raise ModelError(f"'{record.name}': no loader for format '{record.format}'")


def model_bytes(record: ModelRecord, dtype: torch.dtype) -> int:
    """What `load_pipeline(record, dtype=dtype)` will hold (its model components' weights),
    read from the files' headers without loading them: the model cache makes room with it
    before it loads. 0 for a format with no loader (the load then says why)."""
    with _load_errors(record):
        if record.format == "diffusers":
            return folder_bytes(record.path, dtype)
        if record.format == "checkpoint":
            return checkpoint_bytes(record.path, record.base or "sd1", dtype)
    return 0


@contextmanager
def _load_errors(record: ModelRecord) -> Iterator[None]:
    """What reading a model's files can raise, as one `ModelError` that names it."""
    try:
        yield
    except ModelError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"'{record.name}': cannot be loaded ({exc})") from None


@contextmanager
def _without_loading_bars() -> Iterator[None]:
    """diffusers and transformers draw a bar per pipeline component and per weights file; the
    CLI and the server report progress their own way, and a server log of model loads should
    not fill with bars. Each library's setting is put back afterwards."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = [
        lib for lib in (diffusers_logging, transformers_logging) if lib.is_progress_bar_enabled()
    ]
    for lib in libraries:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib in libraries:
            lib.enable_progress_bar()

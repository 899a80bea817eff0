"""Main models → diffusers pipelines, never touching the network."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from loraworks.models.errors import ModelError
from loraworks.models.records import ModelRecord


def pipeline_class(base: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if base == "sdxl" else StableDiffusionPipeline


def load_pipeline(record: ModelRecord, cache: Path, **kwargs: Any):
    """`StableDiffusionPipeline` or `StableDiffusionXLPipeline` for `record`; `kwargs` go to
    diffusers (e.g. `dtype`). Folders load with `local_files_only`; single files never
    touch the hub at all."""
    cls = pipeline_class(record.base or "sd1")
    if record.base != "sdxl":
        kwargs.setdefault("safety_checker", None)
        kwargs.setdefault("requires_safety_checker", False)
        kwargs.setdefault("feature_extractor", None)
    try:
        with _without_loading_bars():
            if record.format == "diffusers":
                return cls.from_pretrained(str(record.path), local_files_only=True, **kwargs)
            if record.format == "checkpoint":
                from loraworks.models.singlefile import load_checkpoint

                return load_checkpoint(cls, record.path, record.base or "sd1", cache, **kwargs)
    except ModelError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"'{record.name}': cannot be loaded ({exc})") from None
    raise ModelError(f"'{record.name}': no loader for format '{record.format}'")


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

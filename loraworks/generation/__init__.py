"""Generation: requests, our denoise loop, schedulers, prompt syntax, LCM presets, the model
cache and recipes. `generate(GenerateRequest(...))` is the entry point."""

from loraworks.generation.api import CheckedRequest, GenerateResult, check_request, generate, recall
from loraworks.generation.errors import (
    GenerationCancelled,
    GenerationError,
    LoRANotFound,
    PromptSyntaxError,
    UnusableModel,
)
from loraworks.generation.events import StepEvent, reporting_loads
from loraworks.generation.foreign import RecallError
from loraworks.generation.recalled import RecalledSettings, recall_settings
from loraworks.generation.request import GenerateRequest, LoRASpec
from loraworks.models.loadevents import LoadEvent

__all__ = [
    "CheckedRequest",
    "GenerateRequest",
    "GenerateResult",
    "GenerationCancelled",
    "GenerationError",
    "LoRANotFound",
    "LoRASpec",
    "LoadEvent",
    "PromptSyntaxError",
    "RecallError",
    "RecalledSettings",
    "StepEvent",
    "UnusableModel",
    "check_request",
    "generate",
    "recall",
    "recall_settings",
    "reporting_loads",
]

"""Generation: requests, our denoise loop, schedulers, prompt syntax, LCM presets, the model
cache and recipes. `generate(GenerateRequest(...))` is the entry point."""

from loraworks.generation.api import GenerateResult, generate, recall
from loraworks.generation.errors import GenerationCancelled, GenerationError, PromptSyntaxError
from loraworks.generation.events import StepEvent
from loraworks.generation.request import ComponentWeights, GenerateRequest, LoRASpec

__all__ = [
    "ComponentWeights",
    "GenerateRequest",
    "GenerateResult",
    "GenerationCancelled",
    "GenerationError",
    "LoRASpec",
    "PromptSyntaxError",
    "StepEvent",
    "generate",
    "recall",
]

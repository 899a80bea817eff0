"""Errors a generation request can raise. All subclass `ValueError` (bad input) or are the
cancellation signal, so CLI and server can print one clear line instead of a traceback."""

from __future__ import annotations

from loraworks.lora import LoRABaseMismatch
from loraworks.models.errors import ModelNotFound


class GenerationError(ValueError):
    """A request that cannot run as asked; the message says why and what to change."""


class UnusableModel(GenerationError):
    """A model whose record is not usable (its file is missing or failed to read)."""


class LoRANotFound(ModelNotFound, GenerationError):
    """A LoRA name (in the request or a `<lora:>` tag) that matches no record; lists close
    matches. Both a lookup failure (the server answers 404) and a generation refusal."""


class PromptSyntaxError(GenerationError):
    """A malformed `<lora:...>` tag in a prompt."""


class GenerationCancelled(Exception):
    """Raised between denoise steps when the caller's cancel event is set; weights are
    restored before it propagates."""


class BaseMismatch(LoRABaseMismatch, GenerationError):
    """A LoRA picked for a main model of another base; names both models and both bases."""

    def __init__(self, lora_name: str, lora_base: str, main_name: str, main_base: str):
        self.lora_base, self.model_base, self.name = lora_base, main_base, lora_name
        ValueError.__init__(
            self,
            f"LoRA '{lora_name}' is for {lora_base} but the main model '{main_name}' is "
            f"{main_base}; pick a {main_base} LoRA or a {lora_base} main model",
        )

"""Errors a user can cause. All subclass `LoRAError` (itself a `ValueError`)."""

from __future__ import annotations


class LoRAError(ValueError):
    """Base class of every error the LoRA engine raises on user input."""


class LoRAFormatError(LoRAError):
    """The file or state dict is not a LoRA we can read (unknown keys, bad header, bad tensors)."""


class WeightFileError(LoRAFormatError):
    """A weight file refused before or while its tensors are read (`files.py`, the one reader
    of the engine and the model manager).

    ``unsafe``: refused for safety — a pickle that is not plain weights, a header too large to
    parse — rather than merely broken (the model manager reports it as an unsafe file).
    """

    def __init__(self, message: str, unsafe: bool = False):
        super().__init__(message)
        self.unsafe = unsafe


class LoRABaseMismatch(LoRAError):
    """A LoRA made for one base model (sd1/sd2/sdxl) was applied to another."""

    def __init__(self, lora_base: str, model_base: str, name: str | None = None):
        self.lora_base = lora_base
        self.model_base = model_base
        self.name = name
        who = f"LoRA {name!r}" if name else "this LoRA"
        super().__init__(
            f"{who} is for base {lora_base!r} but the model is {model_base!r}; "
            f"a {lora_base} LoRA cannot be applied to a {model_base} model"
        )


class LoRAShapeError(LoRAError):
    """A LoRA layer's shape does not fit the module it targets (checked before any patching)."""


class LoRAUnmatchedKeys(LoRAError):
    """`strict=True` and some LoRA layers match no module of the model."""


class LoRABusy(LoRAError):
    """The model is already patched by another `apply_loras` / `LoRAPatcher`."""


class LoRARestoreError(LoRAError):
    """Patched weights could not be put back exactly (their originals were to be re-read from a
    model file that changed): the model must be loaded again. Never raised by ``swap``."""

"""Errors a user can cause. All subclass `LoRAError` (itself a `ValueError`)."""

from __future__ import annotations


class LoRAError(ValueError):
    """Base class of every error the LoRA engine raises on user input."""


class LoRAFormatError(LoRAError):
    """The file or state dict is not a LoRA we can read (unknown keys, bad header, bad tensors)."""


class SafetensorsHeaderError(LoRAFormatError):
    """A safetensors header refused before any tensor is read.

    ``too_large``: its claimed length alone was the reason (the model manager reports that as an
    unsafe file rather than a merely broken one).
    """

    def __init__(self, message: str, too_large: bool = False):
        super().__init__(message)
        self.too_large = too_large


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

"""Errors the LoRA tools raise on user input. All are `LoRAError`s (so `ValueError`s), raised
before anything is written."""

from __future__ import annotations

from ..errors import LoRAError


class LoRAToolError(LoRAError):
    """A LoRA tool refused its input."""


class RankError(LoRAToolError):
    """A rank or dynamic rule that cannot be used (0, negative, above a layer's dimensions, a
    target outside its range)."""


class IncompatibleModels(LoRAToolError):
    """LoRAs of different bases merged, or models of different bases or architectures
    compared."""


class UnsupportedKind(LoRAToolError):
    """A layer kind a tool or output format cannot carry (the message says what can)."""


class OutputExists(LoRAToolError):
    """The output path exists and ``force`` was not given."""

"""Errors a generation request can raise. All subclass `ValueError` (bad input) or are the
cancellation signal, so CLI and server can print one clear line instead of a traceback."""

from __future__ import annotations


class GenerationError(ValueError):
    """A request that cannot run as asked; the message says why and what to change."""


class PromptSyntaxError(GenerationError):
    """A malformed `<lora:...>` tag in a prompt."""


class GenerationCancelled(Exception):
    """Raised between denoise steps when the caller's cancel event is set; weights are
    restored before it propagates."""

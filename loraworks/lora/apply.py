"""`apply_loras`: a stack patched for the duration of a ``with`` block (a one-off `LoRAPatcher`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .backups import OriginalWeights, StrategyName
from .patcher import LoRAPatcher, PatchReport, Stack


@contextmanager
def apply_loras(
    pipe: Any,
    stack: Stack,
    strict: bool = False,
    strategy: StrategyName = "auto",
    originals: OriginalWeights | None = None,
) -> Iterator[PatchReport]:
    """Patch ``pipe`` with ``stack`` for the duration of the ``with`` block.

    ``stack``: ``[(lora, weight), ...]`` where weight is a float (every component) or a dict
    naming components (``unet``, ``text_encoder``, ``text_encoder_2``; unnamed ones are not
    patched). Yields a `PatchReport`; restores bit-exactly on exit, also on exception.
    ``strategy`` / ``originals``: where the originals wait while patched (`backups.py`).
    """
    patcher = LoRAPatcher(pipe, strategy=strategy, originals=originals)
    report = patcher.set(stack, strict=strict)
    try:
        yield report
    finally:
        patcher.restore()

"""`bake`: a main model with LoRAs merged in, saved as a diffusers folder.

The weights are exactly what `apply_loras` patches: the patcher itself does the work (every
residual summed in float32 on the original weight, rounded once to the module's dtype) and the
pipeline is saved while patched, then restored bit-exactly. So a baked model in fp32, fp16 or
bf16 generates what the same model with the same stack generates. ``strict``: a LoRA layer that
matches no module is an error, not a silent skip, since the result is permanent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..apply import apply_loras
from ..patcher import Stack
from .atomic import atomic_output, check_output
from .errors import LoRAToolError


def bake(pipe: Any, stack: Stack, out: Path, *, force: bool = False) -> Path:
    """Save ``pipe`` (a diffusers pipeline) patched with ``stack`` at ``out``, atomically."""
    out = Path(out)
    check_output(out, force)
    if not hasattr(pipe, "save_pretrained"):
        raise LoRAToolError(f"bake needs a diffusers pipeline, got {type(pipe).__name__}")
    if not stack:
        raise LoRAToolError("no LoRA to bake")
    with apply_loras(pipe, stack, strict=True), atomic_output(out, force) as tmp:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
    return out

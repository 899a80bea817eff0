"""`bake`: a main model with LoRAs merged in, saved as a diffusers folder or as one
``.safetensors`` file in the original (LDM/sgm) layout (`single_file`).

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
from ..components import components_of, model_base
from ..patcher import Stack
from . import write
from .atomic import atomic_output, check_output
from .errors import LoRAToolError
from .single_file import ldm_state_dict

SINGLE_FILE_SUFFIX = ".safetensors"


def bake(
    pipe: Any, stack: Stack, out: Path, *, force: bool = False, single_file: bool = False
) -> Path:
    """Save ``pipe`` (a diffusers pipeline) patched with ``stack`` at ``out``, atomically: a
    diffusers folder, or with ``single_file`` one ``.safetensors`` file in the published
    layout of its base (SD1, SD2 or SDXL)."""
    out = Path(out)
    check_output(out, force, SINGLE_FILE_SUFFIX if single_file else None)
    if not hasattr(pipe, "save_pretrained"):
        raise LoRAToolError(f"bake needs a diffusers pipeline, got {type(pipe).__name__}")
    if not stack:
        raise LoRAToolError("no LoRA to bake")
    if not single_file:
        with apply_loras(pipe, stack, strict=True), atomic_output(out, force) as tmp:
            pipe.save_pretrained(str(tmp), safe_serialization=True)
        return out
    base = model_base(components_of(pipe))
    if base is None or getattr(pipe, "vae", None) is None:
        raise LoRAToolError("a single file is written for SD1, SD2 and SDXL pipelines only")
    with apply_loras(pipe, stack, strict=True), atomic_output(out, force) as tmp:
        write._save(ldm_state_dict(pipe, base), tmp, {"format": "pt"})
    return out

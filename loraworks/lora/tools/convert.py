"""`convert`: a LoRA rewritten in another format (kohya, diffusers, PEFT), tensors unchanged.

The layers and every scale α/r come through exactly (`write.alpha_for` picks an α that gives
the same scale, also from PEFT's rsLoRA α/√r). Where a format cannot carry a kind (diffusers and
PEFT: plain LoRA only; kohya: LoRA, Tucker LoRA, full, norm) the error points to ``resize``.
"""

from __future__ import annotations

from pathlib import Path

from ..model import LoRA
from .result import tool_note
from .write import Format, save_lora


def convert(lora: LoRA, to: Format, out: Path, *, force: bool = False) -> Path:
    meta = {**lora.metadata, **tool_note("convert", to=to, source=lora.name)}
    copy = LoRA(
        layers=lora.layers,
        base=lora.base,
        format=to,
        metadata=meta,
        name=lora.name,
        compatible_bases=lora.compatible_bases,
    )
    return save_lora(copy, Path(out), to, force)

"""The LoRA engine: read every common LoRA format for SD1/SD2/SDXL and patch it exactly.

```python
from loraworks.lora import load_lora, apply_loras, LoRAPatcher
lora = load_lora("file.safetensors")       # .base, .format, .layers, .metadata
with apply_loras(pipe, [(lora, 0.8)]) as report:
    ...
```
See docs/formats.md for the formats and the maths of every layer kind.
"""

from .errors import (
    LoRABaseMismatch,
    LoRABusy,
    LoRAError,
    LoRAFormatError,
    LoRAShapeError,
    LoRAUnmatchedKeys,
    SafetensorsHeaderError,
)
from .load import header_metadata, load_lora, read_safetensors_header
from .model import LoRA
from .patch import LoRAPatcher, PatchReport, apply_loras, model_base
from .probe import probe_base

__all__ = [
    "LoRA",
    "LoRABaseMismatch",
    "LoRABusy",
    "LoRAError",
    "LoRAFormatError",
    "LoRAPatcher",
    "LoRAShapeError",
    "LoRAUnmatchedKeys",
    "PatchReport",
    "SafetensorsHeaderError",
    "apply_loras",
    "header_metadata",
    "load_lora",
    "model_base",
    "probe_base",
    "read_safetensors_header",
]
